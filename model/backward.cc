#include "model/backward.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/dense.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/moe_routing.h"
#include "model/internal/expert_schedule.h"
#include "model/internal/mixed_precision.h"

namespace fedmoe::model {
namespace {

namespace cpu = kernels::cpu;
using kernels::cpu::Bf16;

template <typename Buffer>
auto* Zeroed(Buffer& buffer, int64_t size) {
  buffer.assign(static_cast<size_t>(size), typename Buffer::value_type{});
  return buffer.data();
}

template <typename Buffer>
auto* Sized(Buffer& buffer, int64_t size) {
  buffer.resize(static_cast<size_t>(size));
  return buffer.data();
}

}  // namespace

double BalanceLoss(std::span<const int64_t> slots, std::span<const double> probability_sums,
                   int64_t rows, int64_t top_k, double scale, std::span<float> per_expert_gradient,
                   int64_t private_experts) {
  const auto experts = static_cast<int64_t>(slots.size());
  const int64_t first_private = experts - std::clamp<int64_t>(private_experts, 0, experts);
  // Each group's f_e: its size over the slots routed into it. With one group those are all
  // k·rows slots, the plain Switch form.
  auto group_fraction_scale = [&](int64_t begin, int64_t end) {
    int64_t routed = 0;
    for (int64_t e = begin; e < end; ++e) routed += slots[static_cast<size_t>(e)];
    if (first_private == experts) routed = top_k * rows;
    return routed > 0 ? static_cast<double>(end - begin) / static_cast<double>(routed) : 0.0;
  };
  const double global_scale = group_fraction_scale(0, first_private);
  const double private_scale = group_fraction_scale(first_private, experts);
  double loss = 0;
  for (int64_t e = 0; e < experts; ++e) {
    const double fraction_scale = e < first_private ? global_scale : private_scale;
    const double f = fraction_scale * static_cast<double>(slots[static_cast<size_t>(e)]);
    loss += f * probability_sums[static_cast<size_t>(e)] / static_cast<double>(rows);
    if (!per_expert_gradient.empty()) {
      per_expert_gradient[static_cast<size_t>(e)] =
          static_cast<float>(scale * f / static_cast<double>(rows));
    }
  }
  return loss;
}

double LayerBalance(const LayerActivations& layer, int64_t first_row, int64_t rows, int64_t experts,
                    int64_t top_k, int64_t private_experts, double scale, float* d_probs) {
  std::vector<int64_t> slots(static_cast<size_t>(experts), 0);
  for (int64_t i = first_row * top_k; i < (first_row + rows) * top_k; ++i) {
    ++slots[static_cast<size_t>(layer.expert_index[static_cast<size_t>(i)])];
  }
  std::vector<double> probability_sums(static_cast<size_t>(experts), 0.0);
  for (int64_t row = first_row; row < first_row + rows; ++row) {
    for (int64_t e = 0; e < experts; ++e) {
      probability_sums[static_cast<size_t>(e)] +=
          layer.router_probs[static_cast<size_t>(row * experts + e)];
    }
  }
  std::vector<float> gradient(d_probs != nullptr ? static_cast<size_t>(experts) : 0);
  const double loss =
      BalanceLoss(slots, probability_sums, rows, top_k, scale, gradient, private_experts);
  if (d_probs != nullptr) {
    for (int64_t row = 0; row < rows; ++row) {
      std::copy(gradient.begin(), gradient.end(), d_probs + row * experts);
    }
  }
  return loss;
}

LossSum CrossEntropyGradient(const ForwardPass& pass, std::span<const int32_t> targets,
                             int64_t vocab_size, const BackwardOptions& options, float* d_logits,
                             float* losses) {
  const int64_t rows = pass.rows();
  const PerRecordClipping* per_record = options.per_record;
  LossSum sum;
  sum.predictions = cpu::CrossEntropyBackward(
      pass.logits.data(), targets.data(), d_logits, losses, rows, vocab_size,
      per_record != nullptr ? 1.0F : static_cast<float>(1.0 / options.predictions_in_step));
  for (int64_t row = 0; row < rows; ++row) sum.total += losses[row];
  if (per_record != nullptr) {
    // Each record's loss is the mean over its own predictions.
    const RecordRows& records = per_record->records();
    for (int64_t r = 0; r < records.records(); ++r) {
      const int64_t first = records.row_begin[static_cast<size_t>(r)];
      const int64_t last = records.row_begin[static_cast<size_t>(r) + 1];
      int64_t predictions = 0;
      for (int64_t row = first; row < last; ++row) predictions += targets[row] >= 0 ? 1 : 0;
      if (predictions == 0) continue;
      const float share = 1.0F / static_cast<float>(predictions);
      for (float* value = d_logits + first * vocab_size; value < d_logits + last * vocab_size;
           ++value) {
        *value *= share;
      }
    }
  }
  return sum;
}

float* BalanceGradient(const LayerActivations& layer, int64_t experts, int64_t top_k,
                       const BackwardOptions& options, double scale, AlignedFloats& d_probs) {
  if (options.balance_coefficient <= 0) return nullptr;
  const auto rows = static_cast<int64_t>(layer.router_probs.size()) / experts;
  d_probs.resize(static_cast<size_t>(rows * experts));
  if (options.per_record == nullptr) {
    LayerBalance(layer, 0, rows, experts, top_k, options.private_experts, scale, d_probs.data());
    return d_probs.data();
  }
  // Each record's balance term is over its own rows.
  const RecordRows& records = options.per_record->records();
  for (int64_t r = 0; r < records.records(); ++r) {
    const int64_t first = records.row_begin[static_cast<size_t>(r)];
    LayerBalance(layer, first, records.row_begin[static_cast<size_t>(r) + 1] - first, experts,
                 top_k, options.private_experts, scale, d_probs.data() + first * experts);
  }
  return d_probs.data();
}

int64_t LowestLayerNeedingGradient(const ModelLayout& layout, const MoeConfig& config,
                                   const TrainableSet& trainable) {
  if (trainable.embeddings) return 0;
  int64_t lowest = config.num_hidden_layers;
  for (const TensorSpec& spec : layout.tensors()) {
    if (spec.layer >= 0 && trainable.Includes(spec.role)) lowest = std::min(lowest, spec.layer);
  }
  return lowest;
}

LossBreakdown LossOf(const MoeConfig& config, const ForwardPass& pass, const LossSum& sum,
                     const BackwardOptions& options) {
  LossBreakdown loss;
  loss.cross_entropy = sum.total / options.predictions_in_step;
  loss.predictions = sum.predictions;
  for (const LayerActivations& layer : pass.layers) {
    loss.balance_per_layer +=
        LayerBalance(layer, 0, pass.rows(), config.num_local_experts, config.num_experts_per_tok,
                     options.private_experts, 0, nullptr);
  }
  loss.balance_per_layer /= static_cast<double>(pass.layers.size());
  loss.balance = options.balance_coefficient * loss.balance_per_layer * options.step_share;
  return loss;
}

LossBreakdown ComputeLoss(const ModelParameters& parameters, const ForwardPass& pass,
                          std::span<const int32_t> targets, const BackwardOptions& options) {
  return LossOf(parameters.config(), pass,
                CrossEntropy(pass, targets, parameters.config().vocab_size), options);
}

absl::StatusOr<LossBreakdown> Backward(const ModelParameters& parameters, const ForwardPass& pass,
                                       std::span<const int32_t> targets,
                                       const TrainableSet& trainable,
                                       const BackwardOptions& options, std::span<float> gradients,
                                       BackwardScratch& s) {
  const MoeConfig& config = parameters.config();
  const ModelLayout& layout = parameters.layout();
  const int64_t rows = pass.rows();
  if (static_cast<int64_t>(targets.size()) != rows) {
    return absl::InvalidArgumentError(
        absl::StrCat("got ", targets.size(), " targets for ", rows, " positions"));
  }
  if (static_cast<int64_t>(gradients.size()) != layout.total_size()) {
    return absl::InvalidArgumentError("the gradient buffer does not match the model's layout");
  }
  const int64_t hidden = config.hidden_size;
  const int64_t vocab = config.vocab_size;
  const int64_t experts = config.num_local_experts;
  const int64_t top_k = config.num_experts_per_tok;
  const int64_t inner = config.intermediate_size;
  const int64_t q_width = config.query_width();
  const int64_t kv_width = config.key_value_width();
  const int64_t slots = rows * top_k;
  PerRecordClipping* const per_record = options.per_record;
  if (per_record != nullptr) {
    if (per_record->records().rows() != rows) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the records lay out ", per_record->records().rows(), " rows for a pass of ", rows));
    }
    if (pass.matmul_precision != MatMulPrecision::kFloat32) {
      return absl::InvalidArgumentError("per-record clipping takes fp32 products only");
    }
    if (trainable.embeddings) {
      return absl::InvalidArgumentError(
          "per-record clipping cannot train embeddings (a token's row mixes records)");
    }
  }
  // Where Backward adds a weight's gradient itself; with per-record clipping nowhere, and
  // `collect` hands the weight's input and output gradient over instead.
  auto grad = [&](int64_t offset, TensorRole role) -> float* {
    return per_record == nullptr && trainable.Includes(role) ? gradients.data() + offset : nullptr;
  };
  auto collect = [&](int64_t offset, TensorRole role, const float* in, const float* d_out,
                     int64_t block_rows, int64_t in_features, int64_t out_features,
                     const int64_t* row_token = nullptr) {
    if (per_record == nullptr || !trainable.Includes(role)) return;
    per_record->AddLinear(gradients.data() + offset, in, d_out, block_rows, in_features,
                          out_features, row_token);
  };
  auto collect_norm = [&](int64_t offset, const float* in, const float* rstd, const float* d_out) {
    if (per_record == nullptr || !trainable.Includes(TensorRole::kNorm)) return;
    per_record->AddNormWeight(gradients.data() + offset, in, rstd, d_out, rows, hidden);
  };

  // The loss, the output head and the final norm.
  float* d_logits = Sized(s.d_logits, rows * vocab);
  const LossSum sum =
      CrossEntropyGradient(pass, targets, vocab, options, d_logits, Sized(s.losses, rows));
  const LossBreakdown loss = LossOf(config, pass, sum, options);
  const TensorRole head_role =
      config.tie_word_embeddings ? TensorRole::kEmbedding : TensorRole::kOutput;
  float* d_norm = Zeroed(s.d_norm, rows * hidden);
  cpu::LinearBackward(pass.final_norm.data(), parameters.at(layout.lm_head()), d_logits, d_norm,
                      grad(layout.lm_head(), head_role), rows, hidden, vocab);
  collect(layout.lm_head(), head_role, pass.final_norm.data(), d_logits, rows, hidden, vocab);
  float* d_stream = Zeroed(s.d_stream, rows * hidden);
  cpu::RmsNormBackward(pass.final_input.data(), parameters.at(layout.final_norm()),
                       pass.final_rstd.data(), d_norm, d_stream,
                       grad(layout.final_norm(), TensorRole::kNorm), rows, hidden);
  collect_norm(layout.final_norm(), pass.final_input.data(), pass.final_rstd.data(), d_norm);

  // Below this layer nothing needs a gradient, so the walk stops there.
  const int64_t lowest_needed = LowestLayerNeedingGradient(layout, config, trainable);

  const cpu::RopeTable rope(pass.seq_len, config.head_dim, config.rope_theta);
  const double balance_scale = options.balance_coefficient * options.step_share /
                               static_cast<double>(config.num_hidden_layers);
  for (int64_t i = config.num_hidden_layers - 1; i >= lowest_needed; --i) {
    const LayerActivations& layer = pass.layers[static_cast<size_t>(i)];
    const LayerOffsets& w = layout.layer(i);

    // At the lowest layer, with nothing trainable below the MoE block's own weights, the
    // gradient does not need to go past them: skip the products that would carry it.
    const bool need_input_gradient = i > lowest_needed || trainable.embeddings;
    const bool need_moe_input_gradient =
        need_input_gradient || trainable.attention || trainable.norms;

    // MoE block: out = residual + shared(n2) + Σ_j w_j·expert_j(n2), n2 = rmsnorm(residual).
    float* d_residual = Sized(s.d_residual, rows * hidden);
    std::copy(d_stream, d_stream + rows * hidden, d_residual);
    float* d_n2 = Zeroed(s.d_norm, rows * hidden);
    const MatMulPrecision precision = pass.matmul_precision;
    const bool bf16 = precision == MatMulPrecision::kBfloat16;
    if (config.n_shared_experts > 0) {
      const int64_t shared_inner = config.shared_inner_size();
      internal::ExpertMlpBackward(
          precision,
          {parameters.at(w.shared.w1), parameters.at(w.shared.w3), parameters.at(w.shared.w2)},
          layer.shared_weights_bf16.data(),
          {.in = {layer.moe_norm.data(), layer.shared_input_bf16.data()},
           .gate = layer.shared_gate.data(),
           .up = layer.shared_up.data(),
           .act = layer.shared_act.data(),
           .act_bf16 = layer.shared_act_bf16.data()},
          internal::AsOperand(precision, d_stream, rows * hidden, s.d_out_bf16),
          {.d_in = need_moe_input_gradient ? d_n2 : nullptr,
           .d_w1 = grad(w.shared.w1, TensorRole::kSharedExpert),
           .d_w3 = grad(w.shared.w3, TensorRole::kSharedExpert),
           .d_w2 = grad(w.shared.w2, TensorRole::kSharedExpert),
           .d_act = Sized(s.d_act, rows * shared_inner),
           .d_gate = bf16 ? nullptr : Sized(s.d_gate, rows * shared_inner),
           .d_up = bf16 ? nullptr : Sized(s.d_up, rows * shared_inner),
           .d_gate_bf16 = bf16 ? Sized(s.d_gate_bf16, rows * shared_inner) : nullptr,
           .d_up_bf16 = bf16 ? Sized(s.d_up_bf16, rows * shared_inner) : nullptr},
          rows, hidden, shared_inner);
      collect(w.shared.w2, TensorRole::kSharedExpert, layer.shared_act.data(), d_stream, rows,
              shared_inner, hidden);
      collect(w.shared.w1, TensorRole::kSharedExpert, layer.moe_norm.data(), s.d_gate.data(), rows,
              hidden, shared_inner);
      collect(w.shared.w3, TensorRole::kSharedExpert, layer.moe_norm.data(), s.d_up.data(), rows,
              hidden, shared_inner);
    }
    float* d_expert_out = Sized(s.d_expert_out, slots * hidden);
    float* d_expert_weight = Sized(s.d_expert_weight, slots);
    cpu::CombineExpertOutputsBackward(layer.expert_output.data(), layer.expert_weight.data(),
                                      layer.permutation, d_stream, d_expert_out, d_expert_weight,
                                      rows, top_k, hidden);
    const internal::Operand d_expert_out_in =
        internal::AsOperand(precision, d_expert_out, slots * hidden, s.d_out_bf16);
    const internal::Operand expert_input{layer.expert_input.data(), layer.expert_input_bf16.data()};
    float* d_expert_in = need_moe_input_gradient ? Zeroed(s.d_expert_in, slots * hidden) : nullptr;
    float* d_gate = bf16 ? nullptr : Sized(s.d_gate, slots * inner);
    float* d_up = bf16 ? nullptr : Sized(s.d_up, slots * inner);
    float* d_act = Sized(s.d_act, slots * inner);
    Bf16* d_gate_bf16 = bf16 ? Sized(s.d_gate_bf16, slots * inner) : nullptr;
    Bf16* d_up_bf16 = bf16 ? Sized(s.d_up_bf16, slots * inner) : nullptr;
    internal::ForEachExpert(layer.permutation, experts, [&](int64_t e) {
      const int64_t count = layer.permutation.tokens_for(e);
      const int64_t first = layer.permutation.offsets[static_cast<size_t>(e)];
      const ExpertOffsets& expert = w.experts[static_cast<size_t>(e)];
      // The rows of this expert in a [slots, width] buffer; null stays null (not kept).
      const auto at = [first](auto* base, int64_t width) {
        return base == nullptr ? nullptr : base + first * width;
      };
      internal::ExpertMlpBackward(
          precision, {parameters.at(expert.w1), parameters.at(expert.w3), parameters.at(expert.w2)},
          bf16 ? layer.expert_weights_bf16.data() + e * 3 * inner * hidden : nullptr,
          {.in = expert_input.From(first * hidden),
           .gate = at(layer.expert_gate.data(), inner),
           .up = at(layer.expert_up.data(), inner),
           .act = at(bf16 ? nullptr : layer.expert_act.data(), inner),
           .act_bf16 = at(bf16 ? layer.expert_act_bf16.data() : nullptr, inner)},
          d_expert_out_in.From(first * hidden),
          {.d_in = at(d_expert_in, hidden),
           .d_w1 = grad(expert.w1, TensorRole::kRoutedExpert),
           .d_w3 = grad(expert.w3, TensorRole::kRoutedExpert),
           .d_w2 = grad(expert.w2, TensorRole::kRoutedExpert),
           .d_act = d_act + first * inner,
           .d_gate = at(d_gate, inner),
           .d_up = at(d_up, inner),
           .d_gate_bf16 = at(d_gate_bf16, inner),
           .d_up_bf16 = at(d_up_bf16, inner)},
          count, hidden, inner);
    });
    if (per_record != nullptr) {
      for (int64_t e = 0; e < experts; ++e) {
        const int64_t count = layer.permutation.tokens_for(e);
        const int64_t first = layer.permutation.offsets[static_cast<size_t>(e)];
        const ExpertOffsets& expert = w.experts[static_cast<size_t>(e)];
        const int64_t* tokens = layer.permutation.slot_token.data() + first;
        collect(expert.w2, TensorRole::kRoutedExpert, layer.expert_act.data() + first * inner,
                d_expert_out + first * hidden, count, inner, hidden, tokens);
        collect(expert.w1, TensorRole::kRoutedExpert, layer.expert_input.data() + first * hidden,
                d_gate + first * inner, count, hidden, inner, tokens);
        collect(expert.w3, TensorRole::kRoutedExpert, layer.expert_input.data() + first * hidden,
                d_up + first * inner, count, hidden, inner, tokens);
      }
    }

    if (need_moe_input_gradient) {
      cpu::GatherByExpertBackward(d_expert_in, layer.permutation, d_n2, rows, top_k, hidden);
    }
    float* d_probs =
        BalanceGradient(layer, experts, top_k, options, balance_scale, s.d_router_probs);
    float* d_router_logits = Sized(s.d_router_logits, rows * experts);
    cpu::RouterTopKBackward(layer.router_probs.data(), layer.expert_index.data(), d_expert_weight,
                            d_probs, d_router_logits, rows, experts, top_k);
    cpu::LinearBackward(layer.moe_norm.data(), parameters.at(w.router), d_router_logits,
                        need_moe_input_gradient ? d_n2 : nullptr,
                        grad(w.router, TensorRole::kRouter), rows, hidden, experts);
    collect(w.router, TensorRole::kRouter, layer.moe_norm.data(), d_router_logits, rows, hidden,
            experts);
    if (!need_moe_input_gradient) break;
    cpu::RmsNormBackward(layer.residual.data(), parameters.at(w.post_attention_layernorm),
                         layer.moe_rstd.data(), d_n2, d_residual,
                         grad(w.post_attention_layernorm, TensorRole::kNorm), rows, hidden);
    collect_norm(w.post_attention_layernorm, layer.residual.data(), layer.moe_rstd.data(), d_n2);

    // Attention block: residual = input + o_proj(attention(...)). At the lowest layer it is
    // needed only for its own trainable weights.
    std::copy(d_residual, d_residual + rows * hidden, d_stream);  // the skip connection
    const internal::AttentionWeightsBf16 place =
        internal::AttentionWeightsBf16Layout(hidden, q_width, kv_width);
    // A projection's weight, and its rounded copy from the forward pass.
    const auto weight = [&](int64_t offset, int64_t at) -> internal::Operand {
      return {parameters.at(offset), bf16 ? layer.attention_weights_bf16.data() + at : nullptr};
    };
    float* d_attention = Zeroed(s.d_attention, rows * q_width);
    internal::LinearBackward(
        precision, {layer.attention_output.data(), layer.attention_output_bf16.data()},
        weight(w.o_proj, place.o),
        internal::AsOperand(precision, d_residual, rows * hidden, s.d_out_bf16), d_attention,
        grad(w.o_proj, TensorRole::kAttention), rows, q_width, hidden);
    collect(w.o_proj, TensorRole::kAttention, layer.attention_output.data(), d_residual, rows,
            q_width, hidden);
    const cpu::AttentionShape shape{.batch = pass.batch,
                                    .seq_len = pass.seq_len,
                                    .heads = config.num_attention_heads,
                                    .kv_heads = config.num_key_value_heads,
                                    .head_dim = config.head_dim,
                                    .sliding_window = config.sliding_window};
    float* d_q = Sized(s.d_q, rows * q_width);
    float* d_k = Sized(s.d_k, rows * kv_width);
    float* d_v = Sized(s.d_v, rows * kv_width);
    cpu::CausalAttentionBackward(layer.q.data(), layer.k.data(), layer.v.data(),
                                 layer.attention_probs.data(), d_attention, d_q, d_k, d_v, shape);
    cpu::RopeBackward(d_q, pass.batch, pass.seq_len, config.num_attention_heads, rope);
    cpu::RopeBackward(d_k, pass.batch, pass.seq_len, config.num_key_value_heads, rope);
    float* d_n1 = Zeroed(s.d_norm, rows * hidden);
    const internal::Operand n1{layer.attention_norm.data(), layer.attention_norm_bf16.data()};
    internal::LinearBackward(precision, n1, weight(w.q_proj, place.q),
                             internal::AsOperand(precision, d_q, rows * q_width, s.d_q_bf16), d_n1,
                             grad(w.q_proj, TensorRole::kAttention), rows, hidden, q_width);
    internal::LinearBackward(precision, n1, weight(w.k_proj, place.k),
                             internal::AsOperand(precision, d_k, rows * kv_width, s.d_k_bf16), d_n1,
                             grad(w.k_proj, TensorRole::kAttention), rows, hidden, kv_width);
    internal::LinearBackward(precision, n1, weight(w.v_proj, place.v),
                             internal::AsOperand(precision, d_v, rows * kv_width, s.d_v_bf16), d_n1,
                             grad(w.v_proj, TensorRole::kAttention), rows, hidden, kv_width);
    cpu::RmsNormBackward(layer.input.data(), parameters.at(w.input_layernorm),
                         layer.attention_rstd.data(), d_n1, d_stream,
                         grad(w.input_layernorm, TensorRole::kNorm), rows, hidden);
    collect(w.q_proj, TensorRole::kAttention, n1.fp32, d_q, rows, hidden, q_width);
    collect(w.k_proj, TensorRole::kAttention, n1.fp32, d_k, rows, hidden, kv_width);
    collect(w.v_proj, TensorRole::kAttention, n1.fp32, d_v, rows, hidden, kv_width);
    collect_norm(w.input_layernorm, layer.input.data(), layer.attention_rstd.data(), d_n1);
  }

  if (trainable.embeddings && lowest_needed == 0) {
    cpu::EmbeddingBackward(pass.tokens.data(), d_stream, gradients.data() + layout.embed_tokens(),
                           rows, hidden);
  }
  return loss;
}

}  // namespace fedmoe::model
