#include "coordinator/round/update_spec.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "privacy/hadamard.h"

namespace fedmoe::coordinator {
namespace {

// The clients' shares add up to z·C·γ over the planned cohort. The spec sends this standard
// deviation and clients square it, as the coordinator does, so both hold the same variance.
double LocalNoiseStddev(const RoundPolicy& policy, double scale, int64_t clients) {
  return policy.noise_multiplier * policy.clip_norm * scale /
         std::sqrt(static_cast<double>(clients));
}

}  // namespace

double ChooseScale(int64_t ring_bits, int64_t clients, int64_t encoded_values, double clip_norm,
                   double noise_multiplier) {
  const auto n = static_cast<double>(clients);
  // A client's energy may sit in one rotation block: its coordinates are then ‖x‖/√R.
  const auto d = static_cast<double>(privacy::RotationBlockOf(static_cast<size_t>(encoded_values)));
  const double headroom = std::ldexp(1.0, static_cast<int>(ring_bits) - 1) / 9.0 - std::sqrt(n);
  const double spread = clip_norm * std::sqrt(n * n / d + noise_multiplier * noise_multiplier);
  // Wide rings without noise would allow more than the clients' fixed-point rotation holds.
  const double largest =
      privacy::RingEncoder::LargestScaledNorm(static_cast<size_t>(encoded_values)) / clip_norm;
  return std::min(largest, std::max(1.0, headroom / spread));
}

privacy::RingEncoding PlanEncoding(const RoundPolicy& policy, int64_t clients,
                                   int64_t encoded_values, const std::string& rotation_seed) {
  const bool noisy = policy.privacy_mode != v1::PrivacySpec::MODE_NONE;
  const double z = noisy ? policy.noise_multiplier : 0.0;
  privacy::RingEncoding encoding;
  encoding.clip_norm = policy.clip_norm;
  encoding.scale = ChooseScale(policy.ring_bits, clients, encoded_values, policy.clip_norm, z);
  encoding.rounding_beta = policy.rounding_beta;
  encoding.ring_bits = static_cast<int>(policy.ring_bits);
  encoding.rotation_seed = rotation_seed;
  const size_t block = privacy::RotationBlockOf(static_cast<size_t>(encoded_values));
  encoding.rotation_block = block < static_cast<size_t>(encoded_values) ? block : 0;
  if (policy.privacy_mode == v1::PrivacySpec::MODE_DISTRIBUTED) {
    encoding.mechanism = policy.mechanism == v1::PrivacySpec::MECHANISM_SKELLAM
                             ? privacy::NoiseMechanism::kSkellam
                             : privacy::NoiseMechanism::kDiscreteGaussian;
    const double local_noise_stddev = LocalNoiseStddev(policy, encoding.scale, clients);
    encoding.local_noise_variance = local_noise_stddev * local_noise_stddev;
  }
  return encoding;
}

absl::StatusOr<PlannedUpdate> BuildUpdateSpec(const GlobalModel& global, const RoundPolicy& policy,
                                              const v1::ModelManifest& base, int64_t clients,
                                              const std::string& rotation_seed) {
  const model::MoeConfig& config = global.config();
  PlannedUpdate planned;
  v1::UpdateSpec& spec = planned.spec;
  *spec.mutable_base_model() = base;
  if (std::optional<v1::AdapterSpec> adapters = global.AdapterSpec()) {
    *spec.mutable_adapters() = *std::move(adapters);
  }
  uint64_t offset = 0;
  for (const UpdateTensor& tensor : global.UpdateTensors(policy.trainable)) {
    v1::TrainableTensor* out = spec.add_trainable_tensors();
    out->set_name(tensor.name);
    for (int64_t dimension : tensor.shape) out->add_shape(static_cast<uint64_t>(dimension));
    out->set_role(tensor.role);
    out->set_layer(tensor.layer >= 0 ? static_cast<uint32_t>(tensor.layer) : 0);
    out->set_expert(tensor.expert >= 0 ? static_cast<uint32_t>(tensor.expert) : 0);
    out->set_offset(offset);
    offset += static_cast<uint64_t>(tensor.size);
  }
  if (offset == 0) return absl::InvalidArgumentError("rounds.trainable selects no tensor");

  const auto layers = static_cast<uint64_t>(config.num_hidden_layers);
  const auto experts = static_cast<uint64_t>(config.num_local_experts);
  v1::UpdateLayout* update = spec.mutable_layout();
  update->set_delta_values(offset);
  update->set_num_moe_layers(static_cast<uint32_t>(layers));
  update->set_num_experts(static_cast<uint32_t>(experts));
  update->set_expert_weights_offset(offset);
  update->set_histogram_offset(offset + layers * experts);
  update->set_histogram_values(layers * experts);
  update->set_metrics_offset(offset + 2 * layers * experts);
  update->set_metrics_values(0);
  update->set_plain_values(offset + 2 * layers * experts);
  update->set_encoded_values(privacy::EncodedLength(update->plain_values()));
  // The three parts of the plain vector share the clip norm C, each with a bound of its own,
  // so that clipping never rescales the expert weights the merge divides by (DESIGN §4.3):
  //   Δ, clipped to C_Δ before the routed blocks are weighted (w_e ≤ 1 keeps them within it);
  //   w·scale: a token's k slots go to k different experts, so w_e ≤ 1/k and each layer's w
  //     has L2 norm at most 1/√k;
  //   the histogram / scale: a layer's slot counts have L2 norm at most its slots in a round.
  // C_Δ² + (share_w·C)² + (share_h·C)² = C².
  const double weight_norm_per_unit_scale =
      std::sqrt(static_cast<double>(layers) / static_cast<double>(config.num_experts_per_tok));
  const double weights_bound = policy.expert_weights_share * policy.clip_norm;
  const double histogram_bound = policy.histogram_share * policy.clip_norm;
  update->set_expert_weights_scale(weights_bound / weight_norm_per_unit_scale);
  update->set_expert_weights_norm_bound(weights_bound);
  const v1::LocalTrainingConfig& training = policy.training;
  const double slots_per_layer =
      static_cast<double>(training.steps()) * training.gradient_accumulation() *
      training.batch_size() * training.seq_len() * static_cast<double>(config.num_experts_per_tok);
  update->set_histogram_scale(slots_per_layer * std::sqrt(static_cast<double>(layers)) /
                              histogram_bound);
  update->set_histogram_norm_bound(histogram_bound);
  const double delta_share_squared = 1.0 -
                                     policy.expert_weights_share * policy.expert_weights_share -
                                     policy.histogram_share * policy.histogram_share;
  if (!(delta_share_squared > 0)) {
    return absl::InvalidArgumentError(
        "rounds.expert_weights_share² + rounds.histogram_share² leave no clip norm for Δ");
  }
  update->set_delta_clip_norm(policy.clip_norm * std::sqrt(delta_share_squared));

  *spec.mutable_training() = policy.training;

  // The encoding first, then the PrivacySpec that tells the clients exactly that.
  const bool noisy = policy.privacy_mode != v1::PrivacySpec::MODE_NONE;
  const double z = noisy ? policy.noise_multiplier : 0.0;
  planned.encoding =
      PlanEncoding(policy, clients, static_cast<int64_t>(update->encoded_values()), rotation_seed);
  const privacy::RingEncoding& encoding = planned.encoding;
  const double local_noise_stddev = policy.privacy_mode == v1::PrivacySpec::MODE_DISTRIBUTED
                                        ? LocalNoiseStddev(policy, encoding.scale, clients)
                                        : 0.0;

  v1::PrivacySpec* privacy = spec.mutable_privacy();
  privacy->set_mode(policy.privacy_mode);
  privacy->set_mechanism(noisy ? policy.mechanism : v1::PrivacySpec::MECHANISM_UNSPECIFIED);
  privacy->set_clip_norm(encoding.clip_norm);
  privacy->set_noise_multiplier(z);
  privacy->set_scale(encoding.scale);
  privacy->set_expected_survivors(static_cast<uint32_t>(clients));
  privacy->set_local_noise_stddev(local_noise_stddev);
  privacy->set_rounding_beta(encoding.rounding_beta);
  privacy->set_rotation_seed(encoding.rotation_seed);
  privacy->set_rotate(true);
  privacy->set_rotation_block(encoding.rotation_block);
  spec.set_collect_metrics(false);
  return planned;
}

}  // namespace fedmoe::coordinator
