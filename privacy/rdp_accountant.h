// Rényi-DP accounting for the federation's privacy ledger (DESIGN §5).
//
// A round that samples each client independently with probability q (Poisson sampling) and
// adds Gaussian noise of standard deviation z·C to a sum of updates clipped to L2 norm C is the
// Poisson-subsampled Gaussian mechanism with noise multiplier z. Its RDP at order α is computed
// exactly as Mironov, Talwar and Zhang (2019) give it: a finite binomial sum for integer α, and
// two converging series for fractional α. Rounds compose by adding RDP order by order, with
// different (q, z) per round if need be, and the total converts to (ε, δ) with the conversion of
// Canonne, Kamath and Steinke (2020) / Balle et al. (2020), minimised over the orders.
#ifndef FEDMOE_PRIVACY_RDP_ACCOUNTANT_H_
#define FEDMOE_PRIVACY_RDP_ACCOUNTANT_H_

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace fedmoe::privacy {

// The orders α the ledger tracks: dense at small α, where the optimum lies for large ε, and
// up to 512 for small ε and many rounds.
const std::vector<double>& DefaultRdpOrders();

// RDP of one Poisson-subsampled Gaussian step at order α > 1. q in [0, 1]; noise multiplier
// z ≥ 0 (z = 0 gives +∞ unless q = 0). InvalidArgument for arguments outside those ranges.
absl::StatusOr<double> SubsampledGaussianRdp(double sampling_rate, double noise_multiplier,
                                             double order);

struct PrivacyLoss {
  double epsilon;
  // The order at which the conversion attained epsilon.
  double order;
};

// The (ε, δ) guarantee implied by RDP values rdp[i] at orders[i], minimised over the orders.
//
// `sampler_total_variation` η bounds how far the noise actually drawn is, in total variation,
// from the noise the RDP prices (finite-precision samplers; see NoiseDrawTotalVariation). A
// mechanism within η of an (ε, δ₀)-DP one is (ε, δ₀ + (1 + e^ε)·η)-DP, since every event's
// probability moves by at most η on each side of the DP inequality. The ε returned is the
// smallest, over the orders, with δ₀(ε) + (1 + e^ε)·η ≤ δ; +∞ when none is.
absl::StatusOr<PrivacyLoss> RdpToEpsilon(std::span<const double> orders,
                                         std::span<const double> rdp, double delta,
                                         double sampler_total_variation = 0.0);

// Why RdpToEpsilon(orders, rdp, delta, sampler_total_variation) is +∞, in one line: no noise
// at all (every order infinite), or, since any finite order converts to a finite ε, the
// samplers' charge (1 + e^ε)·η taking all of δ at the ε the noise alone gives. Empty when ε is
// finite.
std::string ExplainInfiniteEpsilon(std::span<const double> orders, std::span<const double> rdp,
                                   double delta, double sampler_total_variation);

// Accumulates rounds. Copyable value type; the ledger stores orders() and rdp().
class RdpAccountant {
 public:
  explicit RdpAccountant(std::vector<double> orders = DefaultRdpOrders());

  // Adds `rounds` rounds of the Poisson-subsampled Gaussian with these parameters.
  absl::Status AddSubsampledGaussian(double sampling_rate, double noise_multiplier,
                                     int64_t rounds = 1);
  // Adds RDP computed elsewhere (one value per order), e.g. for distributed mechanisms.
  absl::Status AddRdp(std::span<const double> rdp);
  // Adds a round's bound on the total variation between the noise drawn and the noise priced
  // (DistributedRoundTotalVariation). Bounds of independent rounds add.
  absl::Status AddSamplerTotalVariation(double total_variation);

  absl::StatusOr<PrivacyLoss> Epsilon(double delta) const;
  const std::vector<double>& orders() const { return orders_; }
  const std::vector<double>& rdp() const { return rdp_; }
  double sampler_total_variation() const { return sampler_total_variation_; }

 private:
  std::vector<double> orders_;
  std::vector<double> rdp_;
  double sampler_total_variation_ = 0.0;
};

// The smallest noise multiplier (to a relative 1e-6) whose ε after `rounds` rounds at rate q
// is at most `target_epsilon` at δ.
absl::StatusOr<double> NoiseMultiplierForEpsilon(double target_epsilon, double sampling_rate,
                                                 int64_t rounds, double delta);

// The same search for any ε that falls as the noise multiplier z grows: the smallest z (to a
// relative 1e-6, up to 1e6) with epsilon_at(z) ≤ target_epsilon.
absl::StatusOr<double> SmallestNoiseMultiplier(
    double target_epsilon, const std::function<absl::StatusOr<double>(double)>& epsilon_at);

// Poisson sampling at rate q over a population of n, where a cohort whose size falls outside
// [min_size, max_size] is discarded and drawn again: the probability that a given member is in
// the cohort that is kept,
//   q·P[Bin(n − 1, q) ∈ [min_size − 1, max_size − 1]] / P[Bin(n, q) ∈ [min_size, max_size]].
// With the population public and a member's data present or zeroed out as the neighbouring
// relation, the member's presence moves neither the draw nor the others' law, so the round is
// exactly the Poisson-subsampled Gaussian at this rate, which can be above q (min_size binding)
// or below it (max_size binding). InvalidArgument when no kept cohort is possible.
absl::StatusOr<double> ConditionedSamplingRate(int64_t population, double sampling_rate,
                                               int64_t min_size, int64_t max_size);

// Checks the arguments of an (ε, δ) question, with a message naming the bad one.
absl::Status ValidatePrivacyArguments(double sampling_rate, int64_t rounds, double delta);

}  // namespace fedmoe::privacy

#endif  // FEDMOE_PRIVACY_RDP_ACCOUNTANT_H_
