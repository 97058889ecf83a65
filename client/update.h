// The client's side of DESIGN §4: from the global model and the locally trained replica to the
// plain update vector the round's spec describes, and the ring encoding it is sent in.
//
//   [ clip(Δ of the spec's tensors, C_Δ), each routed expert's block × w_e |
//     w · expert_weights_scale | clip(routing histogram / histogram_scale) ]
//
// w_e is the fraction of this client's routed token slots in a layer that went to expert e.
#ifndef FEDMOE_CLIENT_UPDATE_H_
#define FEDMOE_CLIENT_UPDATE_H_

#include <cstdint>
#include <filesystem>
#include <vector>

#include "absl/status/statusor.h"
#include "fedmoe/v1/federation.pb.h"
#include "model/backward.h"
#include "model/frozen_base.h"
#include "model/lora.h"
#include "model/parameters.h"
#include "model/trainer.h"
#include "privacy/ring_encoder.h"

namespace fedmoe::client {

struct PlainUpdate {
  // plain_values() values, with L2 norm at most the spec's clip norm C.
  std::vector<float> values;
  // ‖Δ‖ before it was clipped to the layout's delta_clip_norm; stays on the site (its log).
  double delta_norm = 0;
};

// `expert_slots` is TrainResult::expert_slots. Δ is clipped to delta_clip_norm before each
// routed block is scaled by w_e, and the histogram to histogram_norm_bound, so every part keeps
// its own bound and the whole vector is within C by construction. InvalidArgument when the spec
// names a tensor the models lack or with another shape, its layout disagrees with the tensors,
// or its norm bounds do not fold into the clip norm.
absl::StatusOr<PlainUpdate> BuildPlainUpdate(const model::ModelParameters& global,
                                             const model::ModelParameters& local,
                                             const std::vector<std::vector<int64_t>>& expert_slots,
                                             const v1::UpdateSpec& spec);
// The same for a round of adapters (spec.adapters()): Δ of the spec's lora_B matrices and
// routers, from the global adapter version to the locally trained adapters.
absl::StatusOr<PlainUpdate> BuildPlainUpdate(const model::LoraAdapters& global,
                                             const model::LoraAdapters& local,
                                             const std::vector<std::vector<int64_t>>& expert_slots,
                                             const v1::UpdateSpec& spec);

// BuildPlainUpdate for a round that trained `local`, the global model or a personal model with
// private experts (model/personal.h). For a personal model it reads only the global part and
// the slots routed to global experts, so nothing of the private experts or their router rows
// can reach the update, and the update has the global model's layout whatever their number.
absl::StatusOr<PlainUpdate> BuildUpdateFromTrained(
    const model::ModelParameters& global, const model::ModelParameters& local,
    const std::vector<std::vector<int64_t>>& expert_slots, const v1::UpdateSpec& spec);

// The global adapters of a round of adapters (spec.adapters()) over `base`, read from the
// downloaded version `directory`. FailedPrecondition unless they are the spec's (rank, α,
// targets, seed) and every A is exactly the draw of the spec's seed: FFA-LoRA's average is exact
// only when every site holds that A, so a site draws it itself rather than trust the file.
absl::StatusOr<model::LoraAdapters> AdaptersFromSpec(const model::FrozenBase& base,
                                                     const v1::AdapterSpec& adapters,
                                                     const std::filesystem::path& directory);

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
