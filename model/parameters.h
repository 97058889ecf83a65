// All weights of one MoE transformer, as f32 in a single contiguous buffer, with the Mixtral
// tensor names (DESIGN §7). One buffer makes the optimizer, the update Δ = local − global and
// the checkpoint writer plain loops over one span, and an expert's w1, w2 and w3 sit next to
// each other so its block of an update is contiguous.
#ifndef FEDMOE_MODEL_PARAMETERS_H_
#define FEDMOE_MODEL_PARAMETERS_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kernels/cpu/aligned.h"
#include "model/config.h"

namespace fedmoe::model {

// What a tensor is for, so callers can select subsets (the update spec, inspect's breakdown).
enum class TensorRole {
  kEmbedding,
  kAttention,
  kNorm,
  kRouter,
  kRoutedExpert,
  kSharedExpert,
  kOutput,
};

std::string_view TensorRoleName(TensorRole role);

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  TensorRole role = TensorRole::kEmbedding;
  // Layer and expert index where they apply; −1 otherwise.
  int64_t layer = -1;
  int64_t expert = -1;
  int64_t offset = 0;
  int64_t size = 0;
};

// Offsets (into the buffer) of one expert's SwiGLU weights.
struct ExpertOffsets {
  int64_t w1 = 0;  // [inner, hidden]: gate projection
  int64_t w2 = 0;  // [hidden, inner]: down projection
  int64_t w3 = 0;  // [inner, hidden]: up projection
};

struct LayerOffsets {
  int64_t input_layernorm = 0;
  int64_t q_proj = 0;
  int64_t k_proj = 0;
  int64_t v_proj = 0;
  int64_t o_proj = 0;
  int64_t post_attention_layernorm = 0;
  int64_t router = 0;  // block_sparse_moe.gate: [experts, hidden]
  std::vector<ExpertOffsets> experts;
  ExpertOffsets shared;  // meaningful only with shared experts
};

// The tensor list and offsets for a config, independent of any values.
class ModelLayout {
 public:
  explicit ModelLayout(const MoeConfig& config);

  const std::vector<TensorSpec>& tensors() const { return tensors_; }
  int64_t total_size() const { return total_size_; }
  const TensorSpec* Find(std::string_view name) const;

  int64_t embed_tokens() const { return embed_tokens_; }
  const LayerOffsets& layer(int64_t index) const { return layers_[static_cast<size_t>(index)]; }
  int64_t final_norm() const { return final_norm_; }
  // The output projection; the embedding's offset when the embeddings are tied.
  int64_t lm_head() const { return lm_head_; }

 private:
  int64_t Add(std::string name, std::vector<int64_t> shape, TensorRole role, int64_t layer = -1,
              int64_t expert = -1);

  std::vector<TensorSpec> tensors_;
  // Name → index into tensors_: a checkpoint load looks up every tensor by name.
  std::unordered_map<std::string, size_t> index_;
  int64_t total_size_ = 0;
  int64_t embed_tokens_ = 0;
  std::vector<LayerOffsets> layers_;
  int64_t final_norm_ = 0;
  int64_t lm_head_ = 0;
};

// A config's layout plus the values, zero until loaded or initialised. Copyable: a copy is an
// independent replica (the global model and a client's local one).
class ModelParameters {
 public:
  explicit ModelParameters(const MoeConfig& config);

  const MoeConfig& config() const { return config_; }
  const ModelLayout& layout() const { return layout_; }
  std::span<float> values() { return values_; }
  std::span<const float> values() const { return values_; }

  float* at(int64_t offset) { return values_.data() + offset; }
  const float* at(int64_t offset) const { return values_.data() + offset; }
  std::span<float> tensor(const TensorSpec& spec) {
    return values().subspan(static_cast<size_t>(spec.offset), static_cast<size_t>(spec.size));
  }
  std::span<const float> tensor(const TensorSpec& spec) const {
    return values().subspan(static_cast<size_t>(spec.offset), static_cast<size_t>(spec.size));
  }

 private:
  MoeConfig config_;
  ModelLayout layout_;
  kernels::cpu::AlignedFloats values_;
};

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_PARAMETERS_H_
