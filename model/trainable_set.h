// Which of a model's tensors train, and the stretches of the parameter buffer that does: what the
// optimizer steps, the gradient norm covers, the GPU's ranges hold, and a round policy names. A
// header of its own so that a round policy can name it without the backward pass.
#ifndef FEDMOE_MODEL_TRAINABLE_SET_H_
#define FEDMOE_MODEL_TRAINABLE_SET_H_

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "model/parameters.h"

namespace fedmoe::model {

// Which tensors are trained (and, in a federation, sent). The default is DESIGN §4's update
// spec: routed experts, shared experts and routers; attention, norms and embeddings frozen.
struct TrainableSet {
  bool routed_experts = true;
  bool shared_experts = true;
  bool router = true;
  bool attention = false;
  bool norms = false;
  bool embeddings = false;  // includes a tied output head
  bool output = false;
  // Above 0, only the routed experts numbered from this on and their router rows train, among
  // the roles above; every other tensor and row is held. A personal model's pass
  // (client/personal_model.h) sets it to the global experts' number, so that only the site's
  // private experts and their rows learn, over a global model held as the federation made it.
  int64_t first_trained_expert = 0;

  bool Includes(TensorRole role) const;
  // "experts,router" style lists of: routed_experts, shared_experts, experts (both), router,
  // attention, norms, embeddings, output, all.
  static absl::StatusOr<TrainableSet> Parse(std::string_view list);
};

// A stretch of the parameter buffer that trains, and whether weight decay applies to it.
struct TrainedRange {
  int64_t offset = 0;
  int64_t size = 0;
  bool decay = true;
};

// What trains of `layout` under `trainable`: whole tensors of its roles, or under
// first_trained_expert only the experts and router rows it leaves free. The optimizer, the gradient
// norm and the GPU's ranges all take it from here.
std::vector<TrainedRange> TrainedRanges(const ModelLayout& layout, const TrainableSet& trainable);

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_TRAINABLE_SET_H_
