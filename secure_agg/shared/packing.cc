#include "secure_agg/shared/packing.h"

#include "absl/strings/str_cat.h"

namespace fedmoe::secure_agg {
namespace {
__extension__ using Uint128 = unsigned __int128;
}  // namespace

size_t PackedBytes(size_t values, int bits) { return (values * static_cast<size_t>(bits) + 7) / 8; }

absl::Status PackValues(std::span<const uint64_t> values, int bits, std::string& out) {
  if (bits < 1 || bits > 62) {
    return absl::InvalidArgumentError(absl::StrCat("cannot pack at ", bits, " bits"));
  }
  const uint64_t limit = uint64_t{1} << bits;
  out.assign(PackedBytes(values.size(), bits), '\0');
  // A 128-bit window: up to 62 bits of a value join at most 7 bits still waiting.
  Uint128 window = 0;
  int held = 0;
  size_t position = 0;
  for (uint64_t value : values) {
    if (value >= limit) {
      return absl::InvalidArgumentError(
          absl::StrCat("value ", value, " is outside Z_(2^", bits, ")"));
    }
    window |= static_cast<Uint128>(value) << held;
    held += bits;
    while (held >= 8) {
      out[position++] = static_cast<char>(static_cast<uint8_t>(window));
      window >>= 8;
      held -= 8;
    }
  }
  if (held > 0) out[position] = static_cast<char>(static_cast<uint8_t>(window));
  return absl::OkStatus();
}

absl::Status UnpackValues(std::string_view packed, int bits, std::span<uint64_t> out) {
  if (bits < 1 || bits > 62) {
    return absl::InvalidArgumentError(absl::StrCat("cannot unpack at ", bits, " bits"));
  }
  if (packed.size() != PackedBytes(out.size(), bits)) {
    return absl::InvalidArgumentError(absl::StrCat(out.size(), " values at ", bits, " bits take ",
                                                   PackedBytes(out.size(), bits), " bytes, not ",
                                                   packed.size()));
  }
  const uint64_t mask = (uint64_t{1} << bits) - 1;
  Uint128 window = 0;
  int held = 0;
  size_t position = 0;
  for (uint64_t& value : out) {
    while (held < bits) {
      window |= static_cast<Uint128>(static_cast<uint8_t>(packed[position++])) << held;
      held += 8;
    }
    value = static_cast<uint64_t>(window) & mask;
    window >>= bits;
    held -= bits;
  }
  if (window != 0) {
    return absl::InvalidArgumentError("packed values set padding bits past the last value");
  }
  return absl::OkStatus();
}

}  // namespace fedmoe::secure_agg
