// Distributed-DP accounting against the Gaussian it approaches and the bounds it must respect.
#include "privacy/distributed_accounting.h"

#include <gtest/gtest.h>

#include <cmath>

#include "privacy/noise.h"
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
  // With σ² = 0.3 per client (σ ≈ 0.55, inside KLS21's σ ≥ 1/2), the sum of discrete
  // Gaussians is far from one: τ > 0 and the RDP exceeds the Gaussian form.
  DistributedRound round = Round(NoiseMechanism::kDiscreteGaussian, 1.0, 0.3, 100);
  round.l2_sensitivity = 2.0;
  round.dimension = 16;
  const double z = EffectiveNoiseMultiplier(round);
  const double rdp = (*DistributedRoundRdp(round, std::vector<double>{4.0}))[0];
  EXPECT_GT(rdp, 4.0 / (2 * z * z) * 1.01);
}

TEST(DistributedAccountingTest, SharesBelowHalfAStandardDeviationArePricedAsOneShare) {
  // KLS21 Prop. 14 does not cover σ < 1/2. Such rounds are charged the RDP of a single share,
  // α·Δ²/(2σ²), whatever the number of survivors.
  for (double variance : {0.1, 0.2499}) {
    DistributedRound round = Round(NoiseMechanism::kDiscreteGaussian, 1.0, variance, 100);
    round.l2_sensitivity = 2.0;
    round.dimension = 16;
    for (double alpha : {2.0, 4.0, 32.0}) {
      const double rdp = (*DistributedRoundRdp(round, std::vector<double>{alpha}))[0];
      EXPECT_NEAR(rdp, alpha * 4.0 / (2 * variance), 1e-12 * rdp) << variance;
    }
  }
  // From σ = 1/2 on the proposition applies, and the charge is the smaller bound: at σ² = 1/4
  // its τ·d (about 119) is above one share's α·Δ²/(2σ²) = 32, which stays; at σ² = 1 the
  // proposition's (τ·d about 0.06, plus α·Δ²/(2·100)) is far below one share's 8.
  auto rdp_at_four = [](double variance) {
    DistributedRound round = Round(NoiseMechanism::kDiscreteGaussian, 1.0, variance, 100);
    round.l2_sensitivity = 2.0;
    round.dimension = 16;
    return (*DistributedRoundRdp(round, std::vector<double>{4.0}))[0];
  };
  EXPECT_NEAR(rdp_at_four(0.25), 32.0, 1e-12);
  EXPECT_LT(rdp_at_four(1.0), 1.0);
  EXPECT_GT(rdp_at_four(1.0), 4.0 * 4.0 / (2 * 100.0));
  // One survivor (and central rounds) is one discrete Gaussian: exact for any σ.
  DistributedRound single = Round(NoiseMechanism::kDiscreteGaussian, 1.0, 0.1, 1);
  single.l2_sensitivity = 2.0;
  EXPECT_NEAR((*DistributedRoundRdp(single, std::vector<double>{4.0}))[0], 4.0 * 4.0 / 0.2, 1e-9);
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

TEST(DistributedAccountingTest, ARoundChargesEachNoiseDrawItsSamplersDistance) {
  DistributedRound round = Round(NoiseMechanism::kDiscreteGaussian, 0.1, 2.0e16, 3);
  const double per_draw = NoiseDrawTotalVariation(NoiseMechanism::kDiscreteGaussian, 2.0e16);
  EXPECT_GT(per_draw, 0.0);
  EXPECT_EQ(per_draw, TabulatedNoise::kDrawTotalVariation);
  EXPECT_LE(per_draw, 0x1.0p-100);
  EXPECT_DOUBLE_EQ(DistributedRoundTotalVariation(round), 3.0 * 65536.0 * per_draw);
  round.survivors = 6;
  EXPECT_DOUBLE_EQ(DistributedRoundTotalVariation(round), 6.0 * 65536.0 * per_draw);
  // Far more draws than a coarse sampler's precision covers: the bound says nothing beyond 1.
  round.mechanism = NoiseMechanism::kSkellam;
  round.local_noise_variance = 100;
  round.dimension = int64_t{1} << 62;
  EXPECT_EQ(DistributedRoundTotalVariation(round), 1.0);
  round.mechanism = NoiseMechanism::kNone;
  EXPECT_EQ(DistributedRoundTotalVariation(round), 0.0);

  // Skellam follows the encoder's sampler: two PTRS draws below the table's smallest mean, far
  // coarser than the table above it, where the series' remainder fades as z^-3.
  const double smallest = 2 * TabulatedNoise::kMinTabulatedSkellamMean;
  const double ptrs = NoiseDrawTotalVariation(NoiseMechanism::kSkellam, smallest * 0.99);
  EXPECT_NEAR(ptrs, 2 * (5 * std::sqrt(smallest * 0.99 / 2) * 0x1.0p-53 + 0x1.0p-39), 1e-20);
  EXPECT_LT(NoiseDrawTotalVariation(NoiseMechanism::kSkellam, smallest), 1e-11);
  EXPECT_LT(NoiseDrawTotalVariation(NoiseMechanism::kSkellam, 2.0e16), 0x1.0p-100);
}

TEST(DistributedAccountingTest, ACentralRoundIsTheDiscreteGaussiansOwnBound) {
  // One discrete Gaussian of standard deviation z·C·γ on the whole sum: without sampling,
  // α·Δ²/(2σ²) with Δ the rounded sensitivity, exactly (KLS21 with one share has no τ); and
  // one noise draw per value to charge.
  RingEncoding encoding;
  encoding.clip_norm = 2.0;
  encoding.scale = 1.0e6;
  encoding.rounding_beta = std::exp(-0.5);
  const int64_t dimension = 1 << 16;
  const DistributedRound round = CentralRoundFor(encoding, dimension, 1.0, 0.8);
  const double sigma = 0.8 * 2.0 * 1.0e6;
  const double sensitivity = RoundedNormBound(2.0e6, dimension, std::exp(-0.5));
  EXPECT_DOUBLE_EQ(round.local_noise_variance, sigma * sigma);
  EXPECT_EQ(round.survivors, 1);
  EXPECT_DOUBLE_EQ(round.l2_sensitivity, sensitivity);
  auto rdp = DistributedRoundRdp(round, kIntegerOrders);
  ASSERT_TRUE(rdp.ok()) << rdp.status();
  for (size_t i = 0; i < kIntegerOrders.size(); ++i) {
    const double closed_form = kIntegerOrders[i] * sensitivity * sensitivity / (2 * sigma * sigma);
    EXPECT_NEAR((*rdp)[i], closed_form, 1e-12 * closed_form) << "alpha=" << kIntegerOrders[i];
  }
  EXPECT_DOUBLE_EQ(DistributedRoundTotalVariation(round),
                   static_cast<double>(dimension) * TabulatedNoise::kDrawTotalVariation);
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
