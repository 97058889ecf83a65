// Ring elements on the wire (MaskedInputChunk.packed_values): n values of Z_(2^bits) packed
// little-endian at exactly `bits` bits each, ceil(n·bits/8) bytes, never as int64.
#ifndef FEDMOE_SECURE_AGG_SHARED_PACKING_H_
#define FEDMOE_SECURE_AGG_SHARED_PACKING_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace fedmoe::secure_agg {

size_t PackedBytes(size_t values, int bits);

// InvalidArgument for a value outside Z_(2^bits) or bits outside 1..62.
absl::Status PackValues(std::span<const uint64_t> values, int bits, std::string& out);

// Fills `out` (its size says how many values); InvalidArgument when `packed` has the wrong
// length for them or sets any padding bit past the last value.
absl::Status UnpackValues(std::string_view packed, int bits, std::span<uint64_t> out);

}  // namespace fedmoe::secure_agg

#endif  // FEDMOE_SECURE_AGG_SHARED_PACKING_H_
