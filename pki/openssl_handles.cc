#include "pki/openssl_handles.h"

#include <openssl/err.h>

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

std::string BioContents(BIO* bio) {
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio, &data);
  return size > 0 ? std::string(data, static_cast<size_t>(size)) : std::string();
}

}  // namespace fedmoe::pki::internal
