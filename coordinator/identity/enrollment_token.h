// One-time enrollment tokens: "<token id>.<secret>", both lower-case hex. The id is a
// non-secret handle (for listing and revoking); the secret is 256 bits from OpenSSL's CSPRNG
// and is stored only as its SHA-256.
#ifndef FEDMOE_COORDINATOR_IDENTITY_ENROLLMENT_TOKEN_H_
#define FEDMOE_COORDINATOR_IDENTITY_ENROLLMENT_TOKEN_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace fedmoe::coordinator {

struct EnrollmentToken {
  std::string token_id;
  std::string secret;

  // What the operator hands to the organisation.
  std::string ToString() const { return token_id + "." + secret; }
};

absl::StatusOr<EnrollmentToken> GenerateEnrollmentToken();

// InvalidArgument, without echoing the input (it may be a mistyped secret), when `text` is not
// a well-formed token.
absl::StatusOr<EnrollmentToken> ParseEnrollmentToken(std::string_view text);

// SHA-256 of the secret, raw 32 bytes: what the store keeps.
std::string HashTokenSecret(std::string_view secret);

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_IDENTITY_ENROLLMENT_TOKEN_H_
