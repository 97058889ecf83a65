#include "model/trainable_set.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace fedmoe::model {

std::vector<TrainedRange> TrainedRanges(const ModelLayout& layout, const TrainableSet& trainable) {
  std::vector<TrainedRange> ranges;
  for (const TensorSpec& spec : layout.tensors()) {
    if (!trainable.Includes(spec.role)) continue;
    const bool decay = spec.role != TensorRole::kNorm;
    if (trainable.first_trained_expert > 0 && spec.role != TensorRole::kRouter &&
        !(spec.role == TensorRole::kRoutedExpert &&
          spec.expert >= trainable.first_trained_expert)) {
      continue;
    }
    if (spec.role == TensorRole::kRouter && trainable.first_trained_expert > 0) {
      const int64_t row = spec.shape[1];
      const int64_t frozen = std::min(spec.shape[0], trainable.first_trained_expert) * row;
      if (frozen < spec.size) ranges.push_back({spec.offset + frozen, spec.size - frozen, decay});
      continue;
    }
    ranges.push_back({spec.offset, spec.size, decay});
  }
  return ranges;
}

bool TrainableSet::Includes(TensorRole role) const {
  switch (role) {
    case TensorRole::kRoutedExpert:
      return routed_experts;
    case TensorRole::kSharedExpert:
      return shared_experts;
    case TensorRole::kRouter:
      return router;
    case TensorRole::kAttention:
      return attention;
    case TensorRole::kNorm:
      return norms;
    case TensorRole::kEmbedding:
      return embeddings;
    case TensorRole::kOutput:
      return output;
  }
  return false;
}

absl::StatusOr<TrainableSet> TrainableSet::Parse(std::string_view list) {
  TrainableSet set{false, false, false, false, false, false, false};
  for (const absl::string_view raw : absl::StrSplit(std::string(list), ',')) {
    const std::string item(raw);
    if (item == "routed_experts") {
      set.routed_experts = true;
    } else if (item == "shared_experts") {
      set.shared_experts = true;
    } else if (item == "experts") {
      set.routed_experts = set.shared_experts = true;
    } else if (item == "router") {
      set.router = true;
    } else if (item == "attention") {
      set.attention = true;
    } else if (item == "norms") {
      set.norms = true;
    } else if (item == "embeddings") {
      set.embeddings = true;
    } else if (item == "output") {
      set.output = true;
    } else if (item == "all") {
      set = TrainableSet{true, true, true, true, true, true, true};
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown trainable part '", item,
          "' (routed_experts, shared_experts, experts, router, attention, norms, embeddings, "
          "output, all)"));
    }
  }
  return set;
}

}  // namespace fedmoe::model
