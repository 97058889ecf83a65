// CudaAdapterBackend's backward pass (internal/cuda_adapter_backend.h), mirroring
// adapted_model.cc's AdaptedBackward: the gradient of the same loss with respect to the
// adapters' buffer only, walking down only as far as a trained adapter sits.
#include "model/internal/cuda_adapter_backend.h"

namespace fedmoe::model::internal {

absl::Status CudaAdapterBackend::LinearBackward(int64_t weight, const LoraSite& site,
                                                const float* in, const float* low,
                                                const float* d_out, int64_t rows, float* d_in) {
  absl::Status status;
  if (d_in != nullptr) {
    status = cuda::FrozenLinearBackwardInput(blas_, d_out, base_.matrix(weight), d_in, rows,
                                             decoded_.data());
  }
  if (!site.present() || !status.ok()) return status;
  return cuda::LoraBackward(blas_, in, Parameter(site.a), Parameter(site.b), low, d_out, d_in,
                            lora_.train_a ? gradients_.data() + site.a : nullptr,
                            gradients_.data() + site.b, d_low_.data(), ShapeOf(site, rows));
}

absl::StatusOr<LossBreakdown> CudaAdapterBackend::Backward(const PassShape& s, const Batch& batch,
                                                           const BackwardOptions& options,
                                                           bool /*bf16*/) {
  GradientBuffers& g = scratch_;
  const int64_t rows = s.rows;
  const int64_t h = s.hidden;
  absl::StatusOr<LossBreakdown> loss = LossGradient(s, batch, options);
  if (!loss.ok()) return loss.status();
  const double balance_scale = BalanceScale(options);

  // The output head and the final norm are frozen: only their input gradients are taken.
  absl::Status status = g.d_norm.Zero();
  status.Update(cuda::FrozenLinearBackwardInput(blas_, g.d_logits.data(),
                                                base_.matrix(layout_.lm_head()), g.d_norm.data(),
                                                rows, decoded_.data()));
  status.Update(g.d_stream.Zero());
  status.Update(cuda::RmsNormBackward(final_input_.data(), base_.vector(layout_.final_norm()),
                                      final_rstd_.data(), g.d_norm.data(), g.d_stream.data(),
                                      nullptr, g.norm_scratch.data(), rows, h));
  if (!status.ok()) return status;

  const bool attention_adapted = AttentionAdapted();
  for (int64_t i = config_.num_hidden_layers - 1; i >= 0; --i) {
    // Nothing below the first layer trains, and below its MoE block only attention's adapters.
    const bool need_moe_input_gradient = i > 0 || attention_adapted;
    const float* balance_gradient =
        balance_scale != 0 ? g.balance_gradient.data() + i * s.experts : nullptr;
    if (absl::Status block = AdaptedMoeBackward(i, s, need_moe_input_gradient, balance_gradient);
        !block.ok()) {
      return block;
    }
    if (!need_moe_input_gradient) break;
    if (absl::Status block = AdaptedAttentionBackward(i, s, /*need_input_gradient=*/i > 0);
        !block.ok()) {
      return block;
    }
  }
  return *loss;
}

absl::Status CudaAdapterBackend::AdaptedMoeBackward(int64_t index, const PassShape& s,
                                                    bool need_input_gradient,
                                                    const float* balance_gradient) {
  GradientBuffers& g = scratch_;
  LayerBuffers& layer = layers_[static_cast<size_t>(index)];
  LowBuffers& low = lows_[static_cast<size_t>(index)];
  const LayerOffsets& w = layout_.layer(index);
  const LayerSites& sites = sites_.layer(index);
  const int64_t rows = s.rows;
  const int64_t h = s.hidden;
  const int64_t inner = s.inner;
  float* d_n2 = need_input_gradient ? g.d_norm.data() : nullptr;
  absl::Status status = cuda::CopyDeviceToDevice(g.d_residual.data(), g.d_stream.data(),
                                                 static_cast<size_t>(rows * h) * sizeof(float));
  if (need_input_gradient) status.Update(g.d_norm.Zero());

  // One MLP's backward over `count` rows: d_act, d_gate and d_up at `scratch_at` in the
  // scratch; d_in (unless null) += the gradient of its input.
  const auto mlp_backward = [&](const ExpertOffsets& weights, const ExpertSites& mlp,
                                const MlpRows& at, const float* d_out, float* d_in,
                                int64_t scratch_at, int64_t count, int64_t width) {
    float* d_act = g.d_act.data() + scratch_at;
    float* d_gate = g.d_gate.data() + scratch_at;
    float* d_up = g.d_up.data() + scratch_at;
    absl::Status done =
        cuda::ZeroDeviceBytes(d_act, static_cast<size_t>(count * width) * sizeof(float));
    done.Update(LinearBackward(weights.w2, mlp.w2, at.act, at.low_w2, d_out, count, d_act));
    done.Update(
        cuda::SwiGluBackward(at.gate, at.up, d_act, d_gate, nullptr, d_up, nullptr, count * width));
    done.Update(LinearBackward(weights.w1, mlp.w1, at.in, at.low_w1, d_gate, count, d_in));
    done.Update(LinearBackward(weights.w3, mlp.w3, at.in, at.low_w3, d_up, count, d_in));
    return done;
  };

  if (s.shared > 0) {
    status.Update(mlp_backward(w.shared, sites.shared,
                               {.in = layer.moe_norm.data(),
                                .gate = layer.shared_gate.data(),
                                .up = layer.shared_up.data(),
                                .act = layer.shared_act.data(),
                                .low_w1 = LowAt(low.shared_w1, sites.shared.w1, 0),
                                .low_w3 = LowAt(low.shared_w3, sites.shared.w3, 0),
                                .low_w2 = LowAt(low.shared_w2, sites.shared.w2, 0)},
                               g.d_stream.data(), d_n2, 0, rows, s.shared));
  }

  status.Update(cuda::CombineExpertOutputsBackward(
      layer.expert_output.data(), layer.expert_weight.data(), layer.permuted_slot.data(),
      g.d_stream.data(), g.d_expert_out.data(), nullptr, g.d_expert_weight.data(), rows, s.top_k,
      h));
  float* d_expert_in = need_input_gradient ? g.d_expert_in.data() : nullptr;
  if (need_input_gradient) status.Update(g.d_expert_in.Zero());
  for (int64_t e = 0; e < s.experts && status.ok(); ++e) {
    const int64_t first = layer.host_offsets[static_cast<size_t>(e)];
    const int64_t count = layer.host_offsets[static_cast<size_t>(e) + 1] - first;
    if (count == 0) continue;
    const ExpertSites& expert = sites.experts[static_cast<size_t>(e)];
    status = mlp_backward(w.experts[static_cast<size_t>(e)], expert,
                          {.in = layer.expert_input.data() + first * h,
                           .gate = layer.expert_gate.data() + first * inner,
                           .up = layer.expert_up.data() + first * inner,
                           .act = layer.expert_act.data() + first * inner,
                           .low_w1 = LowAt(low.expert_w1, expert.w1, first),
                           .low_w3 = LowAt(low.expert_w3, expert.w3, first),
                           .low_w2 = LowAt(low.expert_w2, expert.w2, first)},
                          g.d_expert_out.data() + first * h,
                          d_expert_in == nullptr ? nullptr : d_expert_in + first * h, first * inner,
                          count, inner);
  }
  if (need_input_gradient) {
    status.Update(cuda::GatherByExpertBackward(d_expert_in, layer.permuted_slot.data(), d_n2, rows,
                                               s.top_k, h));
  }

  const float* d_probs = nullptr;
  if (balance_gradient != nullptr) {
    status.Update(cuda::BroadcastRow(balance_gradient, g.d_probs.data(), rows, s.experts));
    d_probs = g.d_probs.data();
  }
  status.Update(cuda::RouterTopKBackward(layer.router_probs.data(), layer.expert_index.data(),
                                         g.d_expert_weight.data(), d_probs,
                                         g.d_router_logits.data(), rows, s.experts, s.top_k));
  status.Update(CudaTrainingBackend::LinearBackward(
      Activation(false, layer.moe_norm.data(), nullptr), Weight(sites.router, false, false),
      Activation(false, g.d_router_logits.data(), nullptr), d_n2, true,
      gradients_.data() + sites.router, rows, h, s.experts));
  if (need_input_gradient) {
    status.Update(cuda::RmsNormBackward(
        layer.residual.data(), base_.vector(w.post_attention_layernorm), layer.moe_rstd.data(),
        d_n2, g.d_residual.data(), nullptr, g.norm_scratch.data(), rows, h));
  }
  return status;
}

absl::Status CudaAdapterBackend::AdaptedAttentionBackward(int64_t index, const PassShape& s,
                                                          bool need_input_gradient) {
  GradientBuffers& g = scratch_;
  LayerBuffers& layer = layers_[static_cast<size_t>(index)];
  LowBuffers& low = lows_[static_cast<size_t>(index)];
  const LayerOffsets& w = layout_.layer(index);
  const LayerSites& sites = sites_.layer(index);
  const int64_t rows = s.rows;
  const int64_t h = s.hidden;
  // The skip connection.
  absl::Status status = cuda::CopyDeviceToDevice(g.d_stream.data(), g.d_residual.data(),
                                                 static_cast<size_t>(rows * h) * sizeof(float));
  status.Update(g.d_attention.Zero());
  status.Update(LinearBackward(w.o_proj, sites.o_proj, layer.attention_output.data(),
                               LowAt(low.o_proj, sites.o_proj, 0), g.d_residual.data(), rows,
                               g.d_attention.data()));
  status.Update(cuda::CausalAttentionBackward(
      layer.q.data(), layer.k.data(), layer.v.data(), layer.attention_output.data(),
      layer.logsumexp.data(), g.d_attention.data(), g.d_q.data(), g.d_k.data(), g.d_v.data(),
      g.attention_scratch.data(), s.attention, cuda::AttentionArithmetic::kFloat32));
  status.Update(cuda::RopeBackward(g.d_q.data(), s.batch, s.seq_len, config_.num_attention_heads,
                                   RopeTable()));
  status.Update(cuda::RopeBackward(g.d_k.data(), s.batch, s.seq_len, config_.num_key_value_heads,
                                   RopeTable()));
  float* d_n1 = need_input_gradient ? g.d_norm.data() : nullptr;
  if (need_input_gradient) status.Update(g.d_norm.Zero());
  const float* n1 = layer.attention_norm.data();
  status.Update(LinearBackward(w.q_proj, sites.q_proj, n1, LowAt(low.q_proj, sites.q_proj, 0),
                               g.d_q.data(), rows, d_n1));
  status.Update(LinearBackward(w.k_proj, sites.k_proj, n1, LowAt(low.k_proj, sites.k_proj, 0),
                               g.d_k.data(), rows, d_n1));
  status.Update(LinearBackward(w.v_proj, sites.v_proj, n1, LowAt(low.v_proj, sites.v_proj, 0),
                               g.d_v.data(), rows, d_n1));
  if (need_input_gradient) {
    status.Update(cuda::RmsNormBackward(layer.input.data(), base_.vector(w.input_layernorm),
                                        layer.attention_rstd.data(), d_n1, g.d_stream.data(),
                                        nullptr, g.norm_scratch.data(), rows, h));
  }
  return status;
}

}  // namespace fedmoe::model::internal
