// A model's weights held frozen and compact, for adapter training and inference over a model
// too large to train whole (issue [peft]).
//
// Every matrix (embeddings, attention and expert projections, the output head) is a
// kernels::cpu::FrozenWeight in one format: fp32, bf16, or weight-only INT8. Norm weights and
// routers stay fp32: they are a few thousand values per layer, and the router trains (its
// trained copy lives with the adapters). No fp32 copy of the matrices is ever made.
#ifndef FEDMOE_MODEL_FROZEN_BASE_H_
#define FEDMOE_MODEL_FROZEN_BASE_H_

#include <cstdint>
#include <memory>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cpu/aligned.h"
#include "kernels/cpu/bf16.h"
#include "kernels/cpu/frozen_linear.h"
#include "kernels/cpu/int8.h"
#include "model/parameters.h"

namespace fedmoe::model {

using kernels::cpu::FrozenWeight;
using kernels::cpu::WeightFormat;

// "fp32", "bf16", "int8".
std::string_view WeightFormatName(WeightFormat format);
absl::StatusOr<WeightFormat> ParseWeightFormat(std::string_view name);

// Whether a tensor of this role is held as a FrozenWeight (a matrix) rather than as fp32.
bool IsFrozenMatrix(TensorRole role);

class FrozenBase {
 public:
  // Holds `parameters` in `format`; INT8 with a scale per output row and group of `group_size`
  // input columns (0: one per row).
  static FrozenBase FromParameters(const ModelParameters& parameters, WeightFormat format,
                                   int64_t group_size = 128);

  FrozenBase(FrozenBase&&) = default;
  FrozenBase& operator=(FrozenBase&&) = default;

  const MoeConfig& config() const { return config_; }
  const ModelLayout& layout() const { return layout_; }
  WeightFormat format() const { return format_; }
  // The matrix at this layout offset (a tensor's TensorSpec::offset, LayerOffsets' fields).
  const FrozenWeight& matrix(int64_t offset) const { return matrices_.at(offset); }
  // The fp32 values of the norm weight or router at this layout offset.
  const float* vector(int64_t offset) const { return vectors_.at(offset); }
  // The bytes of every weight held: what the base costs in memory.
  int64_t bytes() const;

 private:
  FrozenBase(const MoeConfig& config, WeightFormat format);

  MoeConfig config_;
  ModelLayout layout_;
  WeightFormat format_;
  std::unordered_map<int64_t, FrozenWeight> matrices_;
  std::unordered_map<int64_t, const float*> vectors_;
  // What the views above point into. Moving a vector keeps its elements' buffers where they are.
  std::vector<kernels::cpu::AlignedFloats> fp32_storage_;
  std::vector<kernels::cpu::AlignedBf16> bf16_storage_;
  std::vector<kernels::cpu::Int8Matrix> int8_storage_;
};

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_FROZEN_BASE_H_
