#include "model/personal.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <span>

#include "absl/strings/str_cat.h"

namespace fedmoe::model {
namespace {

// A fresh private expert's noise, relative to its source tensor's RMS: enough to break the tie
// with its source in routing and in gradients, small enough to leave the function it computes.
constexpr double kUpcyclingNoise = 0.01;

void CopyWithNoise(std::span<const float> source, std::span<float> destination,
                   std::mt19937_64& generator) {
  double squares = 0;
  for (const float value : source) squares += static_cast<double>(value) * value;
  const double rms = source.empty() ? 0.0 : std::sqrt(squares / static_cast<double>(source.size()));
  std::normal_distribution<double> noise(0.0, kUpcyclingNoise * rms);
  for (size_t k = 0; k < source.size(); ++k) {
    destination[k] = static_cast<float>(source[k] + noise(generator));
  }
}

std::span<const float> Slice(const ModelParameters& parameters, int64_t offset, int64_t size) {
  return parameters.values().subspan(static_cast<size_t>(offset), static_cast<size_t>(size));
}

}  // namespace

MoeConfig WithPrivateExperts(const MoeConfig& global, int64_t private_experts) {
  MoeConfig personal = global;
  personal.num_local_experts = global.num_local_experts + private_experts;
  return personal;
}

absl::StatusOr<int64_t> CountPrivateExperts(const MoeConfig& personal, const MoeConfig& global) {
  const int64_t extra = personal.num_local_experts - global.num_local_experts;
  if (extra < 0 || WithPrivateExperts(global, extra).ToJson() != personal.ToJson()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the personal model (", personal.num_local_experts,
        " experts per layer) is not the global model's shape (", global.num_local_experts,
        " experts per layer) plus private experts: the federation's model changed shape; reset "
        "the personal model (fedmoe-client personal reset)"));
  }
  return extra;
}

absl::StatusOr<ModelParameters> ComposePersonal(const ModelParameters& global,
                                                int64_t private_experts,
                                                const ModelParameters* previous, uint64_t seed) {
  const MoeConfig& global_config = global.config();
  if (private_experts < 1 || private_experts > kMaxPrivateExperts) {
    return absl::InvalidArgumentError(absl::StrCat("private experts per layer must be 1 to ",
                                                   kMaxPrivateExperts, ", not ", private_experts));
  }
  const int64_t experts = global_config.num_local_experts;
  ModelParameters personal(WithPrivateExperts(global_config, private_experts));
  if (previous != nullptr) {
    absl::StatusOr<int64_t> held = CountPrivateExperts(previous->config(), global_config);
    if (!held.ok()) return held.status();
    if (*held != private_experts) {
      return absl::InvalidArgumentError(
          absl::StrCat("the personal model has ", *held, " private experts per layer; ",
                       private_experts, " are configured: reset it to change the number"));
    }
  }
  std::mt19937_64 generator(seed);
  const int64_t hidden = global_config.hidden_size;
  for (const TensorSpec& tensor : personal.layout().tensors()) {
    std::span<float> destination = personal.tensor(tensor);
    if (tensor.role == TensorRole::kRouter) {
      const int64_t global_offset = global.layout().layer(tensor.layer).router;
      const std::span<const float> global_rows = Slice(global, global_offset, experts * hidden);
      std::copy(global_rows.begin(), global_rows.end(), destination.begin());
      for (int64_t e = experts; e < experts + private_experts; ++e) {
        std::span<float> row =
            destination.subspan(static_cast<size_t>(e * hidden), static_cast<size_t>(hidden));
        if (previous != nullptr) {
          const std::span<const float> kept =
              Slice(*previous, previous->layout().layer(tensor.layer).router + e * hidden, hidden);
          std::copy(kept.begin(), kept.end(), row.begin());
        } else {
          CopyWithNoise(Slice(global, global_offset + (e % experts) * hidden, hidden), row,
                        generator);
        }
      }
    } else if (tensor.role == TensorRole::kRoutedExpert && tensor.expert >= experts) {
      if (previous != nullptr) {
        const std::span<const float> kept = previous->tensor(*previous->layout().Find(tensor.name));
        std::copy(kept.begin(), kept.end(), destination.begin());
      } else {
        // The same weight (w1, w2 or w3) of the global expert this one copies.
        const ExpertOffsets& own =
            personal.layout().layer(tensor.layer).experts[static_cast<size_t>(tensor.expert)];
        const ExpertOffsets& source = global.layout()
                                          .layer(tensor.layer)
                                          .experts[static_cast<size_t>(tensor.expert % experts)];
        const int64_t source_offset = tensor.offset == own.w1   ? source.w1
                                      : tensor.offset == own.w2 ? source.w2
                                                                : source.w3;
        CopyWithNoise(Slice(global, source_offset, tensor.size), destination, generator);
      }
    } else {
      const std::span<const float> source = global.tensor(*global.layout().Find(tensor.name));
      std::copy(source.begin(), source.end(), destination.begin());
    }
  }
  return personal;
}

absl::StatusOr<ModelParameters> GlobalPart(const ModelParameters& personal,
                                           const MoeConfig& global_config) {
  absl::StatusOr<int64_t> private_experts = CountPrivateExperts(personal.config(), global_config);
  if (!private_experts.ok()) return private_experts.status();
  ModelParameters global(global_config);
  const int64_t hidden = global_config.hidden_size;
  for (const TensorSpec& tensor : global.layout().tensors()) {
    std::span<float> destination = global.tensor(tensor);
    const TensorSpec* source = personal.layout().Find(tensor.name);
    // The router's first E rows are the global ones; its private rows come after them.
    const std::span<const float> values =
        tensor.role == TensorRole::kRouter
            ? Slice(personal, source->offset, global_config.num_local_experts * hidden)
            : personal.tensor(*source);
    std::copy(values.begin(), values.end(), destination.begin());
  }
  return global;
}

std::vector<std::vector<int64_t>> GlobalExpertSlots(
    const std::vector<std::vector<int64_t>>& expert_slots, int64_t global_experts) {
  std::vector<std::vector<int64_t>> global;
  global.reserve(expert_slots.size());
  for (const std::vector<int64_t>& layer : expert_slots) {
    const size_t kept = std::min(layer.size(), static_cast<size_t>(global_experts));
    global.emplace_back(layer.begin(), layer.begin() + static_cast<std::ptrdiff_t>(kept));
  }
  return global;
}

}  // namespace fedmoe::model
