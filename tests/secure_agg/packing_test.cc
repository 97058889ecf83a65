#include "secure_agg/shared/packing.h"

#include <gtest/gtest.h>

#include <random>

namespace fedmoe::secure_agg {
namespace {

TEST(PackingTest, RoundTripsAtEveryWidthAndTakesExactlyTheBitsItNeeds) {
  std::mt19937_64 random(1);
  for (int bits = 1; bits <= 62; ++bits) {
    for (size_t n : {0UL, 1UL, 7UL, 8UL, 9UL, 1000UL}) {
      std::vector<uint64_t> values(n);
      for (uint64_t& v : values) v = random() & ((uint64_t{1} << bits) - 1);
      std::string packed;
      ASSERT_TRUE(PackValues(values, bits, packed).ok());
      ASSERT_EQ(packed.size(), (n * bits + 7) / 8) << "bits=" << bits << " n=" << n;
      std::vector<uint64_t> back(n);
      ASSERT_TRUE(UnpackValues(packed, bits, back).ok()) << "bits=" << bits << " n=" << n;
      ASSERT_EQ(back, values) << "bits=" << bits << " n=" << n;
    }
  }
}

TEST(PackingTest, KnownLayoutIsLittleEndian) {
  std::string packed;
  ASSERT_TRUE(PackValues(std::vector<uint64_t>{0x3, 0x1}, 4, packed).ok());
  EXPECT_EQ(packed, std::string("\x13", 1));
  ASSERT_TRUE(PackValues(std::vector<uint64_t>{0xabc, 0x123}, 12, packed).ok());
  EXPECT_EQ(packed, std::string("\xbc\x3a\x12", 3));
}

TEST(PackingTest, MalformedInputIsRefused) {
  std::string packed;
  EXPECT_FALSE(PackValues(std::vector<uint64_t>{16}, 4, packed).ok());
  EXPECT_FALSE(PackValues(std::vector<uint64_t>{1}, 63, packed).ok());
  std::vector<uint64_t> out(3);
  // 3 values of 10 bits take 4 bytes: 3 or 5 are refused.
  EXPECT_TRUE(UnpackValues(std::string(4, '\0'), 10, out).ok());
  EXPECT_FALSE(UnpackValues(std::string(3, '\0'), 10, out).ok());
  EXPECT_FALSE(UnpackValues(std::string(5, '\0'), 10, out).ok());
  // 3 values at 10 bits use 30 of 32 bits: the two padding bits must be zero.
  std::vector<uint64_t> two(3);
  EXPECT_FALSE(UnpackValues(std::string("\0\0\0\xc0", 4), 10, two).ok());
  EXPECT_TRUE(UnpackValues(std::string("\0\0\0\x30", 4), 10, two).ok());
}

}  // namespace
}  // namespace fedmoe::secure_agg
