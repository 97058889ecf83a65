// Shamir secret sharing of 32-byte secrets (self-mask seeds and mask keys) over GF(2^61 − 1),
// as SecAggParameters.SHAMIR_FIELD_MERSENNE61 specifies: the secret is split big-endian into
// five limbs (four of 7 bytes, one of 4), each shared with its own random polynomial of degree
// threshold − 1, evaluated at the participants' ids. A share is five field elements, 8 bytes
// each, big-endian: 40 bytes. Any `threshold` shares recover the secret; fewer reveal nothing.
//
// The Mersenne prime makes reduction two shifts and an add, and recovering many secrets from
// the same set of revealers reuses one set of Lagrange coefficients (LagrangeAtZero), which is
// what keeps the coordinator's unmasking fast.
#ifndef FEDMOE_SECURE_AGG_SHARED_SHAMIR_H_
#define FEDMOE_SECURE_AGG_SHARED_SHAMIR_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace fedmoe::secure_agg {

// Elements of GF(p), p = 2^61 − 1, kept reduced in [0, p).
class Field61 {
 public:
  static constexpr uint64_t kModulus = (uint64_t{1} << 61) - 1;
  static uint64_t Add(uint64_t a, uint64_t b);
  static uint64_t Subtract(uint64_t a, uint64_t b);
  static uint64_t Multiply(uint64_t a, uint64_t b);
  // a^-1 for a ≠ 0.
  static uint64_t Inverse(uint64_t a);
};

inline constexpr size_t kShamirSecretBytes = 32;
inline constexpr size_t kShamirShareBytes = 40;

struct Share {
  // The evaluation point: the holder's participant id, 1 ≤ x < 2^61 − 1.
  uint64_t x = 0;
  // kShamirShareBytes bytes.
  std::string value;
};

// Shares `secret` (32 bytes) among `holders` (distinct, non-zero ids) so that any `threshold`
// of them recover it. Coefficients come from OpenSSL's CSPRNG.
absl::StatusOr<std::vector<Share>> ShareSecret(std::string_view secret, int threshold,
                                               std::span<const uint64_t> holders);

// The Lagrange coefficients λ_i with f(0) = Σ λ_i f(x_i), for distinct non-zero x_i.
absl::StatusOr<std::vector<uint64_t>> LagrangeAtZero(std::span<const uint64_t> xs);

// Recovers a secret from exactly the shares whose points gave `coefficients` (same order).
absl::StatusOr<std::string> RecoverSecret(std::span<const Share> shares,
                                          std::span<const uint64_t> coefficients);

// Recovers a secret from `threshold` or more shares (the first `threshold` are used).
absl::StatusOr<std::string> RecoverSecret(std::span<const Share> shares, int threshold);

}  // namespace fedmoe::secure_agg

#endif  // FEDMOE_SECURE_AGG_SHARED_SHAMIR_H_
