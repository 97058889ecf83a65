// SecAgg+ masks: the AES-CTR keystream against NIST's known answers, exact unmasking, streaming,
// domain separation, pairwise cancellation against a plain sum, and uniformity.
#include "secure_agg/shared/mask_generator.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>

#include "tests/testing_hex.h"

namespace fedmoe::secure_agg {
namespace {

using ::fedmoe::testing::FromHex;

TEST(Aes128CtrTest, MatchesNistSp800_38aF51) {
  // NIST SP 800-38A, F.5.1 CTR-AES128.Encrypt: keystream = plaintext XOR ciphertext.
  const std::string key = FromHex("2b7e151628aed2a6abf7158809cf4f3c");
  const std::string counter = FromHex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff");
  const std::string plaintext = FromHex(
      "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
      "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710");
  const std::string ciphertext = FromHex(
      "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff"
      "5ae4df3edbd5d35e5b4f09020db03eab1e031dda2fbe03d1792170a0f3009cee");
  auto keystream = Aes128CtrKeystream(key, counter, 64);
  ASSERT_TRUE(keystream.ok());
  std::string encrypted = plaintext;
  for (size_t i = 0; i < encrypted.size(); ++i) encrypted[i] ^= (*keystream)[i];
  EXPECT_EQ(encrypted, ciphertext);
}

MaskDomain Domain(uint64_t length, int bits) {
  MaskDomain domain;
  domain.session_id = std::string(32, 's');
  domain.round_id = 7;
  domain.purpose = MaskPurpose::kPairwiseMask;
  domain.first_participant = 3;
  domain.second_participant = 9;
  domain.length = length;
  domain.bits = bits;
  return domain;
}

const std::string kSeed(32, 'k');

std::vector<uint64_t> RandomVector(size_t n, int bits, uint64_t seed) {
  std::mt19937_64 random(seed);
  std::vector<uint64_t> values(n);
  for (uint64_t& v : values) v = random() & ((uint64_t{1} << bits) - 1);
  return values;
}

TEST(MaskGeneratorTest, UnmaskingRestoresTheVectorExactly) {
  for (int bits : {16, 32, 33, 62}) {
    const std::vector<uint64_t> plain = RandomVector(10007, bits, 1);
    std::vector<uint64_t> values = plain;
    auto mask = MaskGenerator::Create(kSeed, Domain(plain.size(), bits));
    ASSERT_TRUE(mask.ok()) << mask.status();
    ASSERT_TRUE(mask->Add(values).ok());
    EXPECT_NE(values, plain);
    for (uint64_t v : values) ASSERT_LT(v, uint64_t{1} << bits);
    auto unmask = MaskGenerator::Create(kSeed, Domain(plain.size(), bits));
    ASSERT_TRUE(unmask->Subtract(values).ok());
    EXPECT_EQ(values, plain) << "bits=" << bits;
  }
}

TEST(MaskGeneratorTest, StreamingInChunksEqualsOneShot) {
  const size_t n = 50000;
  std::vector<uint64_t> one_shot(n, 0);
  ASSERT_TRUE(MaskGenerator::Create(kSeed, Domain(n, 32))->Add(one_shot).ok());
  std::vector<uint64_t> chunked(n, 0);
  auto mask = MaskGenerator::Create(kSeed, Domain(n, 32));
  size_t done = 0;
  for (size_t chunk : {1UL, 7UL, 8192UL, 8193UL, 12345UL}) {
    ASSERT_TRUE(mask->Add(std::span<uint64_t>(chunked).subspan(done, chunk)).ok());
    done += chunk;
  }
  ASSERT_TRUE(mask->Add(std::span<uint64_t>(chunked).subspan(done)).ok());
  EXPECT_EQ(mask->position(), n);
  EXPECT_EQ(chunked, one_shot);
  std::vector<uint64_t> extra(1);
  EXPECT_EQ(mask->Add(extra).code(), absl::StatusCode::kOutOfRange);
}

TEST(MaskGeneratorTest, EveryPartOfTheDomainSeparatesTheStreams) {
  auto first_values = [](const MaskDomain& domain, const std::string& seed) {
    std::vector<uint64_t> values(8, 0);
    auto mask = MaskGenerator::Create(seed, domain);
    EXPECT_TRUE(mask.ok() && mask->Add(values).ok());
    return values;
  };
  const MaskDomain base = Domain(100, 32);
  const std::vector<uint64_t> reference = first_values(base, kSeed);
  std::vector<MaskDomain> variants(7, base);
  variants[0].session_id = std::string(32, 't');
  variants[1].round_id = 8;
  variants[2].purpose = MaskPurpose::kSelfMask;
  variants[3].first_participant = 4;
  variants[4].second_participant = 10;
  variants[5].length = 101;
  variants[6].bits = 31;
  for (size_t i = 0; i < variants.size(); ++i) {
    EXPECT_NE(first_values(variants[i], kSeed), reference) << "variant " << i;
  }
  EXPECT_NE(first_values(base, std::string(32, 'K')), reference);
  EXPECT_EQ(first_values(base, kSeed), reference);
}

TEST(MaskGeneratorTest, PairwiseMasksCancelInTheSum) {
  // u adds PRG(s_uv), v subtracts it: the sum of the masked vectors is the plain sum.
  const int bits = 20;
  const size_t n = 4096;
  const std::vector<uint64_t> x_u = RandomVector(n, bits, 2);
  const std::vector<uint64_t> x_v = RandomVector(n, bits, 3);
  std::vector<uint64_t> y_u = x_u;
  std::vector<uint64_t> y_v = x_v;
  ASSERT_TRUE(MaskGenerator::Create(kSeed, Domain(n, bits))->Add(y_u).ok());
  ASSERT_TRUE(MaskGenerator::Create(kSeed, Domain(n, bits))->Subtract(y_v).ok());
  const uint64_t modulus_mask = (uint64_t{1} << bits) - 1;
  for (size_t i = 0; i < n; ++i) {
    ASSERT_EQ((y_u[i] + y_v[i]) & modulus_mask, (x_u[i] + x_v[i]) & modulus_mask) << i;
  }
}

TEST(MaskGeneratorTest, AMaskedVectorIsUniformByteByByte) {
  // A constant vector, masked: its bytes must look uniform. χ² with 255 degrees of freedom
  // stays below 330.5 with probability 0.999.
  const size_t n = 1 << 18;
  std::vector<uint64_t> values(n, 12345);
  ASSERT_TRUE(MaskGenerator::Create(kSeed, Domain(n, 32))->Add(values).ok());
  std::vector<double> counts(256, 0.0);
  for (uint64_t v : values) {
    for (int byte = 0; byte < 4; ++byte) counts[(v >> (8 * byte)) & 0xff] += 1;
  }
  const double expected = 4.0 * n / 256;
  double chi_square = 0;
  for (double count : counts) chi_square += (count - expected) * (count - expected) / expected;
  EXPECT_LT(chi_square, 330.5);
}

TEST(MaskGeneratorTest, BadSeedsSessionsAndWidthsAreRefused) {
  EXPECT_FALSE(MaskGenerator::Create("short", Domain(10, 32)).ok());
  MaskDomain domain = Domain(10, 32);
  domain.session_id = "short";
  EXPECT_FALSE(MaskGenerator::Create(kSeed, domain).ok());
  EXPECT_FALSE(MaskGenerator::Create(kSeed, Domain(10, 15)).ok());
  EXPECT_FALSE(MaskGenerator::Create(kSeed, Domain(10, 63)).ok());
  EXPECT_FALSE(Aes128CtrKeystream("short", std::string(16, '\0'), 16).ok());
}

}  // namespace
}  // namespace fedmoe::secure_agg
