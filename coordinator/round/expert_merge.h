// The coordinator's side of DESIGN §4: from the decoded sum of the survivors' update vectors to
// the change applied to the global model.
//
// A routed expert's merged update is Σ_u w_ue·Δ_ue / Σ_u w_ue (clients already scaled their
// block by w_ue, so the sum holds the numerator). Clients clip Δ to C_Δ before that weighting
// and send w outside any clipping, so the quotient is a weighted mean of clipped deltas and its
// norm is at most C_Δ. An expert whose summed weight is below the floor is left as it was:
// nobody used it, or only noise says anybody did. The floor is the configured w_min, raised to
// two standard deviations of the noise in a summed weight, so no divisor is one that noise
// could have made (dividing noise by near-zero was what ruined noised federations). Routers,
// shared experts and any other trainable tensor take the mean over the survivors. The summed
// weights and routing histogram give the federation's expert load, never one client's.
#ifndef FEDMOE_COORDINATOR_ROUND_EXPERT_MERGE_H_
#define FEDMOE_COORDINATOR_ROUND_EXPERT_MERGE_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/round/global_model.h"
#include "coordinator/round/round_policy.h"
#include "fedmoe/v1/federation.pb.h"

namespace fedmoe::coordinator {

struct MergedUpdate {
  // One value per Δ value of the spec, in its order: the merged change before the server
  // optimizer.
  std::vector<float> delta;
  // Σ_u w_ue per [layer][expert], and the summed routing histogram in token slots.
  std::vector<std::vector<double>> expert_weight_sums;
  std::vector<std::vector<double>> expert_token_slots;
  // Per spec tensor: true for an unused expert's tensors, which no optimizer touches.
  std::vector<bool> untouched;
  int64_t experts_merged = 0;
  int64_t experts_untouched = 0;
  // The floor the merge applied (ExpertWeightFloor).
  double expert_weight_floor = 0;
};

// The summed expert weight below which an expert is left as it was: max(w_min, 2·σ_w), where
// σ_w = sum_noise_stddev / expert_weights_scale is the noise's standard deviation in a summed
// weight. An expert nobody used shows a noised weight above the floor with probability 2.3%.
double ExpertWeightFloor(const v1::UpdateLayout& layout, double configured_floor,
                         double sum_noise_stddev);

// `decoded` has spec.layout().plain_values() values (RingEncoder::DecodeSum of the sum);
// `sum_noise_stddev` is the standard deviation of the DP noise in each decoded value (0 without
// noise). Without noise, every merged tensor's change has L2 norm at most delta_clip_norm.
absl::StatusOr<MergedUpdate> MergeUpdate(std::span<const double> decoded,
                                         const v1::UpdateSpec& spec, int64_t survivors,
                                         double expert_weight_floor, double sum_noise_stddev);

// The largest L2 norm of any spec tensor's change from `before` to `after`: how far a round
// moved the model, at most η·delta_clip_norm without noise. Tensors the models lack count 0.
double LargestTensorChange(const v1::UpdateSpec& spec, const GlobalModel& before,
                           const GlobalModel& after);

// FedAvg (θ += η·Δ) or FedAdam (Reddi et al. 2021: Δ as the pseudo-gradient, θ += η·m/(√v+τ)),
// applied to the spec's tensors of the global model. FedAdam's moments persist with each
// published version (ModelRepository).
class ServerOptimizer {
 public:
  explicit ServerOptimizer(RoundPolicy policy) : policy_(std::move(policy)) {}

  // Replaces the moments (after a restart); ignored unless their length matches the next Δ.
  void RestoreMoments(std::vector<float> first, std::vector<float> second);
  absl::Status Apply(const v1::UpdateSpec& spec, const MergedUpdate& update, GlobalModel& global);

  bool adaptive() const { return policy_.server_optimizer == ServerOptimizerKind::kFedAdam; }
  const std::vector<float>& first_moment() const { return first_; }
  const std::vector<float>& second_moment() const { return second_; }

 private:
  RoundPolicy policy_;
  std::vector<float> first_;
  std::vector<float> second_;
};

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_ROUND_EXPERT_MERGE_H_
