#include "model/forward.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/dense.h"
#include "kernels/cpu/embedding.h"
#include "model/internal/expert_schedule.h"
#include "model/internal/mixed_precision.h"

namespace fedmoe::model {
namespace {

namespace cpu = kernels::cpu;
using kernels::cpu::Bf16;

template <typename Buffer>
auto* Sized(Buffer& buffer, int64_t size) {
  buffer.resize(static_cast<size_t>(size));
  return buffer.data();
}

void AddInto(float* destination, const float* source, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) destination[i] += source[i];
}

// The attention half of a layer: layer.input → layer.residual.
void AttentionBlock(const ModelParameters& parameters, const LayerOffsets& weights,
                    const cpu::RopeTable& rope, int64_t batch, int64_t seq_len,
                    MatMulPrecision precision, LayerActivations& layer) {
  const MoeConfig& config = parameters.config();
  const int64_t rows = batch * seq_len;
  const int64_t hidden = config.hidden_size;
  const int64_t q_width = config.query_width();
  const int64_t kv_width = config.key_value_width();
  const bool bf16 = precision == MatMulPrecision::kBfloat16;

  float* norm = Sized(layer.attention_norm, rows * hidden);
  cpu::RmsNormForward(layer.input.data(), parameters.at(weights.input_layernorm), norm,
                      Sized(layer.attention_rstd, rows), rows, hidden,
                      static_cast<float>(config.rms_norm_eps));
  const internal::AttentionWeightsBf16 place =
      internal::AttentionWeightsBf16Layout(hidden, q_width, kv_width);
  Bf16* rounded = bf16 ? Sized(layer.attention_weights_bf16, place.total) : nullptr;
  const auto weight = [&](int64_t offset, int64_t size, int64_t at) {
    return internal::AsOperand(precision, parameters.at(offset), size,
                               bf16 ? rounded + at : nullptr);
  };
  const internal::Operand q_proj = weight(weights.q_proj, q_width * hidden, place.q);
  const internal::Operand k_proj = weight(weights.k_proj, kv_width * hidden, place.k);
  const internal::Operand v_proj = weight(weights.v_proj, kv_width * hidden, place.v);
  const internal::Operand o_proj = weight(weights.o_proj, hidden * q_width, place.o);
  const internal::Operand normed =
      internal::AsOperand(precision, norm, rows * hidden, layer.attention_norm_bf16);
  float* q = Sized(layer.q, rows * q_width);
  float* k = Sized(layer.k, rows * kv_width);
  float* v = Sized(layer.v, rows * kv_width);
  internal::LinearForward(precision, normed, q_proj, q, rows, hidden, q_width);
  internal::LinearForward(precision, normed, k_proj, k, rows, hidden, kv_width);
  internal::LinearForward(precision, normed, v_proj, v, rows, hidden, kv_width);
  cpu::RopeForward(q, batch, seq_len, config.num_attention_heads, rope);
  cpu::RopeForward(k, batch, seq_len, config.num_key_value_heads, rope);

  const cpu::AttentionShape shape{.batch = batch,
                                  .seq_len = seq_len,
                                  .heads = config.num_attention_heads,
                                  .kv_heads = config.num_key_value_heads,
                                  .head_dim = config.head_dim,
                                  .sliding_window = config.sliding_window};
  float* attended = Sized(layer.attention_output, rows * q_width);
  cpu::CausalAttentionForward(
      q, k, v, attended,
      Sized(layer.attention_probs, batch * config.num_attention_heads * seq_len * seq_len), shape);
  float* residual = Sized(layer.residual, rows * hidden);
  internal::LinearForward(
      precision,
      internal::AsOperand(precision, attended, rows * q_width, layer.attention_output_bf16), o_proj,
      residual, rows, q_width, hidden);
  AddInto(residual, layer.input.data(), rows * hidden);
}

// The MoE half of a layer: layer.residual → out.
void MoeBlock(const ModelParameters& parameters, const LayerOffsets& weights, int64_t rows,
              MatMulPrecision precision, LayerActivations& layer, AlignedFloats& out) {
  const MoeConfig& config = parameters.config();
  const int64_t hidden = config.hidden_size;
  const int64_t experts = config.num_local_experts;
  const int64_t top_k = config.num_experts_per_tok;
  const int64_t inner = config.intermediate_size;

  float* norm = Sized(layer.moe_norm, rows * hidden);
  cpu::RmsNormForward(layer.residual.data(), parameters.at(weights.post_attention_layernorm), norm,
                      Sized(layer.moe_rstd, rows), rows, hidden,
                      static_cast<float>(config.rms_norm_eps));
  cpu::LinearForward(norm, parameters.at(weights.router),
                     Sized(layer.router_logits, rows * experts), rows, hidden, experts);
  cpu::RouterTopKForward(layer.router_logits.data(), Sized(layer.router_probs, rows * experts),
                         Sized(layer.expert_index, rows * top_k),
                         Sized(layer.expert_weight, rows * top_k), rows, experts, top_k);
  cpu::BuildExpertPermutation(layer.expert_index.data(), rows, top_k, experts, layer.permutation);

  const int64_t slots = rows * top_k;
  const bool bf16 = precision == MatMulPrecision::kBfloat16;
  float* grouped = Sized(layer.expert_input, slots * hidden);
  cpu::GatherByExpert(norm, layer.permutation, grouped, hidden);
  const internal::Operand grouped_in =
      internal::AsOperand(precision, grouped, slots * hidden, layer.expert_input_bf16);
  Bf16* act_bf16 = bf16 ? Sized(layer.expert_act_bf16, slots * inner) : nullptr;
  Bf16* weights_bf16 =
      bf16 ? Sized(layer.expert_weights_bf16, experts * 3 * inner * hidden) : nullptr;
  float* gate = Sized(layer.expert_gate, slots * inner);
  float* up = Sized(layer.expert_up, slots * inner);
  float* act = bf16 ? nullptr : Sized(layer.expert_act, slots * inner);
  float* expert_out = Sized(layer.expert_output, slots * hidden);
  internal::ForEachExpert(layer.permutation, experts, [&](int64_t e) {
    const int64_t count = layer.permutation.tokens_for(e);
    const int64_t first = layer.permutation.offsets[static_cast<size_t>(e)];
    const ExpertOffsets& expert = weights.experts[static_cast<size_t>(e)];
    const internal::ExpertMlpOutputs activations{
        .in = grouped_in.From(first * hidden),
        .gate = gate + first * inner,
        .up = up + first * inner,
        .act = bf16 ? nullptr : act + first * inner,
        .act_bf16 = bf16 ? act_bf16 + first * inner : nullptr};
    internal::ExpertMlpForward(
        precision, {parameters.at(expert.w1), parameters.at(expert.w3), parameters.at(expert.w2)},
        bf16 ? weights_bf16 + e * 3 * inner * hidden : nullptr, activations,
        expert_out + first * hidden, count, hidden, inner);
  });

  // out = residual (+ the shared experts), then the routed experts are combined into it.
  out.resize(static_cast<size_t>(rows * hidden));
  if (config.n_shared_experts > 0) {
    const int64_t shared_inner = config.shared_inner_size();
    const internal::ExpertMlpOutputs activations{
        .in = internal::AsOperand(precision, norm, rows * hidden, layer.shared_input_bf16),
        .gate = Sized(layer.shared_gate, rows * shared_inner),
        .up = Sized(layer.shared_up, rows * shared_inner),
        .act = bf16 ? nullptr : Sized(layer.shared_act, rows * shared_inner),
        .act_bf16 = bf16 ? Sized(layer.shared_act_bf16, rows * shared_inner) : nullptr};
    internal::ExpertMlpForward(
        precision,
        {parameters.at(weights.shared.w1), parameters.at(weights.shared.w3),
         parameters.at(weights.shared.w2)},
        bf16 ? Sized(layer.shared_weights_bf16, 3 * shared_inner * hidden) : nullptr, activations,
        out.data(), rows, hidden, shared_inner);
    AddInto(out.data(), layer.residual.data(), rows * hidden);
  } else {
    std::copy(layer.residual.begin(), layer.residual.end(), out.begin());
  }
  cpu::CombineExpertOutputs(expert_out, layer.expert_weight.data(), layer.permutation, out.data(),
                            rows, top_k, hidden);
}

}  // namespace

absl::Status CheckTokens(const MoeConfig& config, std::span<const int32_t> tokens, int64_t batch,
                         int64_t seq_len) {
  if (batch < 1 || seq_len < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a forward pass needs at least one token, got batch ", batch, " and seq_len ", seq_len));
  }
  if (static_cast<int64_t>(tokens.size()) != batch * seq_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("got ", tokens.size(), " tokens for batch ", batch, " × seq_len ", seq_len));
  }
  if (seq_len > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("seq_len ", seq_len,
                                                   " is beyond max_position_embeddings ",
                                                   config.max_position_embeddings));
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token ", tokens[i], " at position ", i,
                                                     " is outside the vocabulary [0, ",
                                                     config.vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status Forward(const ModelParameters& parameters, std::span<const int32_t> tokens,
                     int64_t batch, int64_t seq_len, ForwardPass& pass) {
  const MoeConfig& config = parameters.config();
  if (absl::Status status = CheckTokens(config, tokens, batch, seq_len); !status.ok()) {
    return status;
  }
  if (pass.matmul_precision == MatMulPrecision::kBfloat16) {
    if (absl::Status status = cpu::CheckBf16MatMul(); !status.ok()) return status;
  }
  const ModelLayout& layout = parameters.layout();
  const int64_t rows = batch * seq_len;
  const int64_t hidden = config.hidden_size;
  pass.batch = batch;
  pass.seq_len = seq_len;
  pass.tokens.assign(tokens.begin(), tokens.end());
  pass.layers.resize(static_cast<size_t>(config.num_hidden_layers));

  AlignedFloats& embedded = pass.layers.front().input;
  float* x = Sized(embedded, rows * hidden);
  cpu::EmbeddingForward(tokens.data(), parameters.at(layout.embed_tokens()), x, rows, hidden);

  const cpu::RopeTable rope(seq_len, config.head_dim, config.rope_theta);
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    LayerActivations& layer = pass.layers[static_cast<size_t>(i)];
    AttentionBlock(parameters, layout.layer(i), rope, batch, seq_len, pass.matmul_precision, layer);
    AlignedFloats& next = i + 1 < config.num_hidden_layers
                              ? pass.layers[static_cast<size_t>(i + 1)].input
                              : pass.final_input;
    MoeBlock(parameters, layout.layer(i), rows, pass.matmul_precision, layer, next);
  }

  float* final_norm = Sized(pass.final_norm, rows * hidden);
  cpu::RmsNormForward(pass.final_input.data(), parameters.at(layout.final_norm()), final_norm,
                      Sized(pass.final_rstd, rows), rows, hidden,
                      static_cast<float>(config.rms_norm_eps));
  cpu::LinearForward(final_norm, parameters.at(layout.lm_head()),
                     Sized(pass.logits, rows * config.vocab_size), rows, hidden, config.vocab_size);
  return absl::OkStatus();
}

LossSum CrossEntropy(const ForwardPass& pass, std::span<const int32_t> targets,
                     int64_t vocab_size) {
  AlignedFloats losses(static_cast<size_t>(pass.rows()));
  LossSum sum;
  sum.predictions = cpu::CrossEntropyForward(pass.logits.data(), targets.data(), losses.data(),
                                             pass.rows(), vocab_size);
  for (const float loss : losses) sum.total += loss;
  return sum;
}

std::vector<int32_t> NextTokenTargets(std::span<const int32_t> tokens, int64_t batch,
                                      int64_t seq_len) {
  std::vector<int32_t> targets(tokens.size(), -1);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t + 1 < seq_len; ++t) {
      targets[static_cast<size_t>(b * seq_len + t)] =
          tokens[static_cast<size_t>(b * seq_len + t + 1)];
    }
  }
  return targets;
}

}  // namespace fedmoe::model
