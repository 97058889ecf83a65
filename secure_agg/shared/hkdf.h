// Internal to secure_agg: the key derivation every derived secret of a round goes through, and
// the fixed-width big-endian encoding its labels and messages use.
#ifndef FEDMOE_SECURE_AGG_SHARED_HKDF_H_
#define FEDMOE_SECURE_AGG_SHARED_HKDF_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace fedmoe::secure_agg {

// HKDF-SHA256 (RFC 5869) through OpenSSL's EVP_KDF: `length` bytes from `ikm`, `salt`, `info`.
absl::StatusOr<std::string> HkdfSha256(std::string_view ikm, std::string_view salt,
                                       std::string_view info, size_t length);

// Appends the low `bytes` bytes of `value`, most significant first.
void AppendBigEndian(uint64_t value, int bytes, std::string& out);

}  // namespace fedmoe::secure_agg

#endif  // FEDMOE_SECURE_AGG_SHARED_HKDF_H_
