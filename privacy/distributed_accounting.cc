#include "privacy/distributed_accounting.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "privacy/log_space.h"

namespace fedmoe::privacy {
namespace {

constexpr double kInfinity = std::numeric_limits<double>::infinity();

// KLS21 Prop. 14 for the sum of `survivors` discrete Gaussians of variance σ² each: the sum is
// close to, but not exactly, a discrete Gaussian; τ measures the gap. The proposition assumes
// σ ≥ 1/2. A second bound holds for every σ: the sum is the sensitive sum plus one client's
// discrete Gaussian, with the other shares added afterwards, which is post-processing; and a
// discrete Gaussian of any σ has the Gaussian's RDP α·Δ²/(2σ²) (Canonne, Kamath, Steinke
// 2020). The round is charged the smaller of the two where both hold, and the one-share bound
// alone below σ = 1/2: sound, and dear, so small shares are charged dearly rather than wrongly.
double DistributedDiscreteGaussianRdp(const DistributedRound& round, double alpha) {
  const double sigma_squared = round.local_noise_variance;
  const double one_share =
      alpha * round.l2_sensitivity * round.l2_sensitivity / (2.0 * sigma_squared);
  if (sigma_squared < kSmallestProvenShareVariance) return one_share;
  double tau = 0;
  for (int64_t k = 1; k < round.survivors; ++k) {
    const auto kd = static_cast<double>(k);
    tau += std::exp(-2.0 * M_PI * M_PI * sigma_squared * kd / (kd + 1.0));
  }
  tau *= 10.0;
  const auto d = static_cast<double>(round.dimension);
  const double total_sd = std::sqrt(static_cast<double>(round.survivors) * sigma_squared);
  const double l2 = round.l2_sensitivity / total_sd;
  // Integer vectors have ‖x‖₁ ≤ min(√d·‖x‖₂, ‖x‖₂²).
  const double l1 = round.l2_sensitivity * std::min(std::sqrt(d), round.l2_sensitivity) / total_sd;
  const double first = alpha / 2.0 * l2 * l2 + tau * d;
  const double second = alpha / 2.0 * (l2 * l2 + 2.0 * l1 * tau + tau * tau * d);
  const double third = alpha / 2.0 * std::pow(l2 + std::sqrt(d) * tau, 2);
  return std::min({first, second, third, one_share});
}

// AKL21 for Skellam noise of total variance V = survivors · local variance, in integer units.
double DistributedSkellamRdp(const DistributedRound& round, double alpha) {
  const double variance = static_cast<double>(round.survivors) * round.local_noise_variance;
  const auto d = static_cast<double>(round.dimension);
  const double l2 = round.l2_sensitivity;
  const double l1 = l2 * std::min(std::sqrt(d), l2);
  return alpha * l2 * l2 / (2.0 * variance) +
         std::min(((2.0 * alpha - 1.0) * l2 * l2 + 6.0 * l1) / (4.0 * variance * variance),
                  3.0 * l1 / (2.0 * variance));
}

}  // namespace

double PoissonSubsampledRdpBound(int alpha, double sampling_rate,
                                 const std::function<double(int)>& rdp_at) {
  const double q = sampling_rate;
  if (q >= 1.0) return rdp_at(alpha);
  const double log_q = std::log(q);
  const double log_1mq = std::log1p(-q);
  // (1-q)^(α-1)·(αq - q + 1)
  double log_sum = (alpha - 1) * log_1mq + std::log(alpha * q - q + 1.0);
  // C(α,2)·q²·(1-q)^(α-2)·e^(ε(2))
  log_sum = LogAdd(log_sum, LogBinomial(alpha, 2) + 2 * log_q + (alpha - 2) * log_1mq + rdp_at(2));
  // 3·Σ_{l≥3} C(α,l)·q^l·(1-q)^(α-l)·e^((l-1)·ε(l))
  for (int l = 3; l <= alpha; ++l) {
    log_sum = LogAdd(log_sum, std::log(3.0) + LogBinomial(alpha, l) + l * log_q +
                                  (alpha - l) * log_1mq + (l - 1) * rdp_at(l));
  }
  return std::min(log_sum / (alpha - 1), rdp_at(alpha));
}

double DistributedRoundTotalVariation(const DistributedRound& round) {
  const double draws = static_cast<double>(std::max<int64_t>(round.survivors, 0)) *
                       static_cast<double>(std::max<int64_t>(round.dimension, 0));
  return std::min(1.0,
                  draws * NoiseDrawTotalVariation(round.mechanism, round.local_noise_variance));
}

double EffectiveNoiseMultiplier(const DistributedRound& round) {
  if (round.l2_sensitivity <= 0) return kInfinity;
  return std::sqrt(static_cast<double>(round.survivors) * round.local_noise_variance) /
         round.l2_sensitivity;
}

DistributedRound DistributedRoundFor(const RingEncoding& encoding, int64_t encoded_dimension,
                                     double sampling_rate, int64_t survivors) {
  DistributedRound round;
  round.mechanism = encoding.mechanism;
  round.sampling_rate = sampling_rate;
  round.local_noise_variance = encoding.local_noise_variance;
  round.survivors = survivors;
  round.dimension = encoded_dimension;
  round.l2_sensitivity =
      RoundedNormBound(encoding.scale * encoding.clip_norm, static_cast<size_t>(encoded_dimension),
                       encoding.rounding_beta);
  return round;
}

DistributedRound CentralRoundFor(const RingEncoding& encoding, int64_t encoded_dimension,
                                 double sampling_rate, double noise_multiplier) {
  DistributedRound round = DistributedRoundFor(encoding, encoded_dimension, sampling_rate, 1);
  round.mechanism = NoiseMechanism::kDiscreteGaussian;
  const double sigma = noise_multiplier * encoding.clip_norm * encoding.scale;
  round.local_noise_variance = sigma * sigma;
  return round;
}

absl::StatusOr<std::vector<double>> DistributedRoundRdp(const DistributedRound& round,
                                                        std::span<const double> orders) {
  if (round.mechanism == NoiseMechanism::kNone) {
    return absl::InvalidArgumentError("a round without noise has no finite privacy cost");
  }
  if (!(round.sampling_rate > 0.0 && round.sampling_rate <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling rate q must be in (0, 1], not ", round.sampling_rate));
  }
  if (round.survivors < 1 || round.dimension < 1 || !(round.local_noise_variance > 0) ||
      !(round.l2_sensitivity > 0)) {
    return absl::InvalidArgumentError(
        "a distributed round needs survivors, a dimension, a noise variance and a sensitivity "
        "above 0");
  }
  auto rdp_at = [&](int alpha) {
    const double a = alpha;
    return round.mechanism == NoiseMechanism::kSkellam ? DistributedSkellamRdp(round, a)
                                                       : DistributedDiscreteGaussianRdp(round, a);
  };
  std::vector<double> rdp;
  rdp.reserve(orders.size());
  for (double order : orders) {
    if (!(order > 1.0) || order > 100000) {
      return absl::InvalidArgumentError(absl::StrCat("RDP order must be in (1, 1e5], not ", order));
    }
    const int alpha = std::max(2, static_cast<int>(std::ceil(order)));
    rdp.push_back(PoissonSubsampledRdpBound(alpha, round.sampling_rate, rdp_at));
  }
  return rdp;
}

}  // namespace fedmoe::privacy
