// CudaTrainingBackend's backward pass and per-record clipping (internal/cuda_backend.h).
#include "model/internal/cuda_backend.h"

namespace fedmoe::model::internal {

absl::StatusOr<LossBreakdown> CudaTrainingBackend::AccumulateClippedGradients(
    const Batch& batch, const RecordRows& records, const BackwardOptions& options, double clip_norm,
    double routing_scale, PrivateBatch& out) {
  if (training_bf16()) {
    return absl::InvalidArgumentError("per-record clipping takes fp32 products only");
  }
  if (options_.trainable.embeddings) {
    return absl::InvalidArgumentError(
        "per-record clipping cannot train embeddings (a token's row mixes records)");
  }
  if (records.rows() != batch.batch * batch.seq_len) {
    return absl::InvalidArgumentError(absl::StrCat("the records lay out ", records.rows(),
                                                   " rows for a batch of ",
                                                   batch.batch * batch.seq_len));
  }
  if (absl::Status selected = cuda::SetDevice(device_); !selected.ok()) return selected;
  const auto total = static_cast<int64_t>(gradients_.size());
  if (static_cast<int64_t>(record_gradients_.size()) < total) {
    if (absl::Status status = Reserve(record_gradients_, total); !status.ok()) return status;
    if (absl::Status status = record_gradients_.Zero(); !status.ok()) return status;
  }
  out.record_norms.clear();
  // A record's routed slots are what its pass adds to the histogram counters.
  std::vector<int64_t> counts_before(expert_counts_.size()), counts_after(expert_counts_.size());
  LossBreakdown step;
  double balance_rows = 0;
  for (int64_t r = 0; r < records.records(); ++r) {
    const int64_t first = records.row_begin[static_cast<size_t>(r)];
    const int64_t last = records.row_begin[static_cast<size_t>(r) + 1];
    if (first % batch.seq_len != 0 || last % batch.seq_len != 0) {
      return absl::InvalidArgumentError("a record does not hold whole windows");
    }
    Batch own;
    own.batch = (last - first) / batch.seq_len;
    own.seq_len = batch.seq_len;
    own.tokens.assign(batch.tokens.begin() + first, batch.tokens.begin() + last);
    own.targets.assign(batch.targets.begin() + first, batch.targets.begin() + last);
    for (const int32_t target : own.targets) own.predictions += target >= 0 ? 1 : 0;
    BackwardOptions alone = options;
    alone.per_record = nullptr;
    alone.step_share = 1;
    alone.predictions_in_step = static_cast<double>(std::max<int64_t>(own.predictions, 1));
    // The pass adds into gradients_: for this record, that is the zeroed buffer of its own.
    if (absl::Status status = expert_counts_.CopyTo(counts_before); !status.ok()) return status;
    std::swap(gradients_, record_gradients_);
    absl::StatusOr<LossBreakdown> loss = AccumulateGradients(own, alone);
    std::swap(gradients_, record_gradients_);
    if (!loss.ok()) return loss.status();
    if (absl::Status status = expert_counts_.CopyTo(counts_after); !status.ok()) return status;
    for (size_t i = 0; i < counts_after.size(); ++i) counts_after[i] -= counts_before[i];
    AddRecordRouting(counts_after, (last - first) * config_.num_experts_per_tok, routing_scale,
                     out.routing_sum);
    absl::Status status = cuda::SumOfSquares(record_gradients_.data(), *trainable_ranges_,
                                             norm_partials_.data(), norm_squared_.data());
    double norm_squared = 0;
    status.Update(norm_squared_.CopyTo({&norm_squared, 1}));
    if (!status.ok()) return status;
    const double norm = std::sqrt(norm_squared);
    out.record_norms.push_back(norm);
    status.Update(cuda::Axpy(static_cast<float>(norm > clip_norm ? clip_norm / norm : 1.0),
                             record_gradients_, gradients_));
    status.Update(record_gradients_.Zero());
    if (!status.ok()) return status;
    step.cross_entropy += loss->cross_entropy * alone.predictions_in_step;
    step.predictions += loss->predictions;
    step.balance_per_layer += loss->balance_per_layer * static_cast<double>(last - first);
    balance_rows += static_cast<double>(last - first);
  }
  step.cross_entropy /= options.predictions_in_step;
  if (balance_rows > 0) step.balance_per_layer /= balance_rows;
  return step;
}

absl::StatusOr<LossBreakdown> CudaTrainingBackend::LossGradient(const PassShape& s,
                                                                const Batch& batch,
                                                                const BackwardOptions& options) {
  if (absl::Status status = cuda::CrossEntropyBackward(
          logits_.data(), targets_.data(), scratch_.d_logits.data(), losses_.data(), s.rows,
          s.vocab, static_cast<float>(1.0 / options.predictions_in_step));
      !status.ok()) {
    return status;
  }
  absl::StatusOr<LossSum> sum = SumLosses(batch, s.rows);
  if (!sum.ok()) return sum.status();
  absl::StatusOr<double> balance = Balance(s, BalanceScale(options), options.private_experts);
  if (!balance.ok()) return balance.status();
  LossBreakdown loss;
  loss.cross_entropy = sum->total / options.predictions_in_step;
  loss.predictions = sum->predictions;
  loss.balance_per_layer = *balance;
  loss.balance = options.balance_coefficient * *balance * options.step_share;
  return loss;
}

absl::StatusOr<LossBreakdown> CudaTrainingBackend::Backward(const PassShape& s, const Batch& batch,
                                                            const BackwardOptions& options,
                                                            bool bf16) {
  GradientBuffers& g = scratch_;
  const int64_t rows = s.rows;
  const int64_t h = s.hidden;

  // The loss, the output head and the final norm.
  absl::StatusOr<LossBreakdown> loss = LossGradient(s, batch, options);
  if (!loss.ok()) return loss.status();
  const double balance_scale = BalanceScale(options);

  const TensorRole head_role =
      config_.tie_word_embeddings ? TensorRole::kEmbedding : TensorRole::kOutput;
  const MatrixOperand d_logits = Activation(false, g.d_logits.data(), nullptr);
  absl::Status status = LinearBackward(
      Activation(false, final_norm_.data(), nullptr), Weight(layout_.lm_head(), false, false),
      d_logits, g.d_norm.data(), false, Gradient(layout_.lm_head(), head_role), rows, h, s.vocab);
  status.Update(g.d_stream.Zero());
  status.Update(cuda::RmsNormBackward(final_input_.data(), Parameter(layout_.final_norm()),
                                      final_rstd_.data(), g.d_norm.data(), g.d_stream.data(),
                                      Gradient(layout_.final_norm(), TensorRole::kNorm),
                                      g.norm_scratch.data(), rows, h));
  if (!status.ok()) return status;

  // Below this layer nothing needs a gradient, so the walk stops there.
  const int64_t lowest_needed = LowestLayerNeedingGradient(layout_, config_, options_.trainable);
  for (int64_t i = config_.num_hidden_layers - 1; i >= lowest_needed; --i) {
    const bool need_input_gradient = i > lowest_needed || options_.trainable.embeddings;
    const bool need_moe_input_gradient =
        need_input_gradient || options_.trainable.attention || options_.trainable.norms;
    const float* balance_gradient =
        balance_scale != 0 ? g.balance_gradient.data() + i * s.experts : nullptr;
    if (absl::Status block = MoeBackward(i, s, bf16, need_moe_input_gradient, balance_gradient);
        !block.ok()) {
      return block;
    }
    if (!need_moe_input_gradient) break;
    if (absl::Status block = AttentionBackward(i, s, bf16); !block.ok()) return block;
  }
  if (options_.trainable.embeddings && lowest_needed == 0) {
    if (absl::Status embedding = cuda::EmbeddingBackward(
            tokens_.data(), g.d_stream.data(), gradients_.data() + layout_.embed_tokens(), rows, h);
        !embedding.ok()) {
      return embedding;
    }
  }
  return *loss;
}

absl::Status CudaTrainingBackend::MoeBackward(int64_t index, const PassShape& s, bool bf16,
                                              bool need_input_gradient,
                                              const float* balance_gradient) {
  GradientBuffers& g = scratch_;
  LayerBuffers& layer = layers_[static_cast<size_t>(index)];
  const LayerOffsets& w = layout_.layer(index);
  const int64_t rows = s.rows;
  const int64_t h = s.hidden;
  const int64_t inner = s.inner;
  float* d_n2 = need_input_gradient ? g.d_norm.data() : nullptr;
  absl::Status status = cuda::CopyDeviceToDevice(g.d_residual.data(), g.d_stream.data(),
                                                 static_cast<size_t>(rows * h) * sizeof(float));
  if (need_input_gradient) status.Update(g.d_norm.Zero());
  const MatrixOperand n2 = Activation(bf16, layer.moe_norm.data(), layer.moe_norm_bf16.data());

  if (s.shared > 0) {
    if (bf16) status.Update(cuda::RoundToBf16(g.d_stream.data(), g.d_out_bf16.data(), rows * h));
    const MatrixOperand d_out = Activation(bf16, g.d_stream.data(), g.d_out_bf16.data());
    // d_act = d_out·w2, d_w2 += d_outᵀ·act.
    status.Update(
        LinearBackward(Activation(bf16, layer.shared_act.data(), layer.shared_act_bf16.data()),
                       Weight(w.shared.w2, bf16, false), d_out, g.d_act.data(), false,
                       Gradient(w.shared.w2, TensorRole::kSharedExpert), rows, s.shared, h));
    status.Update(cuda::SwiGluBackward(layer.shared_gate.data(), layer.shared_up.data(),
                                       g.d_act.data(), DataIf(!bf16, g.d_gate),
                                       DataIf(bf16, g.d_gate_bf16), DataIf(!bf16, g.d_up),
                                       DataIf(bf16, g.d_up_bf16), rows * s.shared));
    const MatrixOperand d_gate = Activation(bf16, g.d_gate.data(), g.d_gate_bf16.data());
    const MatrixOperand d_up = Activation(bf16, g.d_up.data(), g.d_up_bf16.data());
    status.Update(LinearBackward(n2, Weight(w.shared.w1, bf16, false), d_gate, d_n2, true,
                                 Gradient(w.shared.w1, TensorRole::kSharedExpert), rows, h,
                                 s.shared));
    status.Update(LinearBackward(n2, Weight(w.shared.w3, bf16, false), d_up, d_n2, true,
                                 Gradient(w.shared.w3, TensorRole::kSharedExpert), rows, h,
                                 s.shared));
  }

  status.Update(cuda::CombineExpertOutputsBackward(
      layer.expert_output.data(), layer.expert_weight.data(), layer.permuted_slot.data(),
      g.d_stream.data(), DataIf(!bf16, g.d_expert_out), DataIf(bf16, g.d_expert_out_bf16),
      g.d_expert_weight.data(), rows, s.top_k, h));
  const MatrixOperand d_out = Activation(bf16, g.d_expert_out.data(), g.d_expert_out_bf16.data());
  const MatrixOperand act = Activation(bf16, layer.expert_act.data(), layer.expert_act_bf16.data());
  const MatrixOperand expert_in =
      Activation(bf16, layer.expert_input.data(), layer.expert_input_bf16.data());
  const bool train_experts = options_.trainable.routed_experts;
  const std::vector<int32_t>& offsets = layer.host_offsets;
  const ExpertWeights weights{w};
  // d_act = d_out·w2, d_w2 += d_outᵀ·act.
  status.Update(ExpertLinearBackward(offsets, act, weights.w2(), bf16, d_out, g.d_act.data(), false,
                                     train_experts, inner, h));
  status.Update(cuda::SwiGluBackward(layer.expert_gate.data(), layer.expert_up.data(),
                                     g.d_act.data(), DataIf(!bf16, g.d_gate),
                                     DataIf(bf16, g.d_gate_bf16), DataIf(!bf16, g.d_up),
                                     DataIf(bf16, g.d_up_bf16), s.slots * inner));
  // d_in = d_gate·w1 + d_up·w3, d_w1 += d_gateᵀ·in, d_w3 += d_upᵀ·in.
  float* d_in = need_input_gradient ? g.d_expert_in.data() : nullptr;
  status.Update(ExpertLinearBackward(offsets, expert_in, weights.w1(), bf16,
                                     Activation(bf16, g.d_gate.data(), g.d_gate_bf16.data()), d_in,
                                     false, train_experts, h, inner));
  status.Update(ExpertLinearBackward(offsets, expert_in, weights.w3(), bf16,
                                     Activation(bf16, g.d_up.data(), g.d_up_bf16.data()), d_in,
                                     true, train_experts, h, inner));
  if (need_input_gradient) {
    status.Update(cuda::GatherByExpertBackward(g.d_expert_in.data(), layer.permuted_slot.data(),
                                               d_n2, rows, s.top_k, h));
  }

  const float* d_probs = nullptr;
  if (balance_gradient != nullptr) {
    status.Update(cuda::BroadcastRow(balance_gradient, g.d_probs.data(), rows, s.experts));
    d_probs = g.d_probs.data();
  }
  status.Update(cuda::RouterTopKBackward(layer.router_probs.data(), layer.expert_index.data(),
                                         g.d_expert_weight.data(), d_probs,
                                         g.d_router_logits.data(), rows, s.experts, s.top_k));
  status.Update(LinearBackward(Activation(false, layer.moe_norm.data(), nullptr),
                               Weight(w.router, false, false),
                               Activation(false, g.d_router_logits.data(), nullptr), d_n2, true,
                               Gradient(w.router, TensorRole::kRouter), rows, h, s.experts));
  if (need_input_gradient) {
    status.Update(cuda::RmsNormBackward(
        layer.residual.data(), Parameter(w.post_attention_layernorm), layer.moe_rstd.data(), d_n2,
        g.d_residual.data(), Gradient(w.post_attention_layernorm, TensorRole::kNorm),
        g.norm_scratch.data(), rows, h));
  }
  return status;
}

absl::Status CudaTrainingBackend::AttentionBackward(int64_t index, const PassShape& s, bool bf16) {
  GradientBuffers& g = scratch_;
  LayerBuffers& layer = layers_[static_cast<size_t>(index)];
  const LayerOffsets& w = layout_.layer(index);
  const int64_t rows = s.rows;
  const int64_t h = s.hidden;
  // The skip connection.
  absl::Status status = cuda::CopyDeviceToDevice(g.d_stream.data(), g.d_residual.data(),
                                                 static_cast<size_t>(rows * h) * sizeof(float));
  if (bf16) status.Update(cuda::RoundToBf16(g.d_residual.data(), g.d_out_bf16.data(), rows * h));
  status.Update(LinearBackward(
      Activation(bf16, layer.attention_output.data(), layer.attention_output_bf16.data()),
      Weight(w.o_proj, bf16, false), Activation(bf16, g.d_residual.data(), g.d_out_bf16.data()),
      g.d_attention.data(), false, Gradient(w.o_proj, TensorRole::kAttention), rows, s.q_width, h));
  status.Update(cuda::CausalAttentionBackward(
      layer.q.data(), layer.k.data(), layer.v.data(), layer.attention_output.data(),
      layer.logsumexp.data(), g.d_attention.data(), g.d_q.data(), g.d_k.data(), g.d_v.data(),
      g.attention_scratch.data(), s.attention, AttentionArithmeticFor(bf16)));
  status.Update(cuda::RopeBackward(g.d_q.data(), s.batch, s.seq_len, config_.num_attention_heads,
                                   RopeTable()));
  status.Update(cuda::RopeBackward(g.d_k.data(), s.batch, s.seq_len, config_.num_key_value_heads,
                                   RopeTable()));
  const MatrixOperand n1 =
      Activation(bf16, layer.attention_norm.data(), layer.attention_norm_bf16.data());
  struct Projection {
    int64_t weight;
    float* d_out;
    DeviceBf16* d_out_bf16;
    int64_t width;
  };
  const Projection projections[] = {{w.q_proj, g.d_q.data(), g.d_q_bf16.data(), s.q_width},
                                    {w.k_proj, g.d_k.data(), g.d_k_bf16.data(), s.kv_width},
                                    {w.v_proj, g.d_v.data(), g.d_v_bf16.data(), s.kv_width}};
  bool first = true;
  for (const Projection& projection : projections) {
    if (bf16) {
      status.Update(
          cuda::RoundToBf16(projection.d_out, projection.d_out_bf16, rows * projection.width));
    }
    status.Update(LinearBackward(n1, Weight(projection.weight, bf16, false),
                                 Activation(bf16, projection.d_out, projection.d_out_bf16),
                                 g.d_norm.data(), /*accumulate_d_in=*/!first,
                                 Gradient(projection.weight, TensorRole::kAttention), rows, h,
                                 projection.width));
    first = false;
  }
  status.Update(cuda::RmsNormBackward(
      layer.input.data(), Parameter(w.input_layernorm), layer.attention_rstd.data(),
      g.d_norm.data(), g.d_stream.data(), Gradient(w.input_layernorm, TensorRole::kNorm),
      g.norm_scratch.data(), rows, h));
  return status;
}

}  // namespace fedmoe::model::internal
