// The client's side of DESIGN §4: from the global model and the locally trained replica to the
// plain update vector the round's spec describes, and the ring encoding it is sent in.
//
//   [ Δ of the spec's tensors, each routed expert's block × w_e | w · expert_weights_scale |
//     routing histogram / histogram_scale ]
//
// w_e is the fraction of this client's routed token slots in a layer that went to expert e.
#ifndef FEDMOE_CLIENT_UPDATE_H_
#define FEDMOE_CLIENT_UPDATE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "fedmoe/v1/federation.pb.h"
#include "model/backward.h"
#include "model/parameters.h"
#include "model/trainer.h"
#include "privacy/ring_encoder.h"

namespace fedmoe::client {

// `expert_slots` is TrainResult::expert_slots. InvalidArgument when the spec names a tensor the
// models lack or with another shape, or its layout disagrees with the tensors.
absl::StatusOr<std::vector<float>> BuildPlainUpdate(
    const model::ModelParameters& global, const model::ModelParameters& local,
    const std::vector<std::vector<int64_t>>& expert_slots, const v1::UpdateSpec& spec);

// The trainable set that trains exactly the spec's tensor roles.
model::TrainableSet TrainableFromSpec(const model::ModelLayout& layout, const v1::UpdateSpec& spec);

// Local training options from the spec's LocalTrainingConfig; the seed is mixed with
// `client_seed` so that clients draw different batches.
model::TrainOptions TrainOptionsFromSpec(const model::ModelLayout& layout,
                                         const v1::UpdateSpec& spec, uint64_t client_seed);

// The ring encoding the spec describes (clip, rotation, scale, rounding, this client's noise).
privacy::RingEncoding EncodingFromSpec(const v1::UpdateSpec& spec, int ring_bits);

}  // namespace fedmoe::client

#endif  // FEDMOE_CLIENT_UPDATE_H_
