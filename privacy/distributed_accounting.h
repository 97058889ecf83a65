// RDP of a round of distributed DP: each surviving client adds integer noise (discrete
// Gaussian or Skellam) to its scaled, rounded update, and only the sum is decoded.
//
// What is accounted is the noise actually present: the survivors' shares, not the planned
// cohort's, so a round with dropouts costs more. The per-round RDP without sampling is
// Kairouz, Liu, Steinke (2021), Prop. 14, for the sum of discrete Gaussians, and Agarwal,
// Kairouz, Liu (2021) for the Skellam sum; Poisson sampling of the cohort is then accounted
// with the general amplification bound of Zhu and Wang (2019), Thm. 5, at integer orders (a
// fractional order takes its ceiling's value, which is an upper bound since RDP grows with
// the order).
#ifndef FEDMOE_PRIVACY_DISTRIBUTED_ACCOUNTING_H_
#define FEDMOE_PRIVACY_DISTRIBUTED_ACCOUNTING_H_

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "privacy/noise.h"
#include "privacy/ring_encoder.h"

namespace fedmoe::privacy {

// KLS21 Prop. 14 holds for shares of standard deviation at least 1/2. Discrete Gaussian shares
// of less variance are priced as one share alone, a bound that holds for any σ and also caps
// the proposition's where it is tighter (distributed_accounting.cc says why).
inline constexpr double kSmallestProvenShareVariance = 0.25;

struct DistributedRound {
  NoiseMechanism mechanism = NoiseMechanism::kDiscreteGaussian;
  // Poisson sampling rate of the cohort.
  double sampling_rate = 1.0;
  // Variance of each client's noise share, in scaled (integer) units.
  double local_noise_variance = 0.0;
  // Clients whose noise share is in the decoded sum.
  int64_t survivors = 0;
  // L2 norm bound of one client's scaled, rounded contribution (RoundedNormBound(γC, d, β)).
  double l2_sensitivity = 0.0;
  // Length of the encoded vector (the rotation's padded dimension).
  int64_t dimension = 0;
};

// The round that `survivors` clients encoding with `encoding` make, as the accountant prices
// it: their noise shares, and the sensitivity RoundedNormBound(γC, d, β) of the encoded
// dimension d.
DistributedRound DistributedRoundFor(const RingEncoding& encoding, int64_t encoded_dimension,
                                     double sampling_rate, int64_t survivors);

// A central round as the accountant prices it: the coordinator's one discrete Gaussian draw of
// variance (z·C·γ)² per coordinate of the survivors' sum (RingEncoder::AddCentralNoise), with
// the same sensitivity as a distributed round. That is a distributed round of one noise share
// holding the whole variance, for which KLS21's bound is the discrete Gaussian's own (τ = 0):
// α·Δ²/(2σ²), amplified by sampling with the same general bound.
DistributedRound CentralRoundFor(const RingEncoding& encoding, int64_t encoded_dimension,
                                 double sampling_rate, double noise_multiplier);

// RDP of one such round at each order.
absl::StatusOr<std::vector<double>> DistributedRoundRdp(const DistributedRound& round,
                                                        std::span<const double> orders);

// How far, in total variation, the survivors' noise can be from the noise DistributedRoundRdp
// prices: survivors · dimension draws, each within NoiseDrawTotalVariation (at most 1).
double DistributedRoundTotalVariation(const DistributedRound& round);

// The noise multiplier of a continuous Gaussian with the same total variance, for the ledger's
// effective_noise_multiplier: √(survivors · local variance) / L2 sensitivity.
double EffectiveNoiseMultiplier(const DistributedRound& round);

// Zhu and Wang (2019), Thm. 5: RDP at integer order α ≥ 2 of a mechanism with RDP curve
// `rdp_at` (defined on integers ≥ 2) under Poisson sampling at rate q.
double PoissonSubsampledRdpBound(int alpha, double sampling_rate,
                                 const std::function<double(int)>& rdp_at);

}  // namespace fedmoe::privacy

#endif  // FEDMOE_PRIVACY_DISTRIBUTED_ACCOUNTING_H_
