#include "pki/openssl_handles.h"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/sha.h>

#include "absl/strings/str_cat.h"

namespace fedmoe::pki::internal {

absl::Status OpenSslError(absl::StatusCode code, std::string_view what) {
  std::string message(what);
  if (const unsigned long error = ERR_get_error(); error != 0) {
    char text[256];
    ERR_error_string_n(error, text, sizeof(text));
    message += ": ";
    message += text;
  }
  ERR_clear_error();
  return {code, message};
}

absl::Status RequireP256(EVP_PKEY* key) {
  if (EVP_PKEY_get_base_id(key) != EVP_PKEY_EC) {
    return absl::InvalidArgumentError("key is not an EC key (fedmoe uses ECDSA P-256)");
  }
  char group[64] = {};
  size_t group_length = 0;
  if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                     &group_length) != 1 ||
      std::string_view(group, group_length) != "prime256v1") {
    return absl::InvalidArgumentError(absl::StrCat("EC key on curve '",
                                                   std::string(group, group_length),
                                                   "', but fedmoe uses P-256 (prime256v1)"));
  }
  return absl::OkStatus();
}

std::string BioContents(BIO* bio) {
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio, &data);
  return size > 0 ? std::string(data, static_cast<size_t>(size)) : std::string();
}

std::string Hex(const unsigned char* data, size_t size) {
  static constexpr char kHexDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(size * 2);
  for (size_t i = 0; i < size; ++i) {
    out.push_back(kHexDigits[data[i] >> 4]);
    out.push_back(kHexDigits[data[i] & 0xf]);
  }
  return out;
}

std::string Sha256Hex(std::string_view bytes) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), digest);
  return Hex(digest, sizeof(digest));
}

}  // namespace fedmoe::pki::internal
