#include "pki/private_key.h"

#include <openssl/ec.h>
#include <openssl/pem.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "storage/atomic_file.h"
#include "storage/read_file.h"

namespace fedmoe::pki {
namespace {

using internal::BioPtr;
using internal::EvpMdCtxPtr;
using internal::EvpPkeyPtr;
using internal::OpenSslError;
using internal::RequireP256;

absl::Status ErrnoError(std::string_view what, const std::filesystem::path& path) {
  return absl::InternalError(
      absl::StrCat(std::string(what), " ", path.string(), ": ", std::strerror(errno)));
}

}  // namespace

absl::StatusOr<PrivateKey> PrivateKey::GenerateP256() {
  EvpPkeyPtr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  if (key == nullptr) return OpenSslError(absl::StatusCode::kInternal, "P-256 key generation");
  return PrivateKey(std::move(key));
}

absl::StatusOr<PrivateKey> PrivateKey::FromPem(const std::string& pem) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (bio == nullptr) return OpenSslError(absl::StatusCode::kInternal, "BIO_new_mem_buf");
  EvpPkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (key == nullptr) {
    return OpenSslError(absl::StatusCode::kInvalidArgument, "not a PEM private key");
  }
  if (absl::Status status = RequireP256(key.get()); !status.ok()) return status;
  return PrivateKey(std::move(key));
}

absl::StatusOr<PrivateKey> PrivateKey::ReadFile(const std::filesystem::path& path) {
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0) return ErrnoError("cannot stat key file", path);
  if ((info.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("key file ", path.string(), " is accessible to group or others (mode ",
                     absl::Hex(info.st_mode & 0777), "); it must be 0600"));
  }
  absl::StatusOr<std::string> contents = storage::ReadSmallFile(path, internal::kMaxPemFileBytes);
  if (!contents.ok()) return contents.status();
  absl::StatusOr<PrivateKey> key = FromPem(*contents);
  if (!key.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("key file ", path.string(), ": ", key.status().message()));
  }
  return key;
}

absl::StatusOr<std::string> PrivateKey::ToPem() const {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || PEM_write_bio_PKCS8PrivateKey(bio.get(), key_.get(), nullptr, nullptr, 0,
                                                      nullptr, nullptr) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "PEM encoding of private key");
  }
  return internal::BioContents(bio.get());
}

absl::Status PrivateKey::WriteFile(const std::filesystem::path& path) const {
  absl::StatusOr<std::string> pem = ToPem();
  if (!pem.ok()) return pem.status();
  return storage::WriteFileAtomically(
      path, *pem, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
}

absl::StatusOr<std::string> PrivateKey::PublicKeyDer() const {
  unsigned char* der = nullptr;
  const int length = i2d_PUBKEY(key_.get(), &der);
  if (length <= 0) return OpenSslError(absl::StatusCode::kInternal, "public key encoding");
  std::string out(reinterpret_cast<const char*>(der), static_cast<size_t>(length));
  OPENSSL_free(der);
  return out;
}

absl::StatusOr<std::string> PrivateKey::Sign(const std::string& message) const {
  EvpMdCtxPtr context(EVP_MD_CTX_new());
  size_t length = 0;
  if (context == nullptr ||
      EVP_DigestSignInit_ex(context.get(), nullptr, "SHA256", nullptr, nullptr, key_.get(),
                            nullptr) != 1 ||
      EVP_DigestSign(context.get(), nullptr, &length,
                     reinterpret_cast<const unsigned char*>(message.data()), message.size()) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "ECDSA sign");
  }
  std::string signature(length, '\0');
  if (EVP_DigestSign(context.get(), reinterpret_cast<unsigned char*>(signature.data()), &length,
                     reinterpret_cast<const unsigned char*>(message.data()), message.size()) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "ECDSA sign");
  }
  signature.resize(length);
  return signature;
}

absl::Status VerifySignature(const std::string& public_key_der, const std::string& message,
                             const std::string& signature_der) {
  const auto* cursor = reinterpret_cast<const unsigned char*>(public_key_der.data());
  EvpPkeyPtr key(d2i_PUBKEY(nullptr, &cursor, static_cast<long>(public_key_der.size())));
  if (key == nullptr) {
    return OpenSslError(absl::StatusCode::kInvalidArgument, "malformed public key");
  }
  if (absl::Status status = RequireP256(key.get()); !status.ok()) return status;
  EvpMdCtxPtr context(EVP_MD_CTX_new());
  if (context == nullptr || EVP_DigestVerifyInit_ex(context.get(), nullptr, "SHA256", nullptr,
                                                    nullptr, key.get(), nullptr) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "ECDSA verify setup");
  }
  const int verified = EVP_DigestVerify(
      context.get(), reinterpret_cast<const unsigned char*>(signature_der.data()),
      signature_der.size(), reinterpret_cast<const unsigned char*>(message.data()), message.size());
  if (verified != 1) {
    return OpenSslError(absl::StatusCode::kUnauthenticated, "signature does not verify");
  }
  return absl::OkStatus();
}

}  // namespace fedmoe::pki
