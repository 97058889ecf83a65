// The forward and backward passes of a LoRA-adapted model over a frozen base (issue [peft]):
// forward.h's and backward.h's arithmetic, with each linear's product taken on the base's
// compact weight (frozen_base.h) plus its adapter's low-rank branch (kernels/cpu/lora.h), and
// each router read from the adapters' trained copy.
//
// The gradient is of the same loss as Backward's (next-token cross-entropy plus the balance
// term), with respect to the adapters' buffer only: every B, every A under plain LoRA (FFA-LoRA
// leaves A's gradient zero), and the routers. Nothing of the base's size is ever allocated:
// activations are the pass's own, and the base's products decode a tile at a time.
#ifndef FEDMOE_MODEL_ADAPTED_MODEL_H_
#define FEDMOE_MODEL_ADAPTED_MODEL_H_

#include <cstdint>
#include <filesystem>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cpu/aligned.h"
#include "model/backward.h"
#include "model/forward.h"
#include "model/frozen_base.h"
#include "model/lora.h"

namespace fedmoe::model {

// The low-rank branches' kept activations of one layer, s·x·Aᵀ at each adapted linear's input:
// [rows, rank] for attention and the shared experts, [rows·k, rank] for the routed experts (in
// the layer's expert-grouped slot order). Empty where the linear has no adapter.
struct LoraLayerActivations {
  AlignedFloats q_proj, k_proj, v_proj, o_proj;
  AlignedFloats expert_w1, expert_w3, expert_w2;
  AlignedFloats shared_w1, shared_w3, shared_w2;
};

struct AdaptedPass {
  // Everything forward.h keeps, in fp32.
  ForwardPass model;
  std::vector<LoraLayerActivations> lora;
};

// A's and B's as InitializeLora sets them, and each router copied from the base: the adapted
// model then computes exactly what the base does. InvalidArgument when `lora` does not validate.
absl::StatusOr<LoraAdapters> NewAdapters(const FrozenBase& base, const LoraConfig& lora);

// OK when `adapters` were laid out for a model of exactly this config; the passes, the merge and
// the adapter backend refuse others with InvalidArgument.
absl::Status CheckAdaptersFit(const MoeConfig& model, const LoraAdapters& adapters);

// Adapters with no low-rank branch at all, only the routers copied from the base: the base alone,
// run through AdaptedForward.
LoraAdapters BaseOnlyAdapters(const FrozenBase& base);

// Loads a PEFT adapter directory (peft.h) for this base; routers the directory lacks are the
// base's.
absl::StatusOr<LoraAdapters> LoadAdaptersFor(const FrozenBase& base,
                                             const std::filesystem::path& directory);

// Runs the adapted model over tokens [batch, seq_len]; errors as model::Forward's, and
// InvalidArgument when the adapters were laid out for another model config.
absl::Status AdaptedForward(const FrozenBase& base, const LoraAdapters& adapters,
                            std::span<const int32_t> tokens, int64_t batch, int64_t seq_len,
                            AdaptedPass& pass);

struct AdaptedScratch {
  BackwardScratch model;
  AlignedFloats d_low, d_expert_act;
};

// Adds the loss's gradient with respect to the adapters' buffer into `gradients` (the adapters'
// layout) and returns the loss. options.per_record is not taken yet (InvalidArgument).
absl::StatusOr<LossBreakdown> AdaptedBackward(const FrozenBase& base, const LoraAdapters& adapters,
                                              const AdaptedPass& pass,
                                              std::span<const int32_t> targets,
                                              const BackwardOptions& options,
                                              std::span<float> gradients, AdaptedScratch& scratch);

// The ranges of the adapters' buffer that train: every B and router, and every A when
// config().train_a. A frozen A takes neither a step nor weight decay.
std::vector<TrainedRange> AdapterTrainedRanges(const LoraAdapters& adapters);

// Folds each adapter into its base weight, W + s·B·A, and each trained router over the base's:
// the plain model whose logits the adapted model computes (to fp32 rounding).
// `base_parameters` must be the fp32 weights the adapters were trained over.
absl::Status MergeAdapters(const LoraAdapters& adapters, ModelParameters& base_parameters);

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_ADAPTED_MODEL_H_
