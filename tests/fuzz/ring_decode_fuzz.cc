// The coordinator's side of a masked upload: packed ring values (chunk.packed_values) are
// unpacked at b bits, added in the ring and decoded (centred, divided by γ, rotated back), with
// the encoding's parameters and the values both arbitrary. Decoding never fails on a sum of the
// right length and gives finite values. And the encoding round-trips: a client's encoding of an
// update, decoded alone, is the clipped update within the rounding the encoder documents
// (at most two scaled units per rotated coordinate: randomized rounding and the fixed-point
// truncation), whenever γ·C leaves the ring room.
//
// Layout: the header of input_layout.h, then the packed values; the same tail read as floats
// is the update that is round-tripped.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "privacy/ring_encoder.h"
#include "privacy/secure_random.h"
#include "secure_agg/shared/packing.h"
#include "tests/fuzz/fuzz_support.h"
#include "tests/fuzz/input_layout.h"

namespace {

using fedmoe::privacy::RingEncoder;
using fedmoe::privacy::RingEncoding;

double L2Distance(std::span<const double> a, std::span<const float> b) {
  double sum = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double difference = a[i] - static_cast<double>(b[i]);
    sum += difference * difference;
  }
  return std::sqrt(sum);
}

void CheckRoundTrip(const RingEncoder& encoder, std::span<const uint8_t> tail) {
  const RingEncoding& encoding = encoder.encoding();
  const auto padded = static_cast<double>(encoder.encoded_dimension());
  // Every rotated coordinate of γ·x is at most γ·C, and rounding moves it by under 2.
  if (!(encoding.scale * encoding.clip_norm + 2 < std::ldexp(1.0, encoding.ring_bits - 1))) return;
  std::vector<float> update(encoder.dimension(), 0.0f);
  for (size_t i = 0; i < update.size() && 4 * (i + 1) <= tail.size(); ++i) {
    float value = 0;
    std::memcpy(&value, tail.data() + 4 * i, sizeof(value));
    // Within float range after clipping's squares: a client refuses non-finite updates first.
    update[i] = std::isfinite(value) ? std::clamp(value, -1e15f, 1e15f) : 0.0f;
  }
  absl::StatusOr<fedmoe::privacy::SecureRandom> random =
      fedmoe::privacy::SecureRandom::FromSeed(std::string(32, 'r'), "fuzz");
  if (!random.ok()) fedmoe::fuzz::Violated(random.status().ToString());
  absl::StatusOr<std::vector<uint64_t>> encoded = encoder.Encode(update, *random);
  if (!encoded.ok()) return;  // Refused (for example a norm the ring cannot carry).
  absl::StatusOr<std::vector<double>> decoded = encoder.DecodeSum(*encoded);
  FEDMOE_FUZZ_CHECK(decoded.ok(),
                    absl::StrCat("an encoding does not decode: ", decoded.status().ToString()));
  std::vector<float> clipped = update;
  fedmoe::privacy::ClipToL2Norm(clipped, encoding.clip_norm);
  const double error = L2Distance(*decoded, clipped);
  const double bound = 2 * std::sqrt(padded) / encoding.scale + 1e-6 * encoding.clip_norm;
  FEDMOE_FUZZ_CHECK(error <= bound,
                    absl::StrCat("decode(encode(x)) is ", error,
                                 " from the clipped x; the rounding allows ", bound));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < fedmoe::fuzz::kRingHeaderBytes) return 0;
  auto [dimension, encoding] =
      fedmoe::fuzz::ReadRingHeader(std::span<const uint8_t, fedmoe::fuzz::kRingHeaderBytes>(
          data, fedmoe::fuzz::kRingHeaderBytes));
  absl::StatusOr<RingEncoder> encoder = RingEncoder::Create(dimension, encoding);
  if (!encoder.ok()) return 0;
  const std::span<const uint8_t> tail(data + fedmoe::fuzz::kRingHeaderBytes,
                                      size - fedmoe::fuzz::kRingHeaderBytes);
  const std::string_view packed(reinterpret_cast<const char*>(tail.data()), tail.size());

  const size_t values = encoder->encoded_dimension();
  const size_t packed_bytes = fedmoe::secure_agg::PackedBytes(values, encoding.ring_bits);
  std::vector<uint64_t> masked(values);
  // The whole tail as one upload: accepted only at exactly the packed length.
  const absl::Status whole = fedmoe::secure_agg::UnpackValues(packed, encoding.ring_bits, masked);
  if (packed.size() != packed_bytes) {
    FEDMOE_FUZZ_CHECK(!whole.ok(), "an upload of the wrong packed length was unpacked");
  }
  // A longer tail still gives an upload of the right length, from its start.
  const bool unpacked =
      whole.ok() ||
      (packed.size() > packed_bytes &&
       fedmoe::secure_agg::UnpackValues(packed.substr(0, packed_bytes), encoding.ring_bits, masked)
           .ok());
  if (unpacked) {
    std::vector<uint64_t> sum(values, 0);
    const absl::Status added = RingEncoder::AddInRing(sum, masked, encoding.ring_bits);
    FEDMOE_FUZZ_CHECK(added.ok(), added.ToString());
    absl::StatusOr<std::vector<double>> decoded = encoder->DecodeSum(sum);
    FEDMOE_FUZZ_CHECK(decoded.ok() && decoded->size() == dimension,
                      "a ring sum of the right length does not decode to the dimension");
    for (const double value : *decoded) {
      FEDMOE_FUZZ_CHECK(std::isfinite(value), "a decoded value is not finite");
    }
  }
  CheckRoundTrip(*encoder, tail);
  return 0;
}
