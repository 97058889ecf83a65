// A model's weights held frozen and compact, for adapter training and inference over a model
// too large to train whole (issue [peft]).
//
// Every matrix (embeddings, attention and expert projections, the output head) is a
// kernels::cpu::FrozenWeight in one format: fp32, bf16, or weight-only INT8. Norm weights and
// routers stay fp32: they are a few thousand values per layer, and the router trains (its
// trained copy lives with the adapters). No fp32 copy of the matrices is ever made.
//
// On disk a base is a model directory (config.json and model.safetensors). A bf16 or fp32 base
// is a plain Hugging Face checkpoint. An INT8 base is a format of fedmoe's own, in the same
// safetensors container so that any safetensors reader can list it:
//   - each matrix "X.weight" is I8 [out_features, in_features], the values q;
//   - beside it, "X.weight_scale" is F32 [out_features, ceil(in_features / group)], the scales,
//     so that the weight is scale[row, column / group] · q[row, column];
//   - norms and routers are F32, as in a plain checkpoint;
//   - __metadata__ holds "fedmoe_weight_format": "int8" and "fedmoe_int8_group_size".
// Open maps the file and, where the stored format is the one asked for, points the weights into
// the mapping: nothing is read until used and nothing is copied, so a base is loaded once and
// shared by the page cache.
#ifndef FEDMOE_MODEL_FROZEN_BASE_H_
#define FEDMOE_MODEL_FROZEN_BASE_H_

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cpu/aligned.h"
#include "kernels/cpu/bf16.h"
#include "kernels/cpu/frozen_linear.h"
#include "kernels/cpu/int8.h"
#include "model/parameters.h"
#include "model/safetensors.h"

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

  // Holds the tensors that `fill` writes, one at a time in the layout's order as fp32, in
  // `format`: a base of any size is built with one tensor's fp32 values in memory at once.
  using TensorSource = std::function<absl::Status(const TensorSpec& spec, std::span<float> out)>;
  static absl::StatusOr<FrozenBase> Build(const MoeConfig& config, WeightFormat format,
                                          int64_t group_size, const TensorSource& fill);

  // Opens the model directory at `directory` as a base in `format` (nullopt: as stored). A
  // stored format other than the one asked for is converted tensor by tensor (INT8 with
  // `group_size`). Errors name the file and tensor at fault: a missing or misshapen tensor, a
  // tensor the layout has no place for, INT8 values without their scales.
  static absl::StatusOr<FrozenBase> Open(const std::filesystem::path& directory,
                                         std::optional<WeightFormat> format = std::nullopt,
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
  // INT8's columns per scale; 0 for the other formats.
  int64_t group_size() const { return group_size_; }

  // Makes every product on this INT8 base quantize its input to int8 too, per token and group
  // of group_size() columns (dynamic activation quantization, kernels/shared/frozen_weight.h):
  // faster decoding, for inference only. The weights, and so BaseContentHash, do not change.
  // FailedPrecondition for a base held in another format. Training never asks for it, since its
  // backward pass is the weight-only product's.
  absl::Status QuantizeActivations();
  bool int8_activations() const { return int8_activations_; }

 private:
  FrozenBase(const MoeConfig& config, WeightFormat format, int64_t group_size);
  // Converts `values` into this base's format, into storage of its own.
  void AddMatrix(const TensorSpec& spec, std::span<const float> values);
  void AddVector(const TensorSpec& spec, std::span<const float> values);

  MoeConfig config_;
  ModelLayout layout_;
  WeightFormat format_;
  int64_t group_size_ = 0;
  bool int8_activations_ = false;
  std::unordered_map<int64_t, FrozenWeight> matrices_;
  std::unordered_map<int64_t, const float*> vectors_;
  // What the views above point into. Moving a vector keeps its elements' buffers where they are.
  std::vector<kernels::cpu::AlignedFloats> fp32_storage_;
  std::vector<kernels::cpu::AlignedBf16> bf16_storage_;
  std::vector<kernels::cpu::Int8Matrix> int8_storage_;
  // The mapped files that views point into, when opened from disk.
  std::vector<SafetensorsFile> files_;
};

// How a base is held for inference: its matrices' format (nullopt: as stored) and, for INT8,
// whether its products quantize their input too (FrozenBase::QuantizeActivations).
struct HeldFormat {
  std::optional<WeightFormat> weights;
  bool int8_activations = false;
};

// FrozenBase::Open in held.weights, then QuantizeActivations when held.int8_activations (so a
// base that is not INT8 is refused with FailedPrecondition).
absl::StatusOr<FrozenBase> OpenForInference(const std::filesystem::path& directory,
                                            const HeldFormat& held);

// "fp32", "bf16", "int8", or "int8 with int8 activations": what a log line or summary says.
std::string HeldFormatName(const FrozenBase& base);

// The format a model directory's matrices are stored in (its embedding's dtype: F32, BF16, or
// fedmoe's INT8; F16 reads as bf16 would hold it).
absl::StatusOr<WeightFormat> StoredWeightFormat(const std::filesystem::path& directory);

// The plain fp32 model whose weights the base holds, decoded (4 bytes per parameter: for
// writing a merged checkpoint, not for holding a large model).
ModelParameters DecodeBase(const FrozenBase& base);

// The SHA-256 (hex) of what a base holds, in an order that does not depend on how its files are
// laid out (shards, header order): a version tag, config.json as MoeConfig::ToJson writes it, the
// format and INT8 group size, then each tensor of the layout in order, its name and its values as
// held (a matrix in its format with INT8's scales; norms and routers in fp32), each length-
// prefixed. Two sites holding the same weights in the same format agree; an INT8 and a bf16 copy
// of one model do not, since they compute different things. A federation names its base by it.
std::string BaseContentHash(const FrozenBase& base);

// OK when `base` hashes to `expected`; otherwise FailedPrecondition naming both hashes and where
// the base was read from.
absl::Status CheckBaseContentHash(const FrozenBase& base, std::string_view expected,
                                  const std::filesystem::path& where);
// The same for a hash already taken (a daemon hashes its base once) of a base in `format`.
absl::Status CheckBaseContentHash(std::string_view actual, WeightFormat format,
                                  std::string_view expected, const std::filesystem::path& where);

// Writes `base` as a model directory in its own format (above): config.json and
// model.safetensors, each replaced atomically.
absl::Status SaveFrozenBase(const FrozenBase& base, const std::filesystem::path& directory);

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_FROZEN_BASE_H_
