#include "coordinator/round/privacy_plan.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "coordinator/round/update_spec.h"
#include "privacy/hadamard.h"

namespace fedmoe::coordinator {

std::optional<privacy::DistributedRound> PriceRound(v1::PrivacySpec::Mode mode,
                                                    const privacy::RingEncoding& encoding,
                                                    int64_t encoded_values, double sampling_rate,
                                                    double noise_multiplier, int64_t survivors) {
  switch (mode) {
    case v1::PrivacySpec::MODE_CENTRAL:
      return privacy::CentralRoundFor(encoding, encoded_values, sampling_rate, noise_multiplier);
    case v1::PrivacySpec::MODE_DISTRIBUTED:
      return privacy::DistributedRoundFor(encoding, encoded_values, sampling_rate, survivors);
    default:
      return std::nullopt;
  }
}

double DecodedNoiseStddev(const std::optional<privacy::DistributedRound>& priced,
                          const privacy::RingEncoding& encoding) {
  if (!priced.has_value()) return 0.0;
  return std::sqrt(static_cast<double>(priced->survivors) * priced->local_noise_variance) /
         encoding.scale;
}

absl::StatusOr<privacy::PrivacyLoss> PlannedEpsilon(const RoundPolicy& policy, int64_t clients,
                                                    int64_t encoded_values, int64_t rounds) {
  if (absl::Status status =
          privacy::ValidatePrivacyArguments(policy.sampling_rate, rounds, policy.delta);
      !status.ok()) {
    return status;
  }
  if (clients < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("a round needs at least 2 clients, not ", clients));
  }
  if (encoded_values < 1 || privacy::EncodedLength(static_cast<size_t>(encoded_values)) !=
                                static_cast<size_t>(encoded_values)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the encoded length must be one an update is padded to (a power of two up to 2^20, a "
        "multiple of its rotation block beyond), not ",
        encoded_values));
  }
  if (!(policy.noise_multiplier > 0)) {
    return absl::InvalidArgumentError("without noise, epsilon is infinite");
  }
  // The rotation seed is public and does not change the price.
  const privacy::RingEncoding encoding =
      PlanEncoding(policy, clients, encoded_values, std::string(32, '\0'));
  const std::optional<privacy::DistributedRound> round =
      PriceRound(policy.privacy_mode, encoding, encoded_values, policy.sampling_rate,
                 policy.noise_multiplier, clients);
  if (!round.has_value()) {
    return absl::InvalidArgumentError("privacy mode none adds no noise: epsilon is infinite");
  }
  privacy::RdpAccountant accountant;
  absl::StatusOr<std::vector<double>> rdp =
      privacy::DistributedRoundRdp(*round, accountant.orders());
  if (!rdp.ok()) return rdp.status();
  for (double& value : *rdp) value *= static_cast<double>(rounds);
  if (absl::Status status = accountant.AddRdp(*rdp); !status.ok()) return status;
  const double charge =
      std::min(1.0, privacy::DistributedRoundTotalVariation(*round) * static_cast<double>(rounds));
  if (absl::Status status = accountant.AddSamplerTotalVariation(charge); !status.ok()) {
    return status;
  }
  return accountant.Epsilon(policy.delta);
}

double MergedSignalToNoise(double noise_multiplier, int64_t clients, int64_t values) {
  if (!(noise_multiplier > 0)) return std::numeric_limits<double>::infinity();
  return static_cast<double>(clients) /
         (noise_multiplier * std::sqrt(static_cast<double>(std::max<int64_t>(values, 1))));
}

std::string NoiseWarning(const RoundPolicy& policy, int64_t clients, int64_t values) {
  if (policy.privacy_mode == v1::PrivacySpec::MODE_NONE) return "";
  const double ratio = MergedSignalToNoise(policy.noise_multiplier, clients, values);
  if (ratio >= kLowSignalToNoise) return "";
  return absl::StrCat("client-level noise will drown the model: with z = ", policy.noise_multiplier,
                      ", ", clients, " clients per round and ", values,
                      " trained values, the merged update's noise norm is ",
                      absl::StrFormat("%.3g", 1 / ratio),
                      " times the largest change the clients can make together (signal to noise ",
                      absl::StrFormat("%.3g", ratio), ", below ", kLowSignalToNoise,
                      "); more clients per round, fewer trained values or a smaller z raise it");
}

absl::StatusOr<double> PlannedNoiseMultiplier(const RoundPolicy& policy, double target_epsilon,
                                              int64_t clients, int64_t encoded_values,
                                              int64_t rounds) {
  return privacy::SmallestNoiseMultiplier(target_epsilon, [&](double z) -> absl::StatusOr<double> {
    RoundPolicy trial = policy;
    trial.noise_multiplier = z;
    absl::StatusOr<privacy::PrivacyLoss> loss =
        PlannedEpsilon(trial, clients, encoded_values, rounds);
    if (!loss.ok()) return loss.status();
    return loss->epsilon;
  });
}

}  // namespace fedmoe::coordinator
