// The privacy mechanisms against exact distributions and stated statistical bounds.
//
// Sampler checks draw 10^6 values and compare with the exact probability mass function summed
// here (the discrete Gaussian's by definition, the Skellam's through the modified Bessel
// function), with tolerances of five standard errors, so a correct sampler fails with
// probability below 10^-6 per check.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include <cmath>
#include <map>
#include <numeric>

#include "privacy/hadamard.h"
#include "privacy/noise.h"
#include "privacy/ring_encoder.h"
#include "privacy/secure_random.h"

namespace fedmoe::privacy {
namespace {

constexpr int kDraws = 1'000'000;

SecureRandom TestRandom(char tag) {
  return *SecureRandom::FromSeed(std::string(32, tag), "fedmoe/test");
}

// Exact moments and tail of a symmetric pmf on the integers, given unnormalised log weights.
struct Exact {
  double variance = 0;
  double tail = 0;  // P(|X| ≥ tail_from)
  std::map<int64_t, double> pmf;
};

template <typename LogWeight>
Exact ExactDistribution(LogWeight log_weight, int64_t support, int64_t tail_from) {
  Exact exact;
  double total = 0;
  for (int64_t x = -support; x <= support; ++x) total += std::exp(log_weight(x));
  for (int64_t x = -support; x <= support; ++x) {
    const double p = std::exp(log_weight(x)) / total;
    exact.pmf[x] = p;
    exact.variance += p * static_cast<double>(x) * static_cast<double>(x);
    if (std::abs(x) >= tail_from) exact.tail += p;
  }
  return exact;
}

template <typename Sampler>
void CheckSampler(Sampler sample, const Exact& exact, int64_t tail_from, const char* name) {
  double sum = 0;
  double sum_squares = 0;
  int64_t tail_count = 0;
  std::map<int64_t, int64_t> counts;
  for (int i = 0; i < kDraws; ++i) {
    const int64_t x = sample();
    sum += static_cast<double>(x);
    sum_squares += static_cast<double>(x) * static_cast<double>(x);
    if (std::abs(x) >= tail_from) ++tail_count;
    if (std::abs(x) <= 3) ++counts[x];
  }
  const double n = kDraws;
  const double mean = sum / n;
  const double variance = sum_squares / n - mean * mean;
  const double sd = std::sqrt(exact.variance);
  EXPECT_NEAR(mean, 0.0, 5 * sd / std::sqrt(n)) << name;
  // The sample variance's standard error is about √(2/n)·σ² for these near-normal laws.
  EXPECT_NEAR(variance, exact.variance, 5 * std::sqrt(2.0 / n) * exact.variance) << name;
  const double tail_se = std::sqrt(exact.tail * (1 - exact.tail) / n);
  EXPECT_NEAR(tail_count / n, exact.tail, 5 * tail_se + 1e-6) << name << " tail";
  for (const auto& [x, count] : counts) {
    const double p = exact.pmf.at(x);
    EXPECT_NEAR(count / n, p, 5 * std::sqrt(p * (1 - p) / n) + 1e-6) << name << " P(" << x << ")";
  }
}

// Every value's frequency against its probability, where the probability is at least 10^-4,
// so that a table sampler's cells, offsets and acceptance are each seen many times.
void CheckEveryLikelyValue(const std::vector<int64_t>& draws, const Exact& exact,
                           const std::string& name) {
  std::map<int64_t, int64_t> counts;
  for (int64_t x : draws) ++counts[x];
  const auto n = static_cast<double>(draws.size());
  int checked = 0;
  for (const auto& [x, p] : exact.pmf) {
    if (p < 1e-4) continue;
    ++checked;
    const double observed = static_cast<double>(counts[x]) / n;
    EXPECT_NEAR(observed, p, 5 * std::sqrt(p * (1 - p) / n)) << name << " P(" << x << ")";
  }
  EXPECT_GT(checked, 0) << name;
}

Exact DiscreteGaussianLaw(double sigma_squared, int64_t tail_from) {
  const double sigma = std::sqrt(sigma_squared);
  return ExactDistribution(
      [&](int64_t x) {
        return -static_cast<double>(x) * static_cast<double>(x) / (2 * sigma_squared);
      },
      static_cast<int64_t>(40 * sigma) + 10, tail_from);
}

TEST(NoiseTest, BernoulliExpMinusHasProbabilityExpMinusGamma) {
  SecureRandom random = TestRandom('b');
  for (double gamma : {0.0, 0.3, 1.0, 2.7}) {
    int64_t ones = 0;
    const int draws = 200000;
    for (int i = 0; i < draws; ++i) ones += SampleBernoulliExpMinus(gamma, random) ? 1 : 0;
    const double p = std::exp(-gamma);
    EXPECT_NEAR(ones / static_cast<double>(draws), p, 5 * std::sqrt(p * (1 - p) / draws) + 1e-9)
        << "gamma=" << gamma;
  }
}

TEST(NoiseTest, DiscreteGaussianMatchesItsExactDistribution) {
  for (double sigma_squared : {0.6, 4.0, 250.0}) {
    SecureRandom random = TestRandom('g');
    const double sigma = std::sqrt(sigma_squared);
    const auto tail_from = static_cast<int64_t>(std::ceil(3 * sigma));
    const Exact exact = DiscreteGaussianLaw(sigma_squared, tail_from);
    const DiscreteGaussianSampler sampler(sigma_squared);
    CheckSampler([&] { return sampler.Sample(random); }, exact, tail_from, "discrete gaussian");
  }
}

TEST(NoiseTest, TabulatedDiscreteGaussianMatchesItsExactDistribution) {
  // cells_per_sigma 1 makes cells as wide as σ, so that the in-cell acceptance (and the way
  // negative cells count their offsets) shapes the law visibly; at 64, cells are single values
  // for these σ, and the alias table alone is checked.
  struct Case {
    double sigma_squared;
    double cells_per_sigma;
    int64_t width;
  };
  for (const Case& c : {Case{0.6, 64, 1}, Case{4.0, 64, 1}, Case{250.0, 64, 1}, Case{250.0, 1, 8},
                        Case{4000.0, 1, 32}, Case{4000.0, 4, 8}}) {
    const TabulatedNoise sampler =
        TabulatedNoise::DiscreteGaussian(c.sigma_squared, c.cells_per_sigma);
    EXPECT_EQ(sampler.cell_width(), c.width) << c.sigma_squared;
    const auto tail_from = static_cast<int64_t>(std::ceil(3 * std::sqrt(c.sigma_squared)));
    const Exact exact = DiscreteGaussianLaw(c.sigma_squared, tail_from);
    const std::string name = "tabulated σ²=" + std::to_string(c.sigma_squared) +
                             " cells/σ=" + std::to_string(c.cells_per_sigma);
    // In bulk, the way the encoder draws...
    SecureRandom random = TestRandom('t');
    std::vector<int64_t> draws(kDraws);
    sampler.Fill(draws, random);
    size_t next = 0;
    CheckSampler([&] { return draws[next++]; }, exact, tail_from, name.c_str());
    CheckEveryLikelyValue(draws, exact, name + " (bulk)");
    // ...and one at a time, which takes the slow path from the first word.
    for (int64_t& x : draws) x = sampler.Sample(random);
    CheckEveryLikelyValue(draws, exact, name + " (single)");
  }
}

TEST(NoiseTest, TabulatedDiscreteGaussianDecidedInFullIsTheSameLaw) {
  // Every coin on its 112 bits and every acceptance against e^-γ in quad: the path that the
  // shortcuts leave only a few draws in 2^12 (coins) or 2^44 (acceptances) to, here taken by
  // all, with cells as wide as σ so that acceptances shape the law.
  for (const auto& [sigma_squared, cells_per_sigma] : {std::pair{250.0, 1.0}, {4000.0, 4.0}}) {
    const TabulatedNoise sampler = TabulatedNoise::DiscreteGaussian(
        sigma_squared, cells_per_sigma, TabulatedNoise::Decisions::kExact);
    const auto tail_from = static_cast<int64_t>(std::ceil(3 * std::sqrt(sigma_squared)));
    const Exact exact = DiscreteGaussianLaw(sigma_squared, tail_from);
    const std::string name = "decided in full, σ²=" + std::to_string(sigma_squared);
    SecureRandom random = TestRandom('x');
    std::vector<int64_t> draws(kDraws);
    sampler.Fill(draws, random);
    size_t next = 0;
    CheckSampler([&] { return draws[next++]; }, exact, tail_from, name.c_str());
    CheckEveryLikelyValue(draws, exact, name);
  }
}

// Draws whose law is the normal N(0, σ²) to well within these checks: mean, variance, and
// the mass in bins of σ/4 over [-3σ, 3σ), each within five standard errors.
void ExpectNormalMomentsAndShape(const std::vector<int64_t>& draws, double sigma,
                                 const std::string& name) {
  constexpr int kBins = 24;
  std::vector<int64_t> counts(kBins);
  double sum = 0;
  double squares = 0;
  for (int64_t x : draws) {
    const double scaled = static_cast<double>(x) / sigma;
    sum += scaled;
    squares += scaled * scaled;
    const auto bin = static_cast<int>(std::floor((scaled + 3.0) * 4.0));
    if (bin >= 0 && bin < kBins) ++counts[static_cast<size_t>(bin)];
  }
  const auto n = static_cast<double>(draws.size());
  EXPECT_NEAR(sum / n, 0.0, 5 / std::sqrt(n)) << name;
  EXPECT_NEAR(squares / n, 1.0, 5 * std::sqrt(2.0 / n)) << name;
  for (int b = 0; b < kBins; ++b) {
    const double low = -3.0 + b / 4.0;
    const double p =
        0.5 * (std::erfc(-(low + 0.25) / std::sqrt(2.0)) - std::erfc(-low / std::sqrt(2.0)));
    EXPECT_NEAR(static_cast<double>(counts[static_cast<size_t>(b)]) / n, p,
                5 * std::sqrt(p * (1 - p) / n))
        << name << ", bin from " << low << "σ";
  }
}

TEST(NoiseTest, TabulatedDiscreteGaussianAtTheScaleOfRealNoise) {
  // σ ≈ 1.4·10^8, the local noise of a 32-bit ring with three clients: cells of 2^21 values and
  // the one-word fast path. σ = 2^40 (a 62-bit ring): cells of 2^34 values, too wide to share
  // the first word, so every draw takes its offset from a second one. The pmf is the continuous
  // normal density to within 10^-16 at these σ.
  for (const auto& [sigma, width] :
       {std::pair{1.4e8, int64_t{1} << 21}, std::pair{0x1.0p40, int64_t{1} << 34}}) {
    const TabulatedNoise sampler = TabulatedNoise::DiscreteGaussian(sigma * sigma);
    EXPECT_EQ(sampler.cell_width(), width);
    SecureRandom random = TestRandom('r');
    std::vector<int64_t> draws(kDraws);
    sampler.Fill(draws, random);
    ExpectNormalMomentsAndShape(draws, sigma, "σ = " + std::to_string(sigma));
  }
}

TEST(NoiseTest, TheDiscreteGaussianTableNeverHasLessVarianceThanAsked) {
  // 1/(2σ²) is rounded down, so the law drawn is at least as noisy as the one accounted; to
  // nearest, about half of these would round up. Every table also draws within its cut (the
  // residue of its integer weights is of either sign, about as often).
  SecureRandom random = TestRandom('v');
  int exact = 0;
  std::vector<int64_t> draws(64);
  for (int i = 0; i < 1000; ++i) {
    const double sigma_squared = std::ldexp(1.0 + random.UniformDouble(), 4 + i % 50);
    const TabulatedNoise table = TabulatedNoise::DiscreteGaussian(sigma_squared);
    const double c2 = table.log_weight().c2;
    EXPECT_LE(std::fma(c2, 2.0 * sigma_squared, -1.0), 0.0) << sigma_squared;
    EXPECT_GE(c2, std::nextafter(1.0 / (2.0 * sigma_squared), 0.0));
    exact += std::fma(c2, 2.0 * sigma_squared, -1.0) == 0.0 ? 1 : 0;
    table.Fill(draws, random);
    const double reach =
        12 * std::sqrt(sigma_squared) + 2.0 * static_cast<double>(table.cell_width());
    for (int64_t x : draws) ASSERT_LE(std::abs(static_cast<double>(x)), reach) << sigma_squared;
  }
  EXPECT_LT(exact, 1000);
}

// log I_0(z) - log I_ν(z) by the ratios r_j = I_(j+1)(z)/I_j(z), which the recurrence
// 1/r_j = 2(j+1)/z + r_(j+1) gives stably downwards from far above ν (any start is forgotten
// by a factor e^-(J² - ν²)/z), summed in long double: a reference for the Skellam table's
// series that shares nothing with it.
std::vector<long double> BesselLogRatios(double z, size_t largest_order) {
  const auto start = static_cast<size_t>(16 * std::sqrt(z)) + largest_order + 100;
  std::vector<long double> ratio(start + 1);
  ratio[start] = 1.0L;
  for (size_t j = start; j-- > 0;) {
    ratio[j] = 1.0L / (2.0L * static_cast<long double>(j + 1) / z + ratio[j + 1]);
  }
  std::vector<long double> log_ratio(largest_order + 1, 0.0L);  // log_ratio[ν] = G(ν)
  for (size_t nu = 1; nu <= largest_order; ++nu) {
    log_ratio[nu] = log_ratio[nu - 1] - std::log(ratio[nu - 1]);
  }
  return log_ratio;
}

TEST(NoiseTest, TheSkellamTablesSeriesIsTheBesselLaw) {
  for (double mu : {0x1.0p24, 0x1.0p28}) {
    const double z = 2 * mu;
    const auto widest = static_cast<size_t>(12 * std::sqrt(z)) + 1;
    const std::vector<long double> reference = BesselLogRatios(z, widest);
    const absl::StatusOr<TabulatedNoise> skellam = TabulatedNoise::Skellam(mu);
    ASSERT_TRUE(skellam.ok()) << skellam.status();
    // What NoiseDrawTotalVariation charges the table for: the series' remainder, within
    // 10^-12 at z = 2^25 and shrinking as z^-3; plus, here, 2^-51 of G for the rounding to
    // double of the coefficients log_weight() shows (the table decides with them in quad). A wrong
    // coefficient of the ν⁶/z⁵ or ν⁴/z⁴ terms would be off by 10^-12 or more at 2^24, and of ν²/z²
    // by 10^-6.
    const double remainder = 1e-12 * std::pow(0x1.0p25 / z, 3);
    for (double sigmas : {0.0, 0.001, 0.5, 1.0, 3.0, 6.0, 9.0, 12.0}) {
      const auto nu = static_cast<size_t>(sigmas * std::sqrt(z)) + 1;
      const long double series = skellam->log_weight().At(static_cast<long double>(nu));
      EXPECT_NEAR(static_cast<double>(series), static_cast<double>(reference[nu]),
                  remainder + 0x1.0p-51 * static_cast<double>(reference[nu]))
          << "μ = " << mu << ", ν = " << nu;
    }
  }
  EXPECT_THAT(TabulatedNoise::Skellam(0x1.0p23).status().message(),
              testing::HasSubstr("needs a mean of at least 2^24"));
}

TEST(NoiseTest, TabulatedSkellamHasItsMomentsAndShape) {
  // μ = 2^30: cells of 2^9 values. Skellam's variance is exactly 2μ, and at this mean its pmf is
  // the normal density to within 10^-9 relative in the bins of σ/4 checked here.
  const double mu = 0x1.0p30;
  const absl::StatusOr<TabulatedNoise> sampler = TabulatedNoise::Skellam(mu);
  ASSERT_TRUE(sampler.ok());
  EXPECT_EQ(sampler->cell_width(), int64_t{1} << 9);
  SecureRandom random = TestRandom('k');
  std::vector<int64_t> draws(kDraws);
  sampler->Fill(draws, random);
  ExpectNormalMomentsAndShape(draws, std::sqrt(2 * mu), "skellam μ = 2^30");
}

TEST(NoiseTest, DiscreteLaplaceProposalMatchesItsExactDistribution) {
  // σ² = 30 gives the proposal scale t = 6: P(x) ∝ exp(-|x|/6).
  const DiscreteGaussianSampler sampler(30.0);
  SecureRandom random = TestRandom('l');
  const Exact exact =
      ExactDistribution([](int64_t x) { return -std::abs(static_cast<double>(x)) / 6.0; }, 400, 18);
  CheckSampler([&] { return sampler.SampleDiscreteLaplace(random); }, exact, 18,
               "discrete laplace");
}

TEST(NoiseTest, SkellamMatchesItsExactDistribution) {
  for (double mu : {0.8, 3.0, 50.0}) {
    SecureRandom random = TestRandom('s');
    // P(k) = e^(-2μ) I_|k|(2μ); the common factor cancels in the normalisation.
    const auto tail_from = static_cast<int64_t>(std::ceil(3 * std::sqrt(2 * mu)));
    const Exact exact = ExactDistribution(
        [&](int64_t k) {
          return std::log(std::cyl_bessel_i(static_cast<double>(std::abs(k)), 2 * mu));
        },
        static_cast<int64_t>(30 * std::sqrt(2 * mu)) + 20, tail_from);
    EXPECT_NEAR(exact.variance, 2 * mu, 1e-6 * mu);
    CheckSampler([&] { return SampleSkellam(mu, random); }, exact, tail_from, "skellam");
  }
}

TEST(NoiseTest, SkellamAtTheScaleOfRealNoiseHasItsMoments) {
  // μ = 5000 (variance 10^4, as in the benchmark): the Bessel pmf overflows here, so the check
  // is on the moments, which for a Skellam are exact: mean 0, variance 2μ, excess kurtosis 1/(2μ).
  SecureRandom random = TestRandom('k');
  const double mu = 5000.0;
  double sum = 0;
  double squares = 0;
  for (int i = 0; i < kDraws; ++i) {
    const auto x = static_cast<double>(SampleSkellam(mu, random));
    sum += x;
    squares += x * x;
  }
  const double n = kDraws;
  EXPECT_NEAR(sum / n, 0.0, 5 * std::sqrt(2 * mu / n));
  EXPECT_NEAR(squares / n, 2 * mu, 5 * std::sqrt(2.0 / n) * 2 * mu);
}

TEST(SecureRandomTest, SeededStreamsRepeatAndPurposesSeparate) {
  SecureRandom a = TestRandom('x');
  SecureRandom b = TestRandom('x');
  SecureRandom other = *SecureRandom::FromSeed(std::string(32, 'x'), "another purpose");
  EXPECT_EQ(a(), b());
  EXPECT_NE(a(), other());
  auto system_1 = SecureRandom::FromSystem();
  auto system_2 = SecureRandom::FromSystem();
  EXPECT_NE((*system_1)(), (*system_2)());
  EXPECT_FALSE(SecureRandom::FromSeed("short", "x").ok());
  // UniformBelow is uniform: a chi-square over 7 cells.
  std::vector<int64_t> cells(7);
  for (int i = 0; i < 700000; ++i) ++cells[a.UniformBelow(7)];
  double chi_square = 0;
  for (int64_t count : cells) chi_square += std::pow(count - 100000.0, 2) / 100000.0;
  EXPECT_LT(chi_square, 22.46);  // The 0.999 quantile of χ² with 6 degrees of freedom.
}

// The AES-CTR keystream of `key` (16 or 32 bytes) over `words` 64-bit words, straight from EVP.
std::vector<uint64_t> EvpKeystream(const unsigned char* key, size_t key_bytes, size_t words) {
  std::vector<uint64_t> stream(words, 0);
  EVP_CIPHER_CTX* cipher = EVP_CIPHER_CTX_new();
  const unsigned char iv[16] = {};
  EVP_EncryptInit_ex(cipher, key_bytes == 16 ? EVP_aes_128_ctr() : EVP_aes_256_ctr(), nullptr, key,
                     iv);
  auto* bytes = reinterpret_cast<unsigned char*>(stream.data());
  int written = 0;
  EVP_EncryptUpdate(cipher, bytes, &written, bytes, static_cast<int>(words * 8));
  EVP_CIPHER_CTX_free(cipher);
  return stream;
}

TEST(SecureRandomTest, SeededStreamsAreTheProtocolsKeystreamAndForksTheirOwn) {
  // The rotation signs every client and the coordinator derive from a round's public seed:
  // AES-256-CTR under SHA-256(purpose ‖ 0 ‖ seed). A change here breaks mixed versions.
  const std::string seed(32, 's');
  const std::string purpose = "fedmoe/v1/rotation-signs";
  std::string material = purpose;
  material.push_back('\0');
  material += seed;
  unsigned char key[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(material.data()), material.size(), key);
  const std::vector<uint64_t> expected = EvpKeystream(key, sizeof(key), 1000);
  SecureRandom random = *SecureRandom::FromSeed(seed, purpose);
  std::vector<uint64_t> drawn(1000);
  drawn[0] = random();  // one word through the buffer, the rest in bulk
  random.Fill(std::span(drawn).subspan(1));
  EXPECT_EQ(drawn, expected);

  // A fork is AES-128-CTR under the parent's next 16 bytes, and the parent goes on after them.
  SecureRandom parent = *SecureRandom::FromSeed(seed, purpose);
  SecureRandom reference = *SecureRandom::FromSeed(seed, purpose);
  uint64_t fork_key[2] = {reference(), reference()};
  SecureRandom child = *parent.Fork();
  const std::vector<uint64_t> fork_expected =
      EvpKeystream(reinterpret_cast<const unsigned char*>(fork_key), 16, 3);
  EXPECT_EQ(child(), fork_expected[0]);
  EXPECT_EQ(child(), fork_expected[1]);
  EXPECT_EQ(parent(), reference());
}

// A keystream that OpenSSL failed to produce would be all zeros: no noise and no rounding, and
// nothing in the output to show it. The failure is kept and reported by everything downstream.
TEST(SecureRandomTest, AKeystreamFailureIsReportedNotHidden) {
  SecureRandom random = *SecureRandom::FromSeed(std::string(32, 'f'), "test");
  EXPECT_TRUE(random.status().ok());
  random.BreakCipherForTesting();
  std::vector<uint64_t> words(1000);
  random.Fill(words);
  EXPECT_EQ(random.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(random.status().message()), ::testing::HasSubstr("keystream failed"));
  // Sticky, and a fork of a failed stream is refused.
  (void)random();
  EXPECT_FALSE(random.status().ok());
  EXPECT_FALSE(random.Fork().ok());

  // The encoder refuses to produce an encoding from it, noised or not.
  RingEncoding encoding;
  encoding.mechanism = NoiseMechanism::kDiscreteGaussian;
  encoding.local_noise_variance = 100;
  encoding.scale = 100;
  const RingEncoder encoder = *RingEncoder::Create(64, encoding);
  const std::vector<float> update(64, 0.01F);
  absl::StatusOr<std::vector<uint64_t>> encoded = encoder.Encode(update, random);
  EXPECT_EQ(encoded.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(encoded.status().message()), ::testing::HasSubstr("keystream failed"));

  // So does the coordinator's central noise, which would otherwise decode a noiseless sum.
  SecureRandom central = *SecureRandom::FromSeed(std::string(32, 'c'), "test");
  central.BreakCipherForTesting();
  std::vector<uint64_t> sum(10000, 5);
  const absl::Status noised = RingEncoder::AddCentralNoise(sum, 32, 1e6, central);
  EXPECT_EQ(noised.code(), absl::StatusCode::kInternal);

  // A healthy stream is unaffected by the checks.
  SecureRandom healthy = *SecureRandom::FromSeed(std::string(32, 'h'), "test");
  EXPECT_TRUE(encoder.Encode(update, healthy).ok());
  EXPECT_TRUE(RingEncoder::AddCentralNoise(sum, 32, 1e6, healthy).ok());
}

TEST(HadamardTest, FastTransformMatchesTheHadamardMatrix) {
  // 4096 and 8192 reach past the cache block into the radix-2 and radix-4 sweeps.
  for (size_t n : {1, 2, 8, 32, 4096, 8192}) {
    std::vector<double> x(n);
    for (size_t i = 0; i < n; ++i) x[i] = std::sin(1.0 + static_cast<double>(i));
    std::vector<double> fast = x;
    FastWalshHadamard(fast);
    for (size_t row = 0; row < n; ++row) {
      double expected = 0;
      // H[row][col] = (-1)^popcount(row & col), Sylvester's construction.
      for (size_t col = 0; col < n; ++col) {
        expected += (std::popcount(row & col) % 2 ? -1.0 : 1.0) * x[col];
      }
      ASSERT_NEAR(fast[row], expected, 1e-9) << "n=" << n << " row=" << row;
    }
  }
}

TEST(HadamardTest, IntegerLevelsInAnySplitAreTheTransform) {
  // The encoder's fixed point: two's-complement uint64, levels split into blocks and then
  // across them, against the matrix product in int64.
  SecureRandom random = TestRandom('i');
  for (size_t n : {2, 8, 64, 4096}) {
    std::vector<int64_t> x(n);
    for (int64_t& v : x)
      v = static_cast<int64_t>(random() % (uint64_t{1} << 41)) - (int64_t{1} << 40);
    std::vector<uint64_t> whole(n);
    for (size_t i = 0; i < n; ++i) whole[i] = static_cast<uint64_t>(x[i]);
    std::vector<uint64_t> split = whole;
    WalshHadamardLevels(whole.data(), n, 1, n);
    const size_t block = std::min<size_t>(n, 16);
    for (size_t start = 0; start < n; start += block) {
      WalshHadamardLevels(split.data() + start, block, 1, block);
    }
    WalshHadamardLevels(split.data(), n, block, n);
    for (size_t row = 0; row < n; ++row) {
      int64_t expected = 0;
      for (size_t col = 0; col < n; ++col) {
        expected += (std::popcount(row & col) % 2 ? -1 : 1) * x[col];
      }
      ASSERT_EQ(static_cast<int64_t>(whole[row]), expected) << "n=" << n << " row=" << row;
      ASSERT_EQ(split[row], whole[row]) << "n=" << n << " row=" << row;
    }
  }
}

TEST(HadamardTest, RotationKeepsNormsAndInvertsExactly) {
  const std::string seed(32, 'r');
  for (size_t d : {1, 5, 1000, 4096, 100003}) {
    auto rotation = RandomizedHadamard::Create(d, seed);
    ASSERT_TRUE(rotation.ok());
    EXPECT_EQ(rotation->padded_dimension(), std::bit_ceil(d));
    std::vector<double> x(d);
    SecureRandom random = TestRandom('h');
    for (double& v : x) v = random.UniformDouble() - 0.5;
    std::vector<double> y(rotation->padded_dimension());
    ASSERT_TRUE(rotation->Rotate(x, y).ok());
    const double norm_x = std::sqrt(std::inner_product(x.begin(), x.end(), x.begin(), 0.0));
    const double norm_y = std::sqrt(std::inner_product(y.begin(), y.end(), y.begin(), 0.0));
    EXPECT_NEAR(norm_y, norm_x, 1e-12 * norm_x) << "d=" << d;
    std::vector<double> back(d);
    ASSERT_TRUE(rotation->Unrotate(y, back).ok());
    for (size_t i = 0; i < d; ++i) ASSERT_NEAR(back[i], x[i], 1e-12) << "d=" << d << " i=" << i;
  }
  // The same seed gives the same rotation; another seed another.
  auto a = RandomizedHadamard::Create(64, seed);
  auto b = RandomizedHadamard::Create(64, std::string(32, 's'));
  // A dense input, so that the output depends on every sign (a basis vector would show only
  // one sign, the same under half of all seeds).
  std::vector<double> dense(64);
  std::iota(dense.begin(), dense.end(), 1.0);
  std::vector<double> ya(64);
  std::vector<double> yb(64);
  std::vector<double> ya_again(64);
  ASSERT_TRUE(a->Rotate(dense, ya).ok());
  ASSERT_TRUE(b->Rotate(dense, yb).ok());
  ASSERT_TRUE(RandomizedHadamard::Create(64, seed)->Rotate(dense, ya_again).ok());
  EXPECT_EQ(ya, ya_again);
  EXPECT_NE(ya, yb);
  EXPECT_FALSE(a->Rotate(std::vector<double>(63), ya).ok());
}

TEST(RingEncoderTest, ClippingScalesDownOnlyWhatIsTooLong) {
  std::vector<float> long_vector = {3, 4};
  EXPECT_DOUBLE_EQ(ClipToL2Norm(long_vector, 1.0), 5.0);
  EXPECT_NEAR(long_vector[0], 0.6, 1e-7);
  EXPECT_NEAR(long_vector[1], 0.8, 1e-7);
  std::vector<float> short_vector = {0.3F, 0.4F};
  ClipToL2Norm(short_vector, 1.0);
  EXPECT_EQ(short_vector, (std::vector<float>{0.3F, 0.4F}));
}

TEST(RingEncoderTest, RoundingIsUnbiasedAndRespectsItsNormBound) {
  RingEncoding encoding;
  encoding.clip_norm = 10.0;
  encoding.scale = 4.0;
  encoding.rounding_beta = std::exp(-0.5);
  auto encoder = RingEncoder::Create(50, encoding);
  ASSERT_TRUE(encoder.ok());
  std::vector<float> update(50);
  for (size_t i = 0; i < update.size(); ++i) update[i] = std::cos(static_cast<float>(i)) * 0.7F;
  SecureRandom random = TestRandom('u');
  const int trials = 4000;
  std::vector<double> mean(50, 0.0);
  for (int t = 0; t < trials; ++t) {
    auto encoded = encoder->Encode(update, random);
    ASSERT_TRUE(encoded.ok()) << encoded.status();
    auto decoded = encoder->DecodeSum(*encoded);
    ASSERT_TRUE(decoded.ok());
    for (size_t i = 0; i < 50; ++i) mean[i] += (*decoded)[i] / trials;
  }
  // Each decoded coordinate's rounding error has standard deviation at most 1/(2γ) per
  // rotated coordinate, so the mean over the trials is within 5/(2γ√trials) of the input.
  for (size_t i = 0; i < 50; ++i) {
    EXPECT_NEAR(mean[i], update[i], 5.0 / (2 * encoding.scale * std::sqrt(trials))) << i;
  }
  EXPECT_GT(RoundedNormBound(10, 64, 0.0), RoundedNormBound(10, 64, std::exp(-0.5)));
}

TEST(HadamardTest, ABlockDiagonalRotationKeepsEachBlocksEnergyInItAndInvertsExactly) {
  const std::string seed(32, 'k');
  const size_t d = 20000;
  const size_t block = 4096;
  auto rotation = RandomizedHadamard::Create(d, seed, block);
  ASSERT_TRUE(rotation.ok()) << rotation.status();
  EXPECT_EQ(rotation->padded_dimension(), 5 * block);
  EXPECT_EQ(rotation->block(), block);
  // Energy only in the third block stays there, spread over all of it.
  std::vector<double> x(d, 0.0);
  SecureRandom random = TestRandom('b');
  for (size_t i = 2 * block; i < 3 * block; ++i) x[i] = random.UniformDouble() - 0.5;
  std::vector<double> y(rotation->padded_dimension());
  ASSERT_TRUE(rotation->Rotate(x, y).ok());
  double inside = 0;
  size_t nonzero = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    if (i / block != 2) {
      ASSERT_EQ(y[i], 0.0) << i;
      continue;
    }
    inside += y[i] * y[i];
    nonzero += y[i] != 0.0;
  }
  const double energy = std::inner_product(x.begin(), x.end(), x.begin(), 0.0);
  EXPECT_NEAR(inside, energy, 1e-12 * energy);
  EXPECT_GT(nonzero, block * 9 / 10);
  // Each block is H·D/√R of its own values: block 2's first coordinate, by hand.
  double first = 0;
  std::vector<double> basis(d, 0.0);
  for (size_t i = 2 * block; i < 3 * block; ++i) {
    std::fill(basis.begin(), basis.end(), 0.0);
    basis[i] = 1.0;
    std::vector<double> column(rotation->padded_dimension());
    ASSERT_TRUE(rotation->Rotate(basis, column).ok());
    ASSERT_NEAR(std::abs(column[2 * block]), 1.0 / std::sqrt(static_cast<double>(block)), 1e-15);
    first += column[2 * block] * x[i];
  }
  EXPECT_NEAR(y[2 * block], first, 1e-12);
  // Dense input round-trips.
  for (double& v : x) v = random.UniformDouble() - 0.5;
  ASSERT_TRUE(rotation->Rotate(x, y).ok());
  std::vector<double> back(d);
  ASSERT_TRUE(rotation->Unrotate(y, back).ok());
  for (size_t i = 0; i < d; ++i) ASSERT_NEAR(back[i], x[i], 1e-12) << i;
  // Blocks that are not powers of two, or below the encoder's cache block, are refused.
  EXPECT_FALSE(RandomizedHadamard::Create(d, seed, 3000).ok());
  EXPECT_FALSE(RandomizedHadamard::Create(d, seed, 1024).ok());
}

TEST(HadamardTest, LargeUpdatesArePaddedByLessThanASixteenthSmallOnesToAPowerOfTwo) {
  for (size_t d : {size_t{1}, size_t{5}, size_t{1000}, size_t{1} << 20}) {
    EXPECT_EQ(EncodedLength(d), std::bit_ceil(d)) << d;
    EXPECT_EQ(RotationBlockOf(EncodedLength(d)), EncodedLength(d)) << d;
  }
  // Up to the 7B bench's 35.7M adapter values, and one just past a power of two.
  for (size_t d : {(size_t{1} << 20) + 1, size_t{1234567}, size_t{35651584} - 1,
                   size_t{35651584} + 7, (size_t{1} << 30) + 3}) {
    const size_t encoded = EncodedLength(d);
    const size_t block = RotationBlockOf(encoded);
    EXPECT_GE(encoded, d);
    EXPECT_LE(static_cast<double>(encoded), static_cast<double>(d) * (1 + 1.0 / 16)) << d;
    EXPECT_LE(encoded, std::bit_ceil(d)) << d;
    EXPECT_TRUE(std::has_single_bit(block)) << d;
    EXPECT_GE(block, kMinRotationBlock) << d;
    EXPECT_EQ(encoded % block, 0u) << d;
    // What the encoder pads to with that block is the planned length, and planning is stable.
    EXPECT_EQ(PaddedDimension(d, block), encoded) << d;
    EXPECT_EQ(EncodedLength(encoded), encoded) << d;
    // Blocks only where the length is no power of two: a client that pads to one refuses.
    EXPECT_EQ(block == encoded, std::has_single_bit(encoded)) << d;
  }
  // 31.5 blocks of 2^16 pad to 32 of them, a power of two: rotated whole, as before blocks.
  const size_t power = EncodedLength(size_t{63} << 15);
  EXPECT_EQ(power, size_t{1} << 21);
  EXPECT_EQ(RotationBlockOf(power), power);
}

TEST(RingEncoderTest, NoisedSumDecodesToTheTrueSumWithinThePredictedNoise) {
  // Five clients, each adding noise of variance σ² in scaled units, in a 32-bit ring. The
  // decoded sum's error per coordinate has variance
  //   (n·σ² + rounding variance) / γ²,
  // with the rounding variance between 0 and n/4 per rotated coordinate. Skellam of variance
  // 2^26 (mean 2^25) comes from the table, of variance 400 from PTRS.
  const int clients = 5;
  const size_t d = 4096;
  for (const auto& [mechanism, local_variance] :
       {std::pair{NoiseMechanism::kDiscreteGaussian, 400.0},
        std::pair{NoiseMechanism::kSkellam, 400.0},
        std::pair{NoiseMechanism::kSkellam, 0x1.0p26}}) {
    RingEncoding encoding;
    encoding.clip_norm = 1.0;
    encoding.scale = 1024.0;
    encoding.rounding_beta = std::exp(-0.5);
    encoding.mechanism = mechanism;
    encoding.local_noise_variance = local_variance;
    encoding.ring_bits = 32;
    encoding.rotation_seed = std::string(32, 'e');
    auto encoder = RingEncoder::Create(d, encoding);
    ASSERT_TRUE(encoder.ok());
    SecureRandom random = TestRandom('c');
    std::vector<double> truth(d, 0.0);
    std::vector<uint64_t> sum(encoder->encoded_dimension(), 0);
    for (int c = 0; c < clients; ++c) {
      std::vector<float> update(d);
      for (float& v : update) v = static_cast<float>(random.UniformDouble() - 0.5) * 0.05F;
      ClipToL2Norm(update, encoding.clip_norm);
      for (size_t i = 0; i < d; ++i) truth[i] += update[i];
      auto encoded = encoder->Encode(update, random);
      ASSERT_TRUE(encoded.ok());
      ASSERT_TRUE(RingEncoder::AddInRing(sum, *encoded, encoding.ring_bits).ok());
    }
    auto decoded = encoder->DecodeSum(sum);
    ASSERT_TRUE(decoded.ok());
    double error_sum = 0;
    double error_squares = 0;
    for (size_t i = 0; i < d; ++i) {
      const double error = (*decoded)[i] - truth[i];
      error_sum += error;
      error_squares += error * error;
    }
    const double gamma2 = encoding.scale * encoding.scale;
    const double low = clients * encoding.local_noise_variance / gamma2;
    const double high = (clients * encoding.local_noise_variance + clients / 4.0) / gamma2;
    const double variance = error_squares / d;
    const double se = std::sqrt(2.0 / d);
    EXPECT_GT(variance, low * (1 - 5 * se));
    EXPECT_LT(variance, high * (1 + 5 * se));
    EXPECT_NEAR(error_sum / d, 0.0, 5 * std::sqrt(high / d));
  }
}

// The encoder's fixed-point rotation runs in blocks, column slabs and threads; the double
// precision Rotate does the whole transform at once. Each encoded value must be the floor or
// the ceiling of the rotated, scaled value, up to the fixed point's truncation.
void ExpectEncodingRoundsTheRotation(size_t dimension, double scale, double clip_norm,
                                     int ring_bits, char seed) {
  RingEncoding encoding;
  encoding.clip_norm = clip_norm;
  encoding.scale = scale;
  encoding.ring_bits = ring_bits;
  encoding.rotation_seed = std::string(32, seed);
  auto encoder = RingEncoder::Create(dimension, encoding);
  ASSERT_TRUE(encoder.ok()) << encoder.status();
  SecureRandom random = TestRandom(seed);
  std::vector<float> update(dimension);
  for (float& v : update) v = static_cast<float>(random.UniformDouble() - 0.3);
  // Longer than the clip norm, so that the clip is folded in too.
  std::vector<double> clipped(update.begin(), update.end());
  double squares = 0;
  for (double v : clipped) squares += v * v;
  ASSERT_GT(std::sqrt(squares), clip_norm);
  for (double& v : clipped) v *= clip_norm / std::sqrt(squares) * scale;
  auto rotation = RandomizedHadamard::Create(dimension, encoding.rotation_seed);
  std::vector<double> rotated(rotation->padded_dimension());
  ASSERT_TRUE(rotation->Rotate(clipped, rotated).ok());

  std::vector<uint64_t> encoded(encoder->encoded_dimension());
  ASSERT_TRUE(encoder->EncodeInto(update, random, encoded).ok());
  const uint64_t mask = (uint64_t{1} << ring_bits) - 1;
  const uint64_t half = uint64_t{1} << (ring_bits - 1);
  size_t rounded_up = 0;
  for (size_t i = 0; i < encoded.size(); ++i) {
    ASSERT_LE(encoded[i], mask) << i;
    const auto value = encoded[i] >= half
                           ? static_cast<double>(encoded[i]) - std::ldexp(1.0, ring_bits)
                           : static_cast<double>(encoded[i]);
    // Within one of the exact value, less the fixed point's and the double transform's errors.
    ASSERT_LT(std::abs(value - rotated[i]), 1.0 + 1e-3) << "coordinate " << i;
    rounded_up += value > rotated[i] ? 1 : 0;
  }
  // Up about as often as the fractions say: on average half the time for these values.
  const auto n = static_cast<double>(encoded.size());
  EXPECT_NEAR(static_cast<double>(rounded_up) / n, 0.5, 5 * 0.5 / std::sqrt(n) + 0.01);
}

TEST(RingEncoderTest, AMillionValuesInThreadsAreTheRoundedRotation) {
  // 2^20 - 3 values: padded to 2^20, 512 blocks of 2048, 16 column slabs, a shard per core.
  ExpectEncodingRoundsTheRotation((size_t{1} << 20) - 3, 3000.0, 2.0, 32, 'm');
}

TEST(RingEncoderTest, AScaleNearTheRingLeavesFewFractionBitsButStaysExact) {
  // γ·C = 2^40 in a 48-bit ring: coordinates of about 2^30 and a fixed point of 21 fraction
  // bits, whose truncation moves a value by at most n·2^-21 = 2^-5 here.
  ExpectEncodingRoundsTheRotation(1 << 16, std::ldexp(1.0, 39), 2.0, 48, 'f');
}

TEST(RingEncoderTest, ModularWrapAroundIsUndoneByTheDecoder) {
  // Values that wrap the 16-bit ring individually still sum correctly.
  RingEncoding encoding;
  encoding.clip_norm = 100.0;
  encoding.scale = 100.0;
  encoding.ring_bits = 16;
  auto encoder = RingEncoder::Create(1, encoding);
  SecureRandom random = TestRandom('w');
  std::vector<uint64_t> sum(1, 0);
  for (float value : {-50.0F, -70.0F, 30.0F}) {
    auto encoded = encoder->Encode(std::vector<float>{value}, random);
    ASSERT_TRUE(encoded.ok());
    EXPECT_LT((*encoded)[0], uint64_t{1} << 16);
    ASSERT_TRUE(RingEncoder::AddInRing(sum, *encoded, 16).ok());
  }
  EXPECT_NEAR((*encoder->DecodeSum(sum))[0], -90.0, 1e-9);
}

TEST(RingEncoderTest, CentralNoiseIsTheDiscreteGaussianAddedInTheRing) {
  // A sum sitting just below the top of a 32-bit ring: noise of either sign wraps it, and the
  // centred difference is the noise itself, which must be the discrete Gaussian: its moments
  // and its pmf on the likely values (at σ² = 4000, where the table's cells are single values
  // and the law is checked exactly).
  for (const auto& [variance, exact_pmf] : {std::pair{4000.0, true}, {1.9e16, false}}) {
    constexpr int kBits = 32;
    const uint64_t mask = (uint64_t{1} << kBits) - 1;
    const uint64_t start = mask - 2;
    std::vector<uint64_t> sum(kDraws, start);
    SecureRandom random = TestRandom('c');
    ASSERT_TRUE(RingEncoder::AddCentralNoise(sum, kBits, variance, random).ok());
    std::vector<int64_t> noise(sum.size());
    for (size_t i = 0; i < sum.size(); ++i) {
      ASSERT_LE(sum[i], mask);
      // Centred: the difference mod 2^32, read as a signed 32-bit value.
      noise[i] = static_cast<int32_t>(static_cast<uint32_t>((sum[i] - start) & mask));
    }
    const double sigma = std::sqrt(variance);
    if (exact_pmf) {
      const auto tail_from = static_cast<int64_t>(std::ceil(3 * sigma));
      CheckEveryLikelyValue(noise, DiscreteGaussianLaw(variance, tail_from), "central noise");
    } else {
      ExpectNormalMomentsAndShape(noise, sigma, "central noise at a 32-bit ring's scale");
    }
  }
  std::vector<uint64_t> sum(4, 0);
  SecureRandom random = TestRandom('c');
  EXPECT_THAT(std::string(RingEncoder::AddCentralNoise(sum, 32, 0.0, random).message()),
              testing::HasSubstr("positive variance"));
  EXPECT_THAT(std::string(RingEncoder::AddCentralNoise(sum, 70, 1.0, random).message()),
              testing::HasSubstr("ring bits"));
}

TEST(RingEncoderTest, BadParametersAndLengthsAreRefused) {
  RingEncoding encoding;
  encoding.ring_bits = 8;
  EXPECT_FALSE(RingEncoder::Create(4, encoding).ok());
  encoding.ring_bits = 32;
  encoding.mechanism = NoiseMechanism::kSkellam;
  EXPECT_FALSE(RingEncoder::Create(4, encoding).ok());
  encoding.mechanism = NoiseMechanism::kNone;
  encoding.rotation_seed = "short";
  EXPECT_FALSE(RingEncoder::Create(4, encoding).ok());
  encoding.rotation_seed = std::string(32, '\0');
  // A scale the 64-bit fixed point of the rotation cannot hold with enough fraction bits.
  encoding.scale = std::ldexp(1.0, 61);
  const absl::Status too_wide = RingEncoder::Create(4, encoding).status();
  EXPECT_THAT(too_wide.message(), testing::HasSubstr("in 64-bit fixed point holds at most"))
      << too_wide;
  encoding.scale = 1.0;
  auto encoder = RingEncoder::Create(4, encoding);
  SecureRandom random = TestRandom('z');
  EXPECT_FALSE(encoder->Encode(std::vector<float>(3), random).ok());
  std::vector<uint64_t> too_short(3);
  const absl::Status no_room = encoder->EncodeInto(std::vector<float>(4), random, too_short);
  EXPECT_THAT(no_room.message(), testing::HasSubstr("room for 3 encoded values")) << no_room;
  EXPECT_FALSE(encoder->DecodeSum(std::vector<uint64_t>(3)).ok());
}

}  // namespace
}  // namespace fedmoe::privacy
