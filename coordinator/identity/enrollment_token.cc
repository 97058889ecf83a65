#include "coordinator/identity/enrollment_token.h"

#include <openssl/rand.h>
#include <openssl/sha.h>

#include "absl/strings/ascii.h"

namespace fedmoe::coordinator {
namespace {

constexpr size_t kIdBytes = 8;
constexpr size_t kSecretBytes = 32;

absl::StatusOr<std::string> RandomHex(size_t bytes) {
  std::string raw(bytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(raw.data()), static_cast<int>(bytes)) != 1) {
    return absl::InternalError("OpenSSL's random generator failed");
  }
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string hex;
  for (unsigned char c : raw) {
    hex.push_back(kDigits[c >> 4]);
    hex.push_back(kDigits[c & 0xf]);
  }
  return hex;
}

bool IsLowerHex(std::string_view text, size_t length) {
  if (text.size() != length) return false;
  for (char c : text) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c)) && (c < 'a' || c > 'f')) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<EnrollmentToken> GenerateEnrollmentToken() {
  absl::StatusOr<std::string> id = RandomHex(kIdBytes);
  if (!id.ok()) return id.status();
  absl::StatusOr<std::string> secret = RandomHex(kSecretBytes);
  if (!secret.ok()) return secret.status();
  return EnrollmentToken{*id, *secret};
}

absl::StatusOr<EnrollmentToken> ParseEnrollmentToken(std::string_view text) {
  const size_t dot = text.find('.');
  if (dot == std::string_view::npos || !IsLowerHex(text.substr(0, dot), 2 * kIdBytes) ||
      !IsLowerHex(text.substr(dot + 1), 2 * kSecretBytes)) {
    return absl::InvalidArgumentError(
        "malformed enrollment token: expected <16 hex digits>.<64 hex digits> as printed by "
        "`fedmoe-coordinator token create`");
  }
  return EnrollmentToken{std::string(text.substr(0, dot)), std::string(text.substr(dot + 1))};
}

std::string HashTokenSecret(std::string_view secret) {
  std::string digest(SHA256_DIGEST_LENGTH, '\0');
  SHA256(reinterpret_cast<const unsigned char*>(secret.data()), secret.size(),
         reinterpret_cast<unsigned char*>(digest.data()));
  return digest;
}

}  // namespace fedmoe::coordinator
