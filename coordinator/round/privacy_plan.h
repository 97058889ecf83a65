// What rounds cost in privacy, priced as the ledger prices them: for the round engine, and for
// planning a federation before any round runs (`privacy epsilon --mode distributed|central`).
#ifndef FEDMOE_COORDINATOR_ROUND_PRIVACY_PLAN_H_
#define FEDMOE_COORDINATOR_ROUND_PRIVACY_PLAN_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "coordinator/round/round_policy.h"
#include "fedmoe/v1/federation.pb.h"
#include "privacy/distributed_accounting.h"
#include "privacy/rdp_accountant.h"
#include "privacy/ring_encoder.h"

namespace fedmoe::coordinator {

// A round as the accountant prices it: in distributed DP the survivors' noise shares, each of
// the encoding's local variance; in central DP the coordinator's one draw of σ = z·C·γ. None
// without noise (MODE_NONE).
std::optional<privacy::DistributedRound> PriceRound(v1::PrivacySpec::Mode mode,
                                                    const privacy::RingEncoding& encoding,
                                                    int64_t encoded_values, double sampling_rate,
                                                    double noise_multiplier, int64_t survivors);

// The standard deviation of the noise in each value of the decoded sum, in update units: the
// priced round's total noise, √(survivors · local variance), divided by the encoding's γ. 0
// without noise. What the expert merge's floor is measured against.
double DecodedNoiseStddev(const std::optional<privacy::DistributedRound>& priced,
                          const privacy::RingEncoding& encoding);

// ε at the policy's δ after `rounds` rounds of `clients` clients who all survive, with updates
// `encoded_values` long (an EncodedLength), in the policy's mode, mechanism, ring and noise:
// what the ledger will say, its samplers' charge included, if every round goes as planned.
// Dropouts cost more.
absl::StatusOr<privacy::PrivacyLoss> PlannedEpsilon(const RoundPolicy& policy, int64_t clients,
                                                    int64_t encoded_values, int64_t rounds);

// The smallest noise multiplier (to a relative 1e-6) whose PlannedEpsilon is at most
// `target_epsilon`; the policy's own noise multiplier is ignored.
absl::StatusOr<double> PlannedNoiseMultiplier(const RoundPolicy& policy, double target_epsilon,
                                              int64_t clients, int64_t encoded_values,
                                              int64_t rounds);

// How much of a merged round is signal: the largest change the merge can take (every client's
// clipped update pointing the same way, norm C after the mean) against the client-level
// noise's norm after the mean (z·C per value of the sum, over `values` values, divided by the
// `clients` averaged): clients / (z·√values). +∞ without noise.
double MergedSignalToNoise(double noise_multiplier, int64_t clients, int64_t values);

// Below this, even a unanimous federation's round is less than a tenth of its noise, and the
// model is expected to get worse (the quickstart's z = 0.3 and z = 1.0 drove it below uniform
// guessing): --check-config and every round start say so in one line.
inline constexpr double kLowSignalToNoise = 0.1;

// That line, for `clients` per round and `values` trained values, or empty when the ratio is
// at least kLowSignalToNoise or the policy adds no noise.
std::string NoiseWarning(const RoundPolicy& policy, int64_t clients, int64_t values);

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_ROUND_PRIVACY_PLAN_H_
