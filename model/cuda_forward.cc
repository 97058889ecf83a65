// CudaTrainingBackend's forward pass and losses (internal/cuda_backend.h).
#include "model/internal/cuda_backend.h"

namespace fedmoe::model::internal {

absl::Status CudaTrainingBackend::Forward(const PassShape& s, bool bf16, bool training) {
  if (absl::Status status =
          cuda::EmbeddingForward(tokens_.data(), Parameter(layout_.embed_tokens()),
                                 layers_[0].input.data(), s.rows, s.hidden);
      !status.ok()) {
    return status;
  }
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
    LayerBuffers& layer = layers_[training ? static_cast<size_t>(i) : 0];
    float* next = i + 1 == config_.num_hidden_layers
                      ? final_input_.data()
                      : layers_[training ? static_cast<size_t>(i + 1) : 0].input.data();
    if (absl::Status status = AttentionBlock(layout_.layer(i), s, bf16, layer); !status.ok()) {
      return status;
    }
    if (absl::Status status = MoeBlock(i, s, bf16, training, layer, next); !status.ok()) {
      return status;
    }
  }
  absl::Status status = cuda::RmsNormForward(
      final_input_.data(), Parameter(layout_.final_norm()), final_norm_.data(), nullptr,
      final_rstd_.data(), s.rows, s.hidden, static_cast<float>(config_.rms_norm_eps));
  // The output head is fp32, as on the CPU.
  status.Update(LinearForward(Activation(false, final_norm_.data(), nullptr),
                              Weight(layout_.lm_head(), false, /*transposed=*/true), logits_.data(),
                              s.rows, s.hidden, s.vocab));
  return status;
}

absl::Status CudaTrainingBackend::RotateAndAttend(const PassShape& s, LayerBuffers& layer,
                                                  cuda::AttentionArithmetic arithmetic) {
  absl::Status status = cuda::RopeForward(layer.q.data(), s.batch, s.seq_len,
                                          config_.num_attention_heads, RopeTable());
  status.Update(cuda::RopeForward(layer.k.data(), s.batch, s.seq_len, config_.num_key_value_heads,
                                  RopeTable()));
  status.Update(cuda::CausalAttentionForward(layer.q.data(), layer.k.data(), layer.v.data(),
                                             layer.attention_output.data(), layer.logsumexp.data(),
                                             s.attention, arithmetic));
  return status;
}

absl::Status CudaTrainingBackend::AttentionBlock(const LayerOffsets& w, const PassShape& s,
                                                 bool bf16, LayerBuffers& layer) {
  const auto eps = static_cast<float>(config_.rms_norm_eps);
  absl::Status status = cuda::RmsNormForward(
      layer.input.data(), Parameter(w.input_layernorm), layer.attention_norm.data(),
      DataIf(bf16, layer.attention_norm_bf16), layer.attention_rstd.data(), s.rows, s.hidden, eps);
  const MatrixOperand n1 =
      Activation(bf16, layer.attention_norm.data(), layer.attention_norm_bf16.data());
  status.Update(
      LinearForward(n1, Weight(w.q_proj, bf16, true), layer.q.data(), s.rows, s.hidden, s.q_width));
  status.Update(LinearForward(n1, Weight(w.k_proj, bf16, true), layer.k.data(), s.rows, s.hidden,
                              s.kv_width));
  status.Update(LinearForward(n1, Weight(w.v_proj, bf16, true), layer.v.data(), s.rows, s.hidden,
                              s.kv_width));
  status.Update(RotateAndAttend(s, layer, AttentionArithmeticFor(bf16)));
  if (bf16) {
    status.Update(cuda::RoundToBf16(layer.attention_output.data(),
                                    layer.attention_output_bf16.data(), s.rows * s.q_width));
  }
  status.Update(LinearForward(
      Activation(bf16, layer.attention_output.data(), layer.attention_output_bf16.data()),
      Weight(w.o_proj, bf16, true), layer.residual.data(), s.rows, s.q_width, s.hidden));
  status.Update(cuda::AddInto(layer.residual.data(), layer.input.data(), s.rows * s.hidden));
  return status;
}

absl::Status CudaTrainingBackend::MoeBlock(int64_t index, const PassShape& s, bool bf16,
                                           bool training, LayerBuffers& layer, float* out) {
  const LayerOffsets& w = layout_.layer(index);
  absl::Status status = cuda::RmsNormForward(
      layer.residual.data(), Parameter(w.post_attention_layernorm), layer.moe_norm.data(),
      DataIf(bf16, layer.moe_norm_bf16), layer.moe_rstd.data(), s.rows, s.hidden,
      static_cast<float>(config_.rms_norm_eps));
  // The router is fp32 in either precision.
  status.Update(LinearForward(Activation(false, layer.moe_norm.data(), nullptr),
                              Weight(w.router, false, true), layer.router_logits.data(), s.rows,
                              s.hidden, s.experts));
  status.Update(RouteToExperts(index, s, bf16, training, layer));
  if (!status.ok()) return status;

  const MatrixOperand grouped_in =
      Activation(bf16, layer.expert_input.data(), layer.expert_input_bf16.data());
  const int64_t h = s.hidden;
  const int64_t inner = s.inner;
  // gate = in·w1ᵀ, up = in·w3ᵀ, act = silu(gate)⊙up, out = act·w2ᵀ, per expert.
  const std::vector<int32_t>& offsets = layer.host_offsets;
  const ExpertWeights weights{w};
  status.Update(ExpertLinearForward(offsets, grouped_in, weights.w1(), bf16,
                                    layer.expert_gate.data(), h, inner));
  status.Update(ExpertLinearForward(offsets, grouped_in, weights.w3(), bf16, layer.expert_up.data(),
                                    h, inner));
  status.Update(cuda::SwiGluForward(layer.expert_gate.data(), layer.expert_up.data(),
                                    DataIf(!bf16, layer.expert_act),
                                    DataIf(bf16, layer.expert_act_bf16), s.slots * inner));
  status.Update(ExpertLinearForward(
      offsets, Activation(bf16, layer.expert_act.data(), layer.expert_act_bf16.data()),
      weights.w2(), bf16, layer.expert_output.data(), inner, h));

  // out = residual (+ the shared experts), then the routed experts are combined into it.
  if (s.shared > 0) {
    const MatrixOperand n2 = Activation(bf16, layer.moe_norm.data(), layer.moe_norm_bf16.data());
    status.Update(LinearForward(n2, Weight(w.shared.w1, bf16, true), layer.shared_gate.data(),
                                s.rows, h, s.shared));
    status.Update(LinearForward(n2, Weight(w.shared.w3, bf16, true), layer.shared_up.data(), s.rows,
                                h, s.shared));
    status.Update(cuda::SwiGluForward(layer.shared_gate.data(), layer.shared_up.data(),
                                      DataIf(!bf16, layer.shared_act),
                                      DataIf(bf16, layer.shared_act_bf16), s.rows * s.shared));
    status.Update(
        LinearForward(Activation(bf16, layer.shared_act.data(), layer.shared_act_bf16.data()),
                      Weight(w.shared.w2, bf16, true), out, s.rows, s.shared, h));
    status.Update(cuda::AddInto(out, layer.residual.data(), s.rows * h));
  } else {
    status.Update(cuda::CopyDeviceToDevice(out, layer.residual.data(),
                                           static_cast<size_t>(s.rows * h) * sizeof(float)));
  }
  status.Update(cuda::CombineExpertOutputs(layer.expert_output.data(), layer.expert_weight.data(),
                                           layer.permuted_slot.data(), out, s.rows, s.top_k, h));
  return status;
}

absl::Status CudaTrainingBackend::RouteToExperts(int64_t index, const PassShape& s, bool bf16,
                                                 bool training, LayerBuffers& layer) {
  absl::Status status = cuda::RouterTopKForward(
      layer.router_logits.data(), layer.router_probs.data(), layer.expert_index.data(),
      layer.expert_weight.data(), s.rows, s.experts, s.top_k);
  status.Update(cuda::BuildExpertPermutation(
      layer.expert_index.data(), s.rows, s.top_k, s.experts, layer.offsets.data(),
      layer.slot_token.data(), layer.permuted_slot.data(), permutation_scratch_.data()));
  if (training) {
    status.Update(cuda::SumColumns(layer.router_probs.data(), s.rows, s.experts,
                                   column_sum_scratch_.data(),
                                   probability_sums_.data() + index * s.experts));
    status.Update(cuda::AddExpertCounts(layer.offsets.data(), s.experts,
                                        expert_counts_.data() + index * s.experts));
  }
  status.Update(cuda::GatherByExpert(layer.moe_norm.data(), layer.slot_token.data(),
                                     DataIf(!bf16, layer.expert_input),
                                     DataIf(bf16, layer.expert_input_bf16), s.slots, s.hidden));
  if (!status.ok()) return status;
  // The products' sizes: the one read-back of a layer.
  layer.host_offsets.resize(static_cast<size_t>(s.experts + 1));
  return cuda::CopyDeviceToHost(layer.host_offsets.data(), layer.offsets.data(),
                                layer.host_offsets.size() * sizeof(int32_t));
}

absl::StatusOr<LossSum> CudaTrainingBackend::SumLosses(const Batch& batch, int64_t rows) {
  std::vector<float> losses(static_cast<size_t>(rows));
  if (absl::Status status =
          cuda::CopyDeviceToHost(losses.data(), losses_.data(), losses.size() * sizeof(float));
      !status.ok()) {
    return status;
  }
  LossSum sum;
  for (const float loss : losses) sum.total += loss;
  sum.predictions = std::count_if(batch.targets.begin(), batch.targets.end(),
                                  [](int32_t target) { return target >= 0; });
  return sum;
}

absl::StatusOr<double> CudaTrainingBackend::Balance(const PassShape& s, double scale,
                                                    int64_t private_experts) {
  std::vector<double> sums(probability_sums_.size());
  if (absl::Status status = probability_sums_.CopyTo(sums); !status.ok()) return status;
  const auto experts = static_cast<size_t>(s.experts);
  std::vector<float> gradients(scale != 0 ? layers_.size() * experts : 0);
  std::vector<int64_t> slots(experts);
  double total = 0;
  for (size_t i = 0; i < layers_.size(); ++i) {
    const std::vector<int32_t>& offsets = layers_[i].host_offsets;
    for (size_t e = 0; e < experts; ++e) slots[e] = offsets[e + 1] - offsets[e];
    total += BalanceLoss(
        slots, std::span<const double>(sums).subspan(i * experts, experts), s.rows, s.top_k, scale,
        scale != 0 ? std::span<float>(gradients).subspan(i * experts, experts) : std::span<float>(),
        private_experts);
  }
  if (scale != 0) {
    if (absl::Status status = cuda::CopyHostToDevice(
            scratch_.balance_gradient.data(), gradients.data(), gradients.size() * sizeof(float));
        !status.ok()) {
      return status;
    }
  }
  return total / static_cast<double>(layers_.size());
}

}  // namespace fedmoe::model::internal
