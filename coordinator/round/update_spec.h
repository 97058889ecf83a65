// What a round asks of its clients (DESIGN §3.1, §4): the trainable tensors in canonical order,
// the layout of the update vector, and its clipping, scaling and noise, fixed when the cohort
// is selected and identical for every participant.
#ifndef FEDMOE_COORDINATOR_ROUND_UPDATE_SPEC_H_
#define FEDMOE_COORDINATOR_ROUND_UPDATE_SPEC_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "coordinator/round/global_model.h"
#include "coordinator/round/round_policy.h"
#include "fedmoe/v1/federation.pb.h"
#include "privacy/ring_encoder.h"

namespace fedmoe::coordinator {

// γ: the largest scale at which the ring sum of `clients` encoded updates (each of L2 norm
// `clip_norm` before scaling) plus the noise of multiplier z still stays inside
// (−2^(b−1), 2^(b−1)) with overwhelming probability: nine standard deviations of the
// per-coordinate sum (signal in the worst, aligned case n·C/√R, R the rotation block of
// `encoded_values` values, noise z·C, rounding √n/2); and no more than the clients' encoders
// take (RingEncoder::LargestScaledNorm).
double ChooseScale(int64_t ring_bits, int64_t clients, int64_t encoded_values, double clip_norm,
                   double noise_multiplier);

// The ring encoding of a round of `clients` with this policy and encoded length (an
// EncodedLength): its rotation block, γ from ChooseScale and, in distributed DP, each client's
// share of the noise z·C·γ.
privacy::RingEncoding PlanEncoding(const RoundPolicy& policy, int64_t clients,
                                   int64_t encoded_values, const std::string& rotation_seed);

struct PlannedUpdate {
  v1::UpdateSpec spec;
  // The ring encoding the spec's PrivacySpec describes: what the coordinator decodes and
  // accounts with. Clients read the same encoding back from the spec (client/update.h).
  privacy::RingEncoding encoding;
};

// The update spec of a round with `clients` participants on `global` (published as `base`).
// `rotation_seed` is 32 fresh public bytes.
absl::StatusOr<PlannedUpdate> BuildUpdateSpec(const GlobalModel& global, const RoundPolicy& policy,
                                              const v1::ModelManifest& base, int64_t clients,
                                              const std::string& rotation_seed);

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_ROUND_UPDATE_SPEC_H_
