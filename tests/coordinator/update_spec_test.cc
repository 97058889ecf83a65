// The scale a coordinator plans against what the clients' encoders take.
#include "coordinator/round/update_spec.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "privacy/hadamard.h"
#include "privacy/ring_encoder.h"
#include "privacy/secure_random.h"

namespace fedmoe::coordinator {
namespace {

TEST(ChooseScaleTest, AWideRingWithoutNoiseStaysWithinTheEncodersFixedPoint) {
  // 62 bits, no noise, three clients: the ring alone would allow γ·C of about 2^66, above the
  // 2^42 that a rotation of 2^20 values holds in 64-bit fixed point.
  const int64_t values = int64_t{1} << 20;
  const double scale = ChooseScale(62, 3, values, 2.0, 0.0);
  EXPECT_LE(scale * 2.0, privacy::RingEncoder::LargestScaledNorm(values));
  EXPECT_GT(scale * 2.0, privacy::RingEncoder::LargestScaledNorm(values) / 2);

  privacy::RingEncoding encoding;
  encoding.clip_norm = 2.0;
  encoding.scale = scale;
  encoding.ring_bits = 62;
  auto encoder = privacy::RingEncoder::Create(values, encoding);
  ASSERT_TRUE(encoder.ok()) << encoder.status();
  privacy::SecureRandom random = *privacy::SecureRandom::FromSeed(std::string(32, 'w'), "test");
  std::vector<float> update(values, 0.01F);
  EXPECT_TRUE(encoder->Encode(update, random).ok());

  // A 32-bit ring with noise is far below that bound, and untouched by it.
  const double planned = ChooseScale(32, 3, values, 1.0, 1.0);
  EXPECT_NEAR(planned, (std::ldexp(1.0, 31) / 9.0 - std::sqrt(3.0)) / std::sqrt(9.0 / values + 1.0),
              1e-6 * planned);
}

// Three clients whose updates put all their energy, aligned, in one rotation block of a
// block-diagonal rotation, in the narrowest ring: at the planned scale the sum decodes exactly
// (to rounding); at the scale a whole-vector rotation would allow, it wraps around.
TEST(ChooseScaleTest, ABlockRotationPlansForAllTheEnergyInOneBlock) {
  const size_t d = 1'200'000;
  const size_t encoded = privacy::EncodedLength(d);
  const size_t block = privacy::RotationBlockOf(encoded);
  ASSERT_LT(block, encoded);
  const int clients = 3;
  const double planned = ChooseScale(16, clients, static_cast<int64_t>(encoded), 1.0, 0.0);
  const double whole_vector =
      (std::ldexp(1.0, 15) / 9.0 - std::sqrt(3.0)) / std::sqrt(9.0 / static_cast<double>(encoded));
  EXPECT_LT(planned, whole_vector / 4);

  std::vector<float> update(d, 0.0F);
  privacy::SecureRandom random = *privacy::SecureRandom::FromSeed(std::string(32, 'q'), "test");
  for (size_t i = 5 * block; i < 6 * block; ++i) {
    update[i] = static_cast<float>(random.UniformDouble() - 0.5);
  }
  privacy::ClipToL2Norm(update, 1.0);
  auto largest_error = [&](double scale) {
    privacy::RingEncoding encoding;
    encoding.clip_norm = 1.0;
    encoding.scale = scale;
    encoding.ring_bits = 16;
    encoding.rotation_seed = std::string(32, 'z');
    encoding.rotation_block = block;
    auto encoder = privacy::RingEncoder::Create(d, encoding);
    EXPECT_TRUE(encoder.ok()) << encoder.status();
    EXPECT_EQ(encoder->encoded_dimension(), encoded);
    std::vector<uint64_t> sum(encoded, 0);
    for (int c = 0; c < clients; ++c) {
      auto encoded_update = encoder->Encode(update, random);
      EXPECT_TRUE(encoded_update.ok()) << encoded_update.status();
      EXPECT_TRUE(privacy::RingEncoder::AddInRing(sum, *encoded_update, 16).ok());
    }
    auto decoded = encoder->DecodeSum(sum);
    EXPECT_TRUE(decoded.ok()) << decoded.status();
    double largest = 0;
    for (size_t i = 0; i < d; ++i) {
      largest = std::max(largest, std::abs((*decoded)[i] - clients * update[i]));
    }
    return largest;
  };
  // Rounding moves each rotated coordinate by under one unit, at most √3 units over the sum
  // per coordinate of the unrotated block.
  EXPECT_LT(largest_error(planned), 4 * std::sqrt(3.0) / planned);
  EXPECT_GT(largest_error(whole_vector), 1e-3);
}

}  // namespace
}  // namespace fedmoe::coordinator
