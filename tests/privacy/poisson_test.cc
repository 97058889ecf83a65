// PTRS's Poisson law at the means the Skellam encoder draws it at (up to 2^24), and the log-pmf
// its acceptance test uses, against references in quad precision.
#include <gtest/gtest.h>
#include <quadmath.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "privacy/noise.h"
#include "privacy/secure_random.h"

namespace fedmoe::privacy {
namespace {

__extension__ using Quad = __float128;

// log P(k) for Poisson(μ) in 113-bit arithmetic: the textbook form's cancellation costs it
// about 27 of those bits at μ = 2^24, which leaves some 2^-80.
Quad QuadLogProbability(int64_t k, double mu) {
  const auto kq = static_cast<Quad>(k);
  return -static_cast<Quad>(mu) + kq * logq(static_cast<Quad>(mu)) - lgammaq(kq + 1);
}

TEST(PoissonLogProbabilityTest, IsWithinTwoToTheMinus40OfQuadPrecisionWhereverPtrsAsks) {
  double worst = 0;
  double worst_textbook_at_2_23 = 0;
  for (double mu : {10.0, 37.25, 1000.5, 0x1.0p20, 0x1.0p20 + 0.3, 0x1.0p23, 0x1.0p23 + 0.77,
                    0x1.0p24 - 0.5, 1e12}) {
    const double sigma = std::sqrt(mu);
    std::vector<int64_t> ks;
    for (int64_t k = 0; k <= 40; ++k) ks.push_back(k);
    const auto low = static_cast<int64_t>(std::max(0.0, mu - 20 * sigma));
    const auto high = static_cast<int64_t>(mu + 20 * sigma);
    const int64_t step = std::max<int64_t>(1, (high - low) / 4000);
    for (int64_t k = low; k <= high; k += step) ks.push_back(k);
    for (int64_t k : ks) {
      const Quad reference = QuadLogProbability(k, mu);
      // PTRS's comparison is decided whatever the rounding below about −130 (noise.h).
      if (reference < -130) continue;
      const double error = std::abs(
          static_cast<double>(static_cast<Quad>(PoissonLogProbability(k, mu)) - reference));
      worst = std::max(worst, error);
      EXPECT_LE(error, 0x1.0p-40) << "mu " << mu << " k " << k;
      if (mu == 0x1.0p23) {
        const auto kd = static_cast<double>(k);
        const double textbook = -mu + kd * std::log(mu) - std::lgamma(kd + 1.0);
        worst_textbook_at_2_23 =
            std::max(worst_textbook_at_2_23, std::abs(static_cast<double>(textbook - reference)));
      }
    }
  }
  RecordProperty("worst_error", std::to_string(worst));
  RecordProperty("textbook_worst_error_at_2_23", std::to_string(worst_textbook_at_2_23));
  std::printf("worst |error|: %.3g here, %.3g for the textbook form at mu = 2^23\n", worst,
              worst_textbook_at_2_23);
  // What the issue found: the textbook form errs far above what the ledger may charge.
  EXPECT_GT(worst_textbook_at_2_23, 0x1.0p-36);
}

// Draws binned σ/8 wide over μ ± 6σ, plus both tails, against the exact law: χ² far below
// what a wrong law at these counts would give (a shift of the mean by 1% of σ or the variance
// by 1% already adds hundreds).
void ExpectPoissonLaw(double mu, SecureRandom& random) {
  const PoissonSampler sampler(mu);
  const double sigma = std::sqrt(mu);
  const auto width = static_cast<int64_t>(std::ceil(sigma / 8));
  const auto first = static_cast<int64_t>(mu - 6 * sigma);
  const int64_t bins = static_cast<int64_t>(std::ceil(12 * sigma / static_cast<double>(width)));
  // Bin 0: below `first`; bins 1..bins: [first + (i−1)·width, first + i·width); the last: above.
  std::vector<double> inner;
  Quad inside = 0;
  for (int64_t b = 1; b <= bins; ++b) {
    Quad mass = 0;
    for (int64_t k = first + (b - 1) * width; k < first + b * width; ++k) {
      mass += expq(QuadLogProbability(k, mu));
    }
    inner.push_back(static_cast<double>(mass));
    inside += mass;
  }
  // The tails beyond 6σ hold about 2·10^-9 together; split evenly, they only need to be small.
  const auto tail = static_cast<double>((1 - inside) / 2);
  std::vector<double> expected = {tail};
  expected.insert(expected.end(), inner.begin(), inner.end());
  expected.push_back(tail);

  constexpr int64_t kDraws = 2'000'000;
  std::vector<int64_t> counts(expected.size(), 0);
  for (int64_t i = 0; i < kDraws; ++i) {
    const int64_t k = sampler.Sample(random);
    int64_t bin = k < first ? 0 : 1 + (k - first) / width;
    if (bin > bins) bin = bins + 1;
    ++counts[static_cast<size_t>(bin)];
  }
  double chi_square = 0;
  int degrees = -1;
  double pooled_expected = 0;
  int64_t pooled_count = 0;
  for (size_t b = 0; b < expected.size(); ++b) {
    const double e = expected[b] * kDraws;
    if (e < 20) {
      pooled_expected += e;
      pooled_count += counts[b];
      continue;
    }
    chi_square += std::pow(static_cast<double>(counts[b]) - e, 2) / e;
    ++degrees;
  }
  if (pooled_expected > 0) {
    chi_square += std::pow(static_cast<double>(pooled_count) - pooled_expected, 2) /
                  std::max(pooled_expected, 1.0);
    ++degrees;
  }
  // Mean df and 7 standard deviations of χ²: a false alarm has odds below 10^-9.
  EXPECT_LT(chi_square, degrees + 7 * std::sqrt(2.0 * degrees))
      << "mu " << mu << ", " << degrees << " degrees of freedom";
  std::printf("mu %.6g: chi-square %.1f on %d degrees of freedom\n", mu, chi_square, degrees);
}

TEST(PoissonSamplerTest, PtrsFollowsTheExactLawNearTwoToThe20AndTwoToThe23) {
  SecureRandom random = *SecureRandom::FromSeed(std::string(32, 'p'), "fedmoe/test");
  ExpectPoissonLaw(0x1.0p20 + 0.3, random);
  ExpectPoissonLaw(0x1.0p23 - 0.77, random);
}

TEST(PoissonSamplerTest, TheLedgerChargesPtrsDiscretisationAndItsAcceptanceRounding) {
  // Skellam below the table's smallest mean: two PTRS draws, each 5√μ·2^-53 + 2^-39.
  const double mean = 0x1.0p20;
  EXPECT_DOUBLE_EQ(NoiseDrawTotalVariation(NoiseMechanism::kSkellam, 2 * mean),
                   2 * (5 * std::sqrt(mean) * 0x1.0p-53 + 0x1.0p-39));
}

}  // namespace
}  // namespace fedmoe::privacy
