#include "coordinator/round/expert_merge.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace fedmoe::coordinator {

double ExpertWeightFloor(const v1::UpdateLayout& layout, double configured_floor,
                         double sum_noise_stddev) {
  const double weight_noise_stddev =
      layout.expert_weights_scale() > 0 ? sum_noise_stddev / layout.expert_weights_scale() : 0.0;
  return std::max(configured_floor, 2.0 * weight_noise_stddev);
}

absl::StatusOr<MergedUpdate> MergeUpdate(std::span<const double> decoded,
                                         const v1::UpdateSpec& spec, int64_t survivors,
                                         double configured_floor, double sum_noise_stddev) {
  const v1::UpdateLayout& layout = spec.layout();
  if (decoded.size() != layout.plain_values()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the decoded sum has ", decoded.size(), " values; the layout has ", layout.plain_values()));
  }
  if (survivors < 1) return absl::InvalidArgumentError("a merge needs at least one survivor");
  if (!(layout.expert_weights_scale() > 0)) {
    return absl::InvalidArgumentError("the layout's expert_weights_scale is not positive");
  }
  const size_t layers = layout.num_moe_layers();
  const size_t experts = layout.num_experts();
  if (!(sum_noise_stddev >= 0)) {
    return absl::InvalidArgumentError("the sum's noise standard deviation is not a number >= 0");
  }
  MergedUpdate merged;
  merged.expert_weight_floor = ExpertWeightFloor(layout, configured_floor, sum_noise_stddev);
  const double expert_weight_floor = merged.expert_weight_floor;
  merged.delta.assign(layout.delta_values(), 0.0f);
  merged.expert_weight_sums.assign(layers, std::vector<double>(experts, 0.0));
  merged.expert_token_slots.assign(layers, std::vector<double>(experts, 0.0));
  for (size_t l = 0; l < layers; ++l) {
    for (size_t e = 0; e < experts; ++e) {
      merged.expert_weight_sums[l][e] =
          decoded[layout.expert_weights_offset() + l * experts + e] / layout.expert_weights_scale();
      merged.expert_token_slots[l][e] =
          decoded[layout.histogram_offset() + l * experts + e] * layout.histogram_scale();
    }
  }
  merged.untouched.assign(static_cast<size_t>(spec.trainable_tensors_size()), false);
  const auto mean_divisor = static_cast<double>(survivors);
  for (int i = 0; i < spec.trainable_tensors_size(); ++i) {
    const v1::TrainableTensor& tensor = spec.trainable_tensors(i);
    const uint64_t end = i + 1 < spec.trainable_tensors_size()
                             ? spec.trainable_tensors(i + 1).offset()
                             : layout.delta_values();
    if (tensor.offset() > end || end > layout.delta_values()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", tensor.name(), " lies outside the update vector"));
    }
    double divisor = mean_divisor;
    if (tensor.role() == v1::TrainableTensor::ROLE_ROUTED_EXPERT) {
      if (tensor.layer() >= layers || tensor.expert() >= experts) {
        return absl::InvalidArgumentError(absl::StrCat("tensor ", tensor.name(), " names expert ",
                                                       tensor.expert(), " of layer ",
                                                       tensor.layer(), ", outside the layout"));
      }
      const double weight = merged.expert_weight_sums[tensor.layer()][tensor.expert()];
      if (weight < expert_weight_floor) {
        merged.untouched[static_cast<size_t>(i)] = true;
        continue;  // Its Δ stays zero: the expert is left as it was.
      }
      divisor = weight;
    }
    for (uint64_t k = tensor.offset(); k < end; ++k) {
      merged.delta[k] = static_cast<float>(decoded[k] / divisor);
    }
  }
  const bool experts_trained =
      std::any_of(spec.trainable_tensors().begin(), spec.trainable_tensors().end(),
                  [](const v1::TrainableTensor& tensor) {
                    return tensor.role() == v1::TrainableTensor::ROLE_ROUTED_EXPERT;
                  });
  for (const std::vector<double>& layer : merged.expert_weight_sums) {
    for (double weight : layer) {
      if (experts_trained) {
        ++(weight < expert_weight_floor ? merged.experts_untouched : merged.experts_merged);
      }
    }
  }
  return merged;
}

double LargestTensorChange(const v1::UpdateSpec& spec, const GlobalModel& before,
                           const GlobalModel& after) {
  double largest = 0;
  for (const v1::TrainableTensor& wire : spec.trainable_tensors()) {
    const std::optional<std::span<const float>> old_values = before.Tensor(wire.name());
    const std::optional<std::span<const float>> new_values = after.Tensor(wire.name());
    if (!old_values.has_value() || !new_values.has_value() ||
        old_values->size() != new_values->size()) {
      continue;
    }
    double squared = 0;
    for (size_t k = 0; k < old_values->size(); ++k) {
      const double change = static_cast<double>((*new_values)[k]) - (*old_values)[k];
      squared += change * change;
    }
    largest = std::max(largest, std::sqrt(squared));
  }
  return largest;
}

void ServerOptimizer::RestoreMoments(std::vector<float> first, std::vector<float> second) {
  if (first.size() != second.size()) return;
  first_ = std::move(first);
  second_ = std::move(second);
}

absl::Status ServerOptimizer::Apply(const v1::UpdateSpec& spec, const MergedUpdate& update,
                                    GlobalModel& global) {
  const size_t size = update.delta.size();
  if (adaptive() && first_.size() != size) {
    first_.assign(size, 0.0f);
    second_.assign(size, 0.0f);
  }
  const double lr = policy_.server_learning_rate;
  for (int i = 0; i < spec.trainable_tensors_size(); ++i) {
    const v1::TrainableTensor& wire = spec.trainable_tensors(i);
    const std::optional<std::span<float>> tensor = global.Tensor(wire.name());
    if (!tensor.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("the global model has no tensor ", wire.name()));
    }
    if (wire.offset() + tensor->size() > size) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", wire.name(), " lies outside the merged update"));
    }
    if (static_cast<size_t>(i) < update.untouched.size() &&
        update.untouched[static_cast<size_t>(i)]) {
      continue;
    }
    const std::span<float> values = *tensor;
    const float* delta = update.delta.data() + wire.offset();
    if (!adaptive()) {
      for (size_t k = 0; k < values.size(); ++k) values[k] += static_cast<float>(lr * delta[k]);
      continue;
    }
    float* first = first_.data() + wire.offset();
    float* second = second_.data() + wire.offset();
    const double beta1 = policy_.server_beta1;
    const double beta2 = policy_.server_beta2;
    for (size_t k = 0; k < values.size(); ++k) {
      first[k] = static_cast<float>(beta1 * first[k] + (1 - beta1) * delta[k]);
      second[k] = static_cast<float>(beta2 * second[k] + (1 - beta2) * delta[k] * delta[k]);
      values[k] += static_cast<float>(lr * first[k] / (std::sqrt(second[k]) + policy_.server_tau));
    }
  }
  return absl::OkStatus();
}

}  // namespace fedmoe::coordinator
