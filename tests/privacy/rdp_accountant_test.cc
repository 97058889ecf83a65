// The RDP accountant against references computed here, independently of its series:
// direct numerical integration of the subsampled-Gaussian Rényi divergence, the closed form of
// the plain Gaussian, the exact (ε, δ) curve of the Gaussian mechanism (Balle & Wang 2018),
// and a published value (Abadi et al. 2016).
#include "privacy/rdp_accountant.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace fedmoe::privacy {
namespace {

using ::testing::HasSubstr;

double LogAddExp(double a, double b) {
  if (a == -std::numeric_limits<double>::infinity()) return b;
  const double high = std::max(a, b);
  return high + std::log1p(std::exp(-std::abs(a - b)));
}

// log A_α = log ∫ N(x; 0, σ²) · (1 - q + q·N(x; 1, σ²)/N(x; 0, σ²))^α dx, by the trapezoid rule
// over a range that holds all of the mass (the q^α part peaks near x = α).
double LogAByIntegration(double q, double sigma, double alpha) {
  const double low = -40.0 * sigma - 2.0;
  const double high = alpha + 40.0 * sigma + 2.0;
  const int steps = 400000;
  const double h = (high - low) / steps;
  double log_sum = -std::numeric_limits<double>::infinity();
  for (int i = 0; i <= steps; ++i) {
    const double x = low + h * i;
    const double log_density = -x * x / (2 * sigma * sigma) - std::log(sigma * std::sqrt(2 * M_PI));
    const double log_ratio = (2 * x - 1) / (2 * sigma * sigma);
    const double log_mixture = LogAddExp(std::log1p(-q), std::log(q) + log_ratio);
    const double weight = (i == 0 || i == steps) ? 0.5 : 1.0;
    log_sum = LogAddExp(log_sum, log_density + alpha * log_mixture + std::log(weight));
  }
  return log_sum + std::log(h);
}

struct Case {
  double q;
  double z;
};

TEST(SubsampledGaussianRdpTest, MatchesNumericalIntegrationAtIntegerAndFractionalOrders) {
  for (const Case& c :
       {Case{0.01, 1.1}, Case{0.1, 0.8}, Case{0.5, 2.0}, Case{0.001, 0.7}, Case{0.2, 5.0}}) {
    for (double alpha : {1.5, 2.0, 2.75, 3.0, 8.0, 10.5, 32.0, 40.25}) {
      const double expected = LogAByIntegration(c.q, c.z, alpha) / (alpha - 1);
      absl::StatusOr<double> rdp = SubsampledGaussianRdp(c.q, c.z, alpha);
      ASSERT_TRUE(rdp.ok()) << rdp.status();
      EXPECT_NEAR(*rdp, expected, 1e-7 * std::max(1.0, expected))
          << "q=" << c.q << " z=" << c.z << " alpha=" << alpha;
    }
  }
}

TEST(SubsampledGaussianRdpTest, WithoutSamplingItIsTheGaussianClosedForm) {
  for (double z : {0.5, 1.0, 3.0}) {
    for (double alpha : {1.5, 2.0, 7.0, 33.5}) {
      const double closed_form = alpha / (2 * z * z);
      EXPECT_DOUBLE_EQ(*SubsampledGaussianRdp(1.0, z, alpha), closed_form);
      // The general series, approaching q = 1, converges to it too.
      EXPECT_NEAR(*SubsampledGaussianRdp(1.0 - 1e-9, z, alpha), closed_form, 1e-6 * closed_form);
      EXPECT_NEAR(LogAByIntegration(1.0, z, alpha) / (alpha - 1), closed_form, 1e-7 * closed_form);
    }
  }
}

TEST(SubsampledGaussianRdpTest, EdgeCasesAndBadArguments) {
  EXPECT_EQ(*SubsampledGaussianRdp(0.0, 1.0, 2.0), 0.0);
  EXPECT_TRUE(std::isinf(*SubsampledGaussianRdp(0.1, 0.0, 2.0)));
  EXPECT_FALSE(SubsampledGaussianRdp(1.5, 1.0, 2.0).ok());
  EXPECT_FALSE(SubsampledGaussianRdp(0.1, -1.0, 2.0).ok());
  EXPECT_FALSE(SubsampledGaussianRdp(0.1, 1.0, 1.0).ok());
  EXPECT_FALSE(SubsampledGaussianRdp(0.1, std::nan(""), 2.0).ok());
}

// δ(ε) of one Gaussian mechanism with sensitivity 1 and noise z, exactly (Balle & Wang 2018).
double ExactGaussianDelta(double z, double epsilon) {
  auto phi = [](double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); };
  return phi(1 / (2 * z) - epsilon * z) - std::exp(epsilon) * phi(-1 / (2 * z) - epsilon * z);
}

TEST(RdpToEpsilonTest, IsASoundAndTightBoundForTheGaussianMechanism) {
  const double delta = 1e-5;
  for (double z : {0.8, 1.0, 2.0, 5.0}) {
    RdpAccountant accountant;
    ASSERT_TRUE(accountant.AddSubsampledGaussian(1.0, z).ok());
    const PrivacyLoss loss = *accountant.Epsilon(delta);
    // Sound: the mechanism really is (ε, δ)-DP at the reported ε.
    EXPECT_LE(ExactGaussianDelta(z, loss.epsilon), delta) << "z=" << z;
    // Tight: within 25% of the exact ε.
    double low = 0;
    double high = 100;
    for (int i = 0; i < 200; ++i) {
      const double middle = 0.5 * (low + high);
      (ExactGaussianDelta(z, middle) > delta ? low : high) = middle;
    }
    EXPECT_LT(loss.epsilon, 1.25 * high) << "z=" << z << " exact epsilon " << high;
  }
}

TEST(RdpToEpsilonTest, ReproducesAbadiEtAlsExample) {
  // Abadi et al. (2016), §3.1: q = 0.01, σ = 4, 10000 steps, δ = 1e-5 gives ε ≈ 1.26 with the
  // moments accountant. Exact RDP and the tighter conversion can only do better, not much.
  RdpAccountant accountant;
  ASSERT_TRUE(accountant.AddSubsampledGaussian(0.01, 4.0, 10000).ok());
  const PrivacyLoss loss = *accountant.Epsilon(1e-5);
  EXPECT_LT(loss.epsilon, 1.26);
  EXPECT_GT(loss.epsilon, 0.9);
}

// log δ₀ at which CKS20 Prop. 12 turns RDP r at order α into ε, solved for δ₀ here rather than
// taken from the accountant.
double LogDeltaOfConversion(double alpha, double rdp, double epsilon) {
  return (alpha - 1) * (rdp + std::log1p(-1 / alpha) - epsilon) - std::log(alpha);
}

TEST(RdpToEpsilonTest, ASamplersTotalVariationIsChargedToDelta) {
  const double delta = 1e-5;
  for (double z : {1.0, 2.0}) {
    RdpAccountant plain;
    ASSERT_TRUE(plain.AddSubsampledGaussian(1.0, z).ok());
    double previous = plain.Epsilon(delta)->epsilon;
    for (double eta : {1e-12, 1e-10, 1e-9, 1e-8}) {
      SCOPED_TRACE(::testing::Message() << "z=" << z << " eta=" << eta);
      RdpAccountant accountant = plain;
      ASSERT_TRUE(accountant.AddSamplerTotalVariation(eta).ok());
      const PrivacyLoss loss = *accountant.Epsilon(delta);
      ASSERT_TRUE(std::isfinite(loss.epsilon));
      // Sound against the exact curve of the Gaussian mechanism, with the sampler's share.
      EXPECT_LE(ExactGaussianDelta(z, loss.epsilon) + (1 + std::exp(loss.epsilon)) * eta, delta);
      // Sound at the order reported, with δ₀ solved independently of the accountant.
      const std::vector<double>& orders = accountant.orders();
      const auto at =
          static_cast<size_t>(std::find(orders.begin(), orders.end(), loss.order) - orders.begin());
      ASSERT_LT(at, orders.size());
      const double charged = (1 + std::exp(loss.epsilon)) * eta;
      EXPECT_LE(std::exp(LogDeltaOfConversion(loss.order, accountant.rdp()[at], loss.epsilon)),
                delta - charged);
      // The least such ε: a little less fails at every order.
      const double less = loss.epsilon - 1e-6 * std::max(1.0, loss.epsilon);
      for (size_t i = 0; i < orders.size(); ++i) {
        EXPECT_GT(std::exp(LogDeltaOfConversion(orders[i], accountant.rdp()[i], less)) +
                      (1 + std::exp(less)) * eta,
                  delta)
            << "alpha=" << orders[i];
      }
      // More sampler error costs more.
      EXPECT_GT(loss.epsilon, previous);
      previous = loss.epsilon;
    }
    // A sampler error that alone takes half of δ leaves no ε at all ((1 + e^ε)·η ≥ 2η).
    RdpAccountant hopeless = plain;
    ASSERT_TRUE(hopeless.AddSamplerTotalVariation(delta / 2).ok());
    EXPECT_TRUE(std::isinf(hopeless.Epsilon(delta)->epsilon));
  }
}

TEST(RdpAccountantTest, SamplerTotalVariationsAddAndBadOnesAreRefused) {
  RdpAccountant accountant;
  ASSERT_TRUE(accountant.AddSamplerTotalVariation(1e-12).ok());
  ASSERT_TRUE(accountant.AddSamplerTotalVariation(2e-12).ok());
  EXPECT_DOUBLE_EQ(accountant.sampler_total_variation(), 3e-12);
  for (double bad : {-1e-9, 1.5, std::nan("")}) {
    EXPECT_THAT(std::string(accountant.AddSamplerTotalVariation(bad).message()),
                HasSubstr("total variation"))
        << bad;
  }
  EXPECT_DOUBLE_EQ(accountant.sampler_total_variation(), 3e-12);
  const std::vector<double> orders = {2.0};
  const std::vector<double> rdp = {0.1};
  EXPECT_THAT(std::string(RdpToEpsilon(orders, rdp, 1e-5, -1.0).status().message()),
              HasSubstr("total variation"));
}

TEST(RdpAccountantTest, EpsilonMovesTheRightWayInEveryArgument) {
  auto epsilon = [](double q, double z, int64_t rounds, double delta) {
    RdpAccountant accountant;
    EXPECT_TRUE(accountant.AddSubsampledGaussian(q, z, rounds).ok());
    return accountant.Epsilon(delta)->epsilon;
  };
  const double base = epsilon(0.05, 1.0, 100, 1e-6);
  EXPECT_LT(epsilon(0.02, 1.0, 100, 1e-6), base);
  EXPECT_GT(epsilon(0.10, 1.0, 100, 1e-6), base);
  EXPECT_LT(epsilon(0.05, 1.5, 100, 1e-6), base);
  EXPECT_GT(epsilon(0.05, 0.8, 100, 1e-6), base);
  EXPECT_LT(epsilon(0.05, 1.0, 50, 1e-6), base);
  EXPECT_GT(epsilon(0.05, 1.0, 200, 1e-6), base);
  EXPECT_LT(epsilon(0.05, 1.0, 100, 1e-4), base);
  EXPECT_GT(epsilon(0.05, 1.0, 100, 1e-8), base);

  // RDP grows with the order.
  double previous = 0;
  for (double alpha : DefaultRdpOrders()) {
    const double rdp = *SubsampledGaussianRdp(0.05, 1.0, alpha);
    EXPECT_GE(rdp, previous) << "alpha=" << alpha;
    previous = rdp;
  }
}

TEST(RdpAccountantTest, RoundsWithDifferentParametersComposeByAddition) {
  RdpAccountant accountant;
  ASSERT_TRUE(accountant.AddSubsampledGaussian(0.1, 1.2, 3).ok());
  ASSERT_TRUE(accountant.AddSubsampledGaussian(0.05, 0.9, 2).ok());
  for (size_t i = 0; i < accountant.orders().size(); ++i) {
    const double alpha = accountant.orders()[i];
    const double expected =
        3 * *SubsampledGaussianRdp(0.1, 1.2, alpha) + 2 * *SubsampledGaussianRdp(0.05, 0.9, alpha);
    EXPECT_NEAR(accountant.rdp()[i], expected, 1e-12 * expected) << "alpha=" << alpha;
  }
  EXPECT_FALSE(accountant.AddRdp(std::vector<double>(3, 0.0)).ok());
  EXPECT_FALSE(accountant.AddRdp(std::vector<double>(accountant.orders().size(), -1.0)).ok());
}

TEST(NoiseMultiplierForEpsilonTest, FindsTheSmallestNoiseThatMeetsTheTarget) {
  for (double target : {0.5, 2.0, 8.0}) {
    absl::StatusOr<double> z = NoiseMultiplierForEpsilon(target, 0.02, 500, 1e-6);
    ASSERT_TRUE(z.ok()) << z.status();
    auto epsilon = [](double noise) {
      RdpAccountant accountant;
      EXPECT_TRUE(accountant.AddSubsampledGaussian(0.02, noise, 500).ok());
      return accountant.Epsilon(1e-6)->epsilon;
    };
    EXPECT_LE(epsilon(*z), target);
    EXPECT_GT(epsilon(*z * (1 - 1e-4)), target) << "target " << target << " z " << *z;
  }
}

TEST(PrivacyArgumentsTest, EachBadArgumentIsNamed) {
  auto message = [](const absl::Status& status) { return std::string(status.message()); };
  EXPECT_THAT(message(ValidatePrivacyArguments(0.0, 1, 1e-5)), HasSubstr("sampling rate q"));
  EXPECT_THAT(message(ValidatePrivacyArguments(1.5, 1, 1e-5)), HasSubstr("sampling rate q"));
  EXPECT_THAT(message(ValidatePrivacyArguments(0.1, 0, 1e-5)), HasSubstr("rounds"));
  EXPECT_THAT(message(ValidatePrivacyArguments(0.1, 1, 0.0)), HasSubstr("delta"));
  EXPECT_THAT(message(ValidatePrivacyArguments(0.1, 1, 1.0)), HasSubstr("delta"));
  EXPECT_TRUE(ValidatePrivacyArguments(1.0, 1, 0.5).ok());
  EXPECT_THAT(message(NoiseMultiplierForEpsilon(-1, 0.1, 10, 1e-5).status()),
              HasSubstr("target epsilon"));
}

}  // namespace
}  // namespace fedmoe::privacy

namespace fedmoe::privacy {
namespace {

// P[member in kept cohort] by enumerating every cohort of a small population.
double EnumeratedConditionedRate(int n, double q, int min_size, int max_size) {
  double kept = 0;
  double kept_with_member = 0;
  for (uint32_t cohort = 0; cohort < (1U << n); ++cohort) {
    const int size = __builtin_popcount(cohort);
    if (size < min_size || size > max_size) continue;
    const double probability = std::pow(q, size) * std::pow(1 - q, n - size);
    kept += probability;
    if (cohort & 1U) kept_with_member += probability;
  }
  return kept_with_member / kept;
}

TEST(ConditionedSamplingRateTest, MatchesEveryCohortEnumerated) {
  for (const auto& [n, q, low, high] : std::vector<std::tuple<int, double, int, int>>{
           {3, 0.5, 3, 1000}, {4, 0.9, 3, 3}, {10, 0.3, 2, 10}, {12, 0.2, 2, 4}, {8, 0.6, 5, 6}}) {
    absl::StatusOr<double> rate = ConditionedSamplingRate(n, q, low, high);
    ASSERT_TRUE(rate.ok()) << rate.status();
    EXPECT_NEAR(*rate, EnumeratedConditionedRate(n, q, low, high), 1e-12)
        << n << " " << q << " [" << low << ", " << high << "]";
  }
  // Three clients online and a minimum of three: every kept cohort holds everyone.
  EXPECT_DOUBLE_EQ(*ConditionedSamplingRate(3, 0.5, 3, 1000), 1.0);
  // A binding maximum takes members less often than q.
  EXPECT_NEAR(*ConditionedSamplingRate(4, 0.9, 3, 3), 0.75, 1e-12);
  // Far from the bounds, the conditioning changes q by nothing measurable.
  EXPECT_NEAR(*ConditionedSamplingRate(10000, 0.01, 2, 1000), 0.01, 1e-12);
  EXPECT_DOUBLE_EQ(*ConditionedSamplingRate(7, 1.0, 3, 10), 1.0);
}

TEST(ConditionedSamplingRateTest, ImpossibleDrawsAreRefused) {
  EXPECT_FALSE(ConditionedSamplingRate(2, 0.5, 3, 10).ok());
  EXPECT_FALSE(ConditionedSamplingRate(12, 1.0, 3, 10).ok());
  EXPECT_FALSE(ConditionedSamplingRate(5, 0.0, 1, 3).ok());
  EXPECT_FALSE(ConditionedSamplingRate(5, 0.5, 4, 3).ok());
}

}  // namespace
}  // namespace fedmoe::privacy

namespace fedmoe::privacy {
namespace {

TEST(ExplainInfiniteEpsilonTest, NamesTheTermThatTookDelta) {
  const std::vector<double>& orders = DefaultRdpOrders();
  RdpAccountant small_noise;
  ASSERT_TRUE(small_noise.AddSubsampledGaussian(1.0, 0.05, 5).ok());
  // The noise alone: a finite but large epsilon; the charge of 2^-60 then takes δ = 10^-5.
  ASSERT_TRUE(std::isfinite(RdpToEpsilon(orders, small_noise.rdp(), 1e-5)->epsilon));
  ASSERT_TRUE(std::isinf(RdpToEpsilon(orders, small_noise.rdp(), 1e-5, 0x1.0p-60)->epsilon));
  EXPECT_THAT(ExplainInfiniteEpsilon(orders, small_noise.rdp(), 1e-5, 0x1.0p-60),
              ::testing::HasSubstr("the samplers' term took delta"));

  const std::vector<double> none(orders.size(), std::numeric_limits<double>::infinity());
  EXPECT_THAT(ExplainInfiniteEpsilon(orders, none, 1e-5, 0),
              ::testing::HasSubstr("a round ran without noise"));

  RdpAccountant fine;
  ASSERT_TRUE(fine.AddSubsampledGaussian(0.01, 1.1, 100).ok());
  EXPECT_EQ(ExplainInfiniteEpsilon(orders, fine.rdp(), 1e-5, 1e-20), "");
}

}  // namespace
}  // namespace fedmoe::privacy
