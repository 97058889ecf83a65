#include "model/parameters.h"

#include "absl/strings/str_cat.h"
#include "config/enum_names.h"

namespace fedmoe::model {

constexpr config::EnumName<TensorRole> kTensorRoleNames[] = {
    {TensorRole::kEmbedding, "embedding"},
    {TensorRole::kAttention, "attention"},
    {TensorRole::kNorm, "norm"},
    {TensorRole::kRouter, "router"},
    {TensorRole::kRoutedExpert, "routed_experts"},
    {TensorRole::kSharedExpert, "shared_experts"},
    {TensorRole::kOutput, "output"}};

std::string_view TensorRoleName(TensorRole role) {
  return config::NameOf(kTensorRoleNames, role, "unknown");
}

ModelLayout::ModelLayout(const MoeConfig& config) {
  const int64_t hidden = config.hidden_size;
  const int64_t inner = config.intermediate_size;
  embed_tokens_ =
      Add("model.embed_tokens.weight", {config.vocab_size, hidden}, TensorRole::kEmbedding);
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    const std::string prefix = absl::StrCat("model.layers.", i, ".");
    LayerOffsets layer;
    layer.input_layernorm =
        Add(absl::StrCat(prefix, "input_layernorm.weight"), {hidden}, TensorRole::kNorm, i);
    layer.q_proj = Add(absl::StrCat(prefix, "self_attn.q_proj.weight"),
                       {config.query_width(), hidden}, TensorRole::kAttention, i);
    layer.k_proj = Add(absl::StrCat(prefix, "self_attn.k_proj.weight"),
                       {config.key_value_width(), hidden}, TensorRole::kAttention, i);
    layer.v_proj = Add(absl::StrCat(prefix, "self_attn.v_proj.weight"),
                       {config.key_value_width(), hidden}, TensorRole::kAttention, i);
    layer.o_proj = Add(absl::StrCat(prefix, "self_attn.o_proj.weight"),
                       {hidden, config.query_width()}, TensorRole::kAttention, i);
    layer.post_attention_layernorm = Add(absl::StrCat(prefix, "post_attention_layernorm.weight"),
                                         {hidden}, TensorRole::kNorm, i);
    const std::string moe = absl::StrCat(prefix, "block_sparse_moe.");
    layer.router = Add(absl::StrCat(moe, "gate.weight"), {config.num_local_experts, hidden},
                       TensorRole::kRouter, i);
    for (int64_t e = 0; e < config.num_local_experts; ++e) {
      const std::string expert = absl::StrCat(moe, "experts.", e, ".");
      ExpertOffsets offsets;
      offsets.w1 =
          Add(absl::StrCat(expert, "w1.weight"), {inner, hidden}, TensorRole::kRoutedExpert, i, e);
      offsets.w2 =
          Add(absl::StrCat(expert, "w2.weight"), {hidden, inner}, TensorRole::kRoutedExpert, i, e);
      offsets.w3 =
          Add(absl::StrCat(expert, "w3.weight"), {inner, hidden}, TensorRole::kRoutedExpert, i, e);
      layer.experts.push_back(offsets);
    }
    if (config.n_shared_experts > 0) {
      const int64_t shared_inner = config.shared_inner_size();
      const std::string shared = absl::StrCat(moe, "shared_experts.");
      layer.shared.w1 = Add(absl::StrCat(shared, "w1.weight"), {shared_inner, hidden},
                            TensorRole::kSharedExpert, i);
      layer.shared.w2 = Add(absl::StrCat(shared, "w2.weight"), {hidden, shared_inner},
                            TensorRole::kSharedExpert, i);
      layer.shared.w3 = Add(absl::StrCat(shared, "w3.weight"), {shared_inner, hidden},
                            TensorRole::kSharedExpert, i);
    }
    layers_.push_back(std::move(layer));
  }
  final_norm_ = Add("model.norm.weight", {hidden}, TensorRole::kNorm);
  lm_head_ = config.tie_word_embeddings
                 ? embed_tokens_
                 : Add("lm_head.weight", {config.vocab_size, hidden}, TensorRole::kOutput);
}

int64_t ModelLayout::Add(std::string name, std::vector<int64_t> shape, TensorRole role,
                         int64_t layer, int64_t expert) {
  int64_t size = 1;
  for (const int64_t dimension : shape) size *= dimension;
  const int64_t offset = total_size_;
  index_.emplace(name, tensors_.size());
  tensors_.push_back(
      TensorSpec{std::move(name), std::move(shape), role, layer, expert, offset, size});
  total_size_ += size;
  return offset;
}

const TensorSpec* ModelLayout::Find(std::string_view name) const {
  const auto found = index_.find(std::string(name));
  return found == index_.end() ? nullptr : &tensors_[found->second];
}

ModelParameters::ModelParameters(const MoeConfig& config)
    : config_(config), layout_(config), values_(static_cast<size_t>(layout_.total_size()), 0.0f) {}

}  // namespace fedmoe::model
