// Distributed-DP accounting against the Gaussian it approaches and the bounds it must respect.
#include "privacy/distributed_accounting.h"

#include <gtest/gtest.h>

#include <cmath>

#include "privacy/rdp_accountant.h"

namespace fedmoe::privacy {
namespace {

DistributedRound Round(NoiseMechanism mechanism, double q, double variance, int64_t survivors) {
  DistributedRound round;
  round.mechanism = mechanism;
  round.sampling_rate = q;
  round.local_noise_variance = variance;
  round.survivors = survivors;
  round.l2_sensitivity = 1000.0;
  round.dimension = 1 << 16;
  return round;
}

const std::vector<double> kIntegerOrders = {2, 3, 5, 8, 16, 32, 64};

TEST(DistributedAccountingTest, LargeNoiseWithoutSamplingIsTheGaussianClosedForm) {
  // With σ² in the thousands, τ (KLS21) underflows to 0 and the Skellam corrections are
  // O(1/V²): both reduce to α·Δ²/(2·n·σ²), the Gaussian with z = √(nσ²)/Δ.
  for (NoiseMechanism mechanism : {NoiseMechanism::kDiscreteGaussian, NoiseMechanism::kSkellam}) {
    const DistributedRound round = Round(mechanism, 1.0, 4.0e6, 10);
    const double z = EffectiveNoiseMultiplier(round);
    EXPECT_NEAR(z, std::sqrt(10 * 4.0e6) / 1000.0, 1e-12);
    auto rdp = DistributedRoundRdp(round, kIntegerOrders);
    ASSERT_TRUE(rdp.ok()) << rdp.status();
    for (size_t i = 0; i < kIntegerOrders.size(); ++i) {
      const double gaussian = kIntegerOrders[i] / (2 * z * z);
      EXPECT_NEAR((*rdp)[i], gaussian, 2e-3 * gaussian) << "alpha=" << kIntegerOrders[i];
      EXPECT_GE((*rdp)[i], gaussian * (1 - 1e-12)) << "never below the Gaussian";
    }
  }
}

TEST(DistributedAccountingTest, SkellamMatchesItsPublishedFormula) {
  // AKL21 for total variance V, sensitivities Δ₂ and Δ₁ = Δ₂·min(√d, Δ₂), written out here.
  DistributedRound round = Round(NoiseMechanism::kSkellam, 1.0, 50.0, 4);
  round.l2_sensitivity = 30.0;
  round.dimension = 64;
  const double v = 200.0;
  const double l2 = 30.0;
  const double l1 = 30.0 * 8.0;
  for (double alpha : {2.0, 7.0}) {
    const double expected =
        alpha * l2 * l2 / (2 * v) +
        std::min(((2 * alpha - 1) * l2 * l2 + 6 * l1) / (4 * v * v), 3 * l1 / (2 * v));
    EXPECT_NEAR((*DistributedRoundRdp(round, std::vector<double>{alpha}))[0], expected,
                1e-12 * expected);
  }
}

TEST(DistributedAccountingTest, SmallDiscreteGaussianSharesPayForTheGapToAGaussian) {
  // With σ² = 0.1 per client, the sum of discrete Gaussians is far from one: τ > 0 and the
  // RDP exceeds the Gaussian form.
  DistributedRound round = Round(NoiseMechanism::kDiscreteGaussian, 1.0, 0.1, 100);
  round.l2_sensitivity = 2.0;
  round.dimension = 16;
  const double z = EffectiveNoiseMultiplier(round);
  const double rdp = (*DistributedRoundRdp(round, std::vector<double>{4.0}))[0];
  EXPECT_GT(rdp, 4.0 / (2 * z * z) * 1.01);
}

TEST(DistributedAccountingTest, TheSubsamplingBoundIsSoundForTheGaussian) {
  // Applied to the Gaussian's RDP curve, Zhu–Wang's general bound can only be above the exact
  // subsampled-Gaussian RDP (Mironov et al.), and should not be far above it.
  for (double q : {0.01, 0.1, 0.5}) {
    for (int alpha : {2, 4, 16, 32}) {
      const double z = 1.5;
      const double bound =
          PoissonSubsampledRdpBound(alpha, q, [z](int order) { return order / (2 * z * z); });
      const double exact = *SubsampledGaussianRdp(q, z, alpha);
      EXPECT_GE(bound, exact * (1 - 1e-9)) << "q=" << q << " alpha=" << alpha;
      EXPECT_LE(bound, 3 * exact + 1e-6) << "q=" << q << " alpha=" << alpha;
    }
  }
}

TEST(DistributedAccountingTest, FewerSurvivorsAndMoreSamplingCostMore) {
  auto epsilon = [](int64_t survivors, double q) {
    RdpAccountant accountant;
    auto rdp = DistributedRoundRdp(Round(NoiseMechanism::kDiscreteGaussian, q, 2.0e5, survivors),
                                   accountant.orders());
    EXPECT_TRUE(rdp.ok());
    EXPECT_TRUE(accountant.AddRdp(*rdp).ok());
    return accountant.Epsilon(1e-5)->epsilon;
  };
  EXPECT_GT(epsilon(5, 0.1), epsilon(10, 0.1));
  EXPECT_GT(epsilon(10, 0.5), epsilon(10, 0.1));
}

TEST(DistributedAccountingTest, BadRoundsAreRefused) {
  DistributedRound round = Round(NoiseMechanism::kDiscreteGaussian, 0.1, 100.0, 0);
  EXPECT_FALSE(DistributedRoundRdp(round, kIntegerOrders).ok());
  round.survivors = 3;
  round.sampling_rate = 0;
  EXPECT_FALSE(DistributedRoundRdp(round, kIntegerOrders).ok());
  round.sampling_rate = 0.1;
  round.mechanism = NoiseMechanism::kNone;
  EXPECT_FALSE(DistributedRoundRdp(round, kIntegerOrders).ok());
}

}  // namespace
}  // namespace fedmoe::privacy
