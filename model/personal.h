// A site's personal model with private experts ([personal], docs/architecture.md "Personal
// models"): the global model's tensors plus P private routed experts per MoE layer and P router
// rows of its own, as one Mixtral model of E + P experts. Experts 0..E−1 and router rows
// 0..E−1 are the global ones, under the global model's tensor names; experts E..E+P−1 are the
// site's. Being a plain Mixtral checkpoint, a personal model loads, trains and evaluates
// through every path a global one does, on the CPU and the GPU alike; these functions only
// move tensors between the two shapes.
#ifndef FEDMOE_MODEL_PERSONAL_H_
#define FEDMOE_MODEL_PERSONAL_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "model/parameters.h"

namespace fedmoe::model {

// The most private experts a site may add per layer.
inline constexpr int64_t kMaxPrivateExperts = 64;

// The global config with `private_experts` more routed experts per layer.
MoeConfig WithPrivateExperts(const MoeConfig& global, int64_t private_experts);

// The personal model for `global`: its tensors, plus the private experts and router rows of
// `previous` (a personal model of the same global shape and P) or, when it is null, fresh ones.
// A fresh private expert i starts as a copy of global expert i mod E, its router row as a copy
// of that expert's row, each with small Gaussian noise (of `seed`) so that the copies part ways
// (sparse upcycling): the site's experts start from what the federation knows rather than from
// noise. InvalidArgument when `previous` has another shape.
absl::StatusOr<ModelParameters> ComposePersonal(const ModelParameters& global,
                                                int64_t private_experts,
                                                const ModelParameters* previous, uint64_t seed);

// The global model's part of a personal one: experts 0..E−1, router rows 0..E−1 and every
// other tensor, in `global_config`'s layout. The private experts and rows are not copied, so
// nothing built from the result can carry them. InvalidArgument when `personal` is not
// global_config plus private experts.
absl::StatusOr<ModelParameters> GlobalPart(const ModelParameters& personal,
                                           const MoeConfig& global_config);

// The private experts a personal model of `global_config`'s shape has per layer, or
// InvalidArgument when it is not that shape plus private experts.
absl::StatusOr<int64_t> CountPrivateExperts(const MoeConfig& personal, const MoeConfig& global);

// Routing counts [layer][expert] cut to the first `global_experts` experts of each layer: the
// slots that went to global experts, the only ones a federated update weights by.
std::vector<std::vector<int64_t>> GlobalExpertSlots(
    const std::vector<std::vector<int64_t>>& expert_slots, int64_t global_experts);

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_PERSONAL_H_
