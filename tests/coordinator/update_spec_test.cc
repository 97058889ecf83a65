// The scale a coordinator plans against what the clients' encoders take.
#include "coordinator/round/update_spec.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

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

}  // namespace
}  // namespace fedmoe::coordinator
