#include "model/adapted_model.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/dense.h"
#include "kernels/cpu/lora.h"
#include "kernels/cpu/moe_routing.h"
#include "model/internal/adapted_blocks.h"
#include "model/internal/expert_schedule.h"
#include "model/peft.h"

namespace fedmoe::model {
namespace {

namespace cpu = kernels::cpu;

using internal::Sized;

template <typename Buffer>
auto* Zeroed(Buffer& buffer, int64_t size) {
  buffer.assign(static_cast<size_t>(size), typename Buffer::value_type{});
  return buffer.data();
}

void AddInto(float* destination, const float* source, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) destination[i] += source[i];
}

// One linear of the adapted model: the base's frozen weight and its adapter, if any.
struct AdaptedLinear {
  const FrozenWeight& base;
  const LoraSite& site;
};

cpu::LoraShape ShapeOf(const LoraAdapters& adapters, const LoraSite& site, int64_t rows) {
  return {.rows = rows,
          .in_features = site.in_features,
          .out_features = site.out_features,
          .rank = adapters.config().rank,
          .scale = adapters.config().scaling()};
}

// A [rows, rank] buffer for a linear's low-rank activation, or null without an adapter.
float* LowBuffer(const LoraAdapters& adapters, const LoraSite& site, int64_t rows,
                 AlignedFloats& buffer) {
  return site.present() ? Sized(buffer, rows * adapters.config().rank) : nullptr;
}

// out = in·Ŵᵀ + s·(in·Aᵀ)·Bᵀ, keeping s·in·Aᵀ in `low`.
void Forward(const LoraAdapters& adapters, const AdaptedLinear& linear, const float* in,
             int64_t rows, float* low, float* out) {
  cpu::FrozenLinearForward(in, linear.base, out, rows);
  if (linear.site.present()) {
    cpu::LoraForward(in, adapters.at(linear.site.a), adapters.at(linear.site.b), low, out,
                     ShapeOf(adapters, linear.site, rows));
  }
}

// Where a backward pass puts the adapters' gradients: straight into `gradients`, or under
// DP-SGD record by record into `per_record` (which adds the clipped sum into `gradients` when it
// finishes), the rows of a block belonging to the tokens `row_token` names (an expert's slots).
struct GradientSink {
  float* gradients;
  PerRecordClipping* per_record;
  const int64_t* row_token = nullptr;

  GradientSink ForRows(const int64_t* tokens) const { return {gradients, per_record, tokens}; }
};

// Its backward: d_in (when not null) += the gradient through both branches, and the adapter's
// gradients into the sink (A's only under plain LoRA). d_low [rows, rank] is scratch.
void Backward(const LoraAdapters& adapters, const AdaptedLinear& linear, const float* in,
              const float* low, const float* d_out, int64_t rows, float* d_in,
              const GradientSink& sink, float* d_low) {
  if (d_in != nullptr) cpu::FrozenLinearBackwardInput(d_out, linear.base, d_in, rows);
  const LoraSite& site = linear.site;
  if (!site.present()) return;
  const bool train_a = adapters.config().train_a;
  const bool direct = sink.per_record == nullptr;
  const cpu::LoraShape shape = ShapeOf(adapters, site, rows);
  cpu::LoraBackward(in, adapters.at(site.a), adapters.at(site.b), low, d_out, d_in,
                    direct && train_a ? sink.gradients + site.a : nullptr,
                    direct ? sink.gradients + site.b : nullptr, d_low, shape);
  if (direct) return;
  // dB = d_outᵀ·low and dA = d_lowᵀ·in are the weight gradients of two linears, B's over the
  // kept low-rank activation and A's over the input: the per-record norms of linears apply.
  sink.per_record->AddLinear(sink.gradients + site.b, low, d_out, rows, shape.rank,
                             shape.out_features, sink.row_token);
  if (train_a) {
    sink.per_record->AddLinear(sink.gradients + site.a, in, d_low, rows, shape.in_features,
                               shape.rank, sink.row_token);
  }
}

// The three linears of one SwiGLU MLP (a routed expert, or the shared experts).
struct AdaptedMlp {
  AdaptedLinear w1, w3, w2;
};

AdaptedMlp MlpOf(const FrozenBase& base, const ExpertOffsets& weights, const ExpertSites& sites) {
  return {.w1 = {base.matrix(weights.w1), sites.w1},
          .w3 = {base.matrix(weights.w3), sites.w3},
          .w2 = {base.matrix(weights.w2), sites.w2}};
}

// Where one MLP's activations for a block of rows live: written by the forward (Value = float),
// read by the backward (Value = const float).
template <typename Value>
struct MlpActivations {
  const float* in;
  Value* gate;
  Value* up;
  Value* act;
  Value* low_w1;
  Value* low_w3;
  Value* low_w2;
};
using MlpRows = MlpActivations<float>;
using SavedMlpRows = MlpActivations<const float>;

void MlpForward(const LoraAdapters& adapters, const AdaptedMlp& mlp, const MlpRows& at, float* out,
                int64_t rows, int64_t inner) {
  Forward(adapters, mlp.w1, at.in, rows, at.low_w1, at.gate);
  Forward(adapters, mlp.w3, at.in, rows, at.low_w3, at.up);
  cpu::SwiGluForward(at.gate, at.up, at.act, rows * inner);
  Forward(adapters, mlp.w2, at.act, rows, at.low_w2, out);
}

// d_act, d_gate and d_up [rows, inner] and d_low [rows, rank] are scratch.
struct MlpScratch {
  float* d_act;
  float* d_gate;
  float* d_up;
  float* d_low;
};

void MlpBackward(const LoraAdapters& adapters, const AdaptedMlp& mlp, const SavedMlpRows& at,
                 const float* d_out, float* d_in, const GradientSink& sink,
                 const MlpScratch& scratch, int64_t rows, int64_t inner) {
  std::fill(scratch.d_act, scratch.d_act + rows * inner, 0.0F);
  Backward(adapters, mlp.w2, at.act, at.low_w2, d_out, rows, scratch.d_act, sink, scratch.d_low);
  cpu::SwiGluBackward(at.gate, at.up, scratch.d_act, scratch.d_gate, scratch.d_up, rows * inner);
  Backward(adapters, mlp.w1, at.in, at.low_w1, scratch.d_gate, rows, d_in, sink, scratch.d_low);
  Backward(adapters, mlp.w3, at.in, at.low_w3, scratch.d_up, rows, d_in, sink, scratch.d_low);
}

cpu::AttentionShape AttentionShapeOf(const MoeConfig& config, int64_t batch, int64_t seq_len) {
  return {.batch = batch,
          .seq_len = seq_len,
          .heads = config.num_attention_heads,
          .kv_heads = config.num_key_value_heads,
          .head_dim = config.head_dim,
          .sliding_window = config.sliding_window};
}

// The attention half of a layer: layer.input → layer.residual.
void AttentionBlock(const FrozenBase& base, const LoraAdapters& adapters, int64_t index,
                    const cpu::RopeTable& rope, int64_t batch, int64_t seq_len,
                    LayerActivations& layer, LoraLayerActivations& low) {
  const MoeConfig& config = base.config();
  const LayerOffsets& weights = base.layout().layer(index);
  const LayerSites& sites = adapters.layout().layer(index);
  const int64_t rows = batch * seq_len;
  const int64_t hidden = config.hidden_size;
  const int64_t q_width = config.query_width();
  const int64_t kv_width = config.key_value_width();

  float* norm = Sized(layer.attention_norm, rows * hidden);
  cpu::RmsNormForward(layer.input.data(), base.vector(weights.input_layernorm), norm,
                      Sized(layer.attention_rstd, rows), rows, hidden,
                      static_cast<float>(config.rms_norm_eps));
  float* q = Sized(layer.q, rows * q_width);
  float* k = Sized(layer.k, rows * kv_width);
  float* v = Sized(layer.v, rows * kv_width);
  Forward(adapters, {base.matrix(weights.q_proj), sites.q_proj}, norm, rows,
          LowBuffer(adapters, sites.q_proj, rows, low.q_proj), q);
  Forward(adapters, {base.matrix(weights.k_proj), sites.k_proj}, norm, rows,
          LowBuffer(adapters, sites.k_proj, rows, low.k_proj), k);
  Forward(adapters, {base.matrix(weights.v_proj), sites.v_proj}, norm, rows,
          LowBuffer(adapters, sites.v_proj, rows, low.v_proj), v);
  cpu::RopeForward(q, batch, seq_len, config.num_attention_heads, rope);
  cpu::RopeForward(k, batch, seq_len, config.num_key_value_heads, rope);
  float* attended = Sized(layer.attention_output, rows * q_width);
  cpu::CausalAttentionForward(
      q, k, v, attended,
      Sized(layer.attention_probs, batch * config.num_attention_heads * seq_len * seq_len),
      AttentionShapeOf(config, batch, seq_len));
  float* residual = Sized(layer.residual, rows * hidden);
  Forward(adapters, {base.matrix(weights.o_proj), sites.o_proj}, attended, rows,
          LowBuffer(adapters, sites.o_proj, rows, low.o_proj), residual);
  AddInto(residual, layer.input.data(), rows * hidden);
}

}  // namespace

namespace internal {

void AdaptedLinearForward(const LoraAdapters& adapters, const FrozenWeight& base,
                          const LoraSite& site, const float* in, int64_t rows, AlignedFloats& low,
                          float* out) {
  Forward(adapters, {base, site}, in, rows, LowBuffer(adapters, site, rows, low), out);
}

void AdaptedMoeBlock(const FrozenBase& base, const LoraAdapters& adapters, int64_t index,
                     int64_t rows, LayerActivations& layer, LoraLayerActivations& low,
                     AlignedFloats& out) {
  const MoeConfig& config = base.config();
  const LayerOffsets& weights = base.layout().layer(index);
  const LayerSites& sites = adapters.layout().layer(index);
  const int64_t hidden = config.hidden_size;
  const int64_t experts = config.num_local_experts;
  const int64_t top_k = config.num_experts_per_tok;
  const int64_t inner = config.intermediate_size;
  const int64_t rank = adapters.config().rank;

  float* norm = Sized(layer.moe_norm, rows * hidden);
  cpu::RmsNormForward(layer.residual.data(), base.vector(weights.post_attention_layernorm), norm,
                      Sized(layer.moe_rstd, rows), rows, hidden,
                      static_cast<float>(config.rms_norm_eps));
  cpu::LinearForward(norm, adapters.at(sites.router), Sized(layer.router_logits, rows * experts),
                     rows, hidden, experts);
  cpu::RouterTopKForward(layer.router_logits.data(), Sized(layer.router_probs, rows * experts),
                         Sized(layer.expert_index, rows * top_k),
                         Sized(layer.expert_weight, rows * top_k), rows, experts, top_k);
  cpu::BuildExpertPermutation(layer.expert_index.data(), rows, top_k, experts, layer.permutation);

  const int64_t slots = rows * top_k;
  float* grouped = Sized(layer.expert_input, slots * hidden);
  cpu::GatherByExpert(norm, layer.permutation, grouped, hidden);
  float* gate = Sized(layer.expert_gate, slots * inner);
  float* up = Sized(layer.expert_up, slots * inner);
  float* act = Sized(layer.expert_act, slots * inner);
  float* expert_out = Sized(layer.expert_output, slots * hidden);
  const ExpertSites& any_expert = sites.experts.front();
  float* low_w1 = LowBuffer(adapters, any_expert.w1, slots, low.expert_w1);
  float* low_w3 = LowBuffer(adapters, any_expert.w3, slots, low.expert_w3);
  float* low_w2 = LowBuffer(adapters, any_expert.w2, slots, low.expert_w2);
  const auto at = [rank](float* buffer, int64_t first) {
    return buffer == nullptr ? nullptr : buffer + first * rank;
  };
  internal::ForEachExpert(layer.permutation, experts, [&](int64_t e) {
    const int64_t first = layer.permutation.offsets[static_cast<size_t>(e)];
    MlpForward(
        adapters,
        MlpOf(base, weights.experts[static_cast<size_t>(e)], sites.experts[static_cast<size_t>(e)]),
        {.in = grouped + first * hidden,
         .gate = gate + first * inner,
         .up = up + first * inner,
         .act = act + first * inner,
         .low_w1 = at(low_w1, first),
         .low_w3 = at(low_w3, first),
         .low_w2 = at(low_w2, first)},
        expert_out + first * hidden, layer.permutation.tokens_for(e), inner);
  });

  out.resize(static_cast<size_t>(rows * hidden));
  if (config.n_shared_experts > 0) {
    const int64_t shared_inner = config.shared_inner_size();
    MlpForward(adapters, MlpOf(base, weights.shared, sites.shared),
               {.in = norm,
                .gate = Sized(layer.shared_gate, rows * shared_inner),
                .up = Sized(layer.shared_up, rows * shared_inner),
                .act = Sized(layer.shared_act, rows * shared_inner),
                .low_w1 = LowBuffer(adapters, sites.shared.w1, rows, low.shared_w1),
                .low_w3 = LowBuffer(adapters, sites.shared.w3, rows, low.shared_w3),
                .low_w2 = LowBuffer(adapters, sites.shared.w2, rows, low.shared_w2)},
               out.data(), rows, shared_inner);
    AddInto(out.data(), layer.residual.data(), rows * hidden);
  } else {
    std::copy(layer.residual.begin(), layer.residual.end(), out.begin());
  }
  cpu::CombineExpertOutputs(expert_out, layer.expert_weight.data(), layer.permutation, out.data(),
                            rows, top_k, hidden);
}

}  // namespace internal

namespace {

std::span<const float> BaseRouter(const FrozenBase& base, int64_t layer) {
  return {base.vector(base.layout().layer(layer).router),
          static_cast<size_t>(base.config().num_local_experts * base.config().hidden_size)};
}

void CopyRouters(const FrozenBase& base, LoraAdapters& adapters) {
  for (int64_t i = 0; i < base.config().num_hidden_layers; ++i) {
    const std::span<const float> router = BaseRouter(base, i);
    std::copy(router.begin(), router.end(), adapters.at(adapters.layout().layer(i).router));
  }
}

}  // namespace

absl::Status CheckAdaptersFit(const MoeConfig& model, const LoraAdapters& adapters) {
  // The config decides every shape of the layout: equal configs, equal layouts.
  if (adapters.model_config().ToJson() != model.ToJson()) {
    return absl::InvalidArgumentError("the adapters were laid out for another model config");
  }
  return absl::OkStatus();
}

absl::StatusOr<LoraAdapters> NewAdapters(const FrozenBase& base, const LoraConfig& lora) {
  if (absl::Status status = lora.Validate(); !status.ok()) return status;
  LoraAdapters adapters(base.config(), lora);
  InitializeLora(adapters);
  CopyRouters(base, adapters);
  return adapters;
}

LoraAdapters BaseOnlyAdapters(const FrozenBase& base) {
  LoraConfig lora;
  lora.targets.clear();
  LoraAdapters adapters(base.config(), lora);
  CopyRouters(base, adapters);
  return adapters;
}

absl::StatusOr<LoraAdapters> LoadAdaptersFor(const FrozenBase& base,
                                             const std::filesystem::path& directory) {
  return LoadAdapters(directory, base.config(),
                      [&base](int64_t layer) { return BaseRouter(base, layer); });
}

absl::Status AdaptedForward(const FrozenBase& base, const LoraAdapters& adapters,
                            std::span<const int32_t> tokens, int64_t batch, int64_t seq_len,
                            AdaptedPass& pass) {
  const MoeConfig& config = base.config();
  if (absl::Status status = CheckTokens(config, tokens, batch, seq_len); !status.ok()) {
    return status;
  }
  if (absl::Status status = CheckAdaptersFit(base.config(), adapters); !status.ok()) return status;
  const ModelLayout& layout = base.layout();
  const int64_t rows = batch * seq_len;
  const int64_t hidden = config.hidden_size;
  ForwardPass& model = pass.model;
  model.matmul_precision = MatMulPrecision::kFloat32;
  model.batch = batch;
  model.seq_len = seq_len;
  model.tokens.assign(tokens.begin(), tokens.end());
  model.layers.resize(static_cast<size_t>(config.num_hidden_layers));
  pass.lora.resize(static_cast<size_t>(config.num_hidden_layers));

  float* x = Sized(model.layers.front().input, rows * hidden);
  const FrozenWeight& embedding = base.matrix(layout.embed_tokens());
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    kernels::cpu::DecodeRows(embedding, tokens[static_cast<size_t>(row)], 1, x + row * hidden);
  }

  const cpu::RopeTable rope(seq_len, config.head_dim, config.rope_theta);
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    LayerActivations& layer = model.layers[static_cast<size_t>(i)];
    LoraLayerActivations& low = pass.lora[static_cast<size_t>(i)];
    AttentionBlock(base, adapters, i, rope, batch, seq_len, layer, low);
    AlignedFloats& next = i + 1 < config.num_hidden_layers
                              ? model.layers[static_cast<size_t>(i + 1)].input
                              : model.final_input;
    internal::AdaptedMoeBlock(base, adapters, i, rows, layer, low, next);
  }

  float* final_norm = Sized(model.final_norm, rows * hidden);
  cpu::RmsNormForward(model.final_input.data(), base.vector(layout.final_norm()), final_norm,
                      Sized(model.final_rstd, rows), rows, hidden,
                      static_cast<float>(config.rms_norm_eps));
  cpu::FrozenLinearForward(final_norm, base.matrix(layout.lm_head()),
                           Sized(model.logits, rows * config.vocab_size), rows);
  return absl::OkStatus();
}

absl::StatusOr<LossBreakdown> AdaptedBackward(const FrozenBase& base, const LoraAdapters& adapters,
                                              const AdaptedPass& pass,
                                              std::span<const int32_t> targets,
                                              const BackwardOptions& options,
                                              std::span<float> gradients, AdaptedScratch& scratch) {
  const MoeConfig& config = base.config();
  const ModelLayout& layout = base.layout();
  const ForwardPass& model = pass.model;
  const int64_t rows = model.rows();
  if (absl::Status status = CheckAdaptersFit(base.config(), adapters); !status.ok()) return status;
  PerRecordClipping* const per_record = options.per_record;
  if (per_record != nullptr && per_record->records().rows() != rows) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the records lay out ", per_record->records().rows(), " rows for a pass of ", rows));
  }
  if (static_cast<int64_t>(targets.size()) != rows) {
    return absl::InvalidArgumentError(
        absl::StrCat("got ", targets.size(), " targets for ", rows, " positions"));
  }
  if (static_cast<int64_t>(gradients.size()) != adapters.layout().total_size()) {
    return absl::InvalidArgumentError("the gradient buffer does not match the adapters' layout");
  }
  const int64_t hidden = config.hidden_size;
  const int64_t vocab = config.vocab_size;
  const int64_t experts = config.num_local_experts;
  const int64_t top_k = config.num_experts_per_tok;
  const int64_t inner = config.intermediate_size;
  const int64_t q_width = config.query_width();
  const int64_t kv_width = config.key_value_width();
  const int64_t slots = rows * top_k;
  const int64_t rank = adapters.config().rank;
  BackwardScratch& s = scratch.model;
  const GradientSink sink{.gradients = gradients.data(), .per_record = per_record};

  float* d_logits = Sized(s.d_logits, rows * vocab);
  const LossSum sum =
      CrossEntropyGradient(model, targets, vocab, options, d_logits, Sized(s.losses, rows));
  const LossBreakdown loss = LossOf(config, model, sum, options);
  float* d_norm = Zeroed(s.d_norm, rows * hidden);
  cpu::FrozenLinearBackwardInput(d_logits, base.matrix(layout.lm_head()), d_norm, rows);
  float* d_stream = Zeroed(s.d_stream, rows * hidden);
  cpu::RmsNormBackward(model.final_input.data(), base.vector(layout.final_norm()),
                       model.final_rstd.data(), d_norm, d_stream, nullptr, rows, hidden);

  const bool attention_adapted = std::any_of(
      adapters.config().targets.begin(), adapters.config().targets.end(), [](LoraModule m) {
        return m != LoraModule::kW1 && m != LoraModule::kW2 && m != LoraModule::kW3;
      });
  const cpu::RopeTable rope(model.seq_len, config.head_dim, config.rope_theta);
  const double balance_scale = options.balance_coefficient * options.step_share /
                               static_cast<double>(config.num_hidden_layers);
  float* d_low = Sized(scratch.d_low, std::max(slots, rows) * rank);
  for (int64_t i = config.num_hidden_layers - 1; i >= 0; --i) {
    const LayerActivations& layer = model.layers[static_cast<size_t>(i)];
    const LoraLayerActivations& low = pass.lora[static_cast<size_t>(i)];
    const LayerOffsets& w = layout.layer(i);
    const LayerSites& sites = adapters.layout().layer(i);
    // Nothing below the first layer trains, and below its MoE block only attention's adapters.
    const bool need_moe_input_gradient = i > 0 || attention_adapted;

    float* d_residual = Sized(s.d_residual, rows * hidden);
    std::copy(d_stream, d_stream + rows * hidden, d_residual);
    float* d_n2 = Zeroed(s.d_norm, rows * hidden);
    if (config.n_shared_experts > 0) {
      const int64_t shared_inner = config.shared_inner_size();
      MlpBackward(adapters, MlpOf(base, w.shared, sites.shared),
                  {.in = layer.moe_norm.data(),
                   .gate = layer.shared_gate.data(),
                   .up = layer.shared_up.data(),
                   .act = layer.shared_act.data(),
                   .low_w1 = low.shared_w1.data(),
                   .low_w3 = low.shared_w3.data(),
                   .low_w2 = low.shared_w2.data()},
                  d_stream, need_moe_input_gradient ? d_n2 : nullptr, sink,
                  {.d_act = Sized(s.d_act, rows * shared_inner),
                   .d_gate = Sized(s.d_gate, rows * shared_inner),
                   .d_up = Sized(s.d_up, rows * shared_inner),
                   .d_low = d_low},
                  rows, shared_inner);
    }
    float* d_expert_out = Sized(s.d_expert_out, slots * hidden);
    float* d_expert_weight = Sized(s.d_expert_weight, slots);
    cpu::CombineExpertOutputsBackward(layer.expert_output.data(), layer.expert_weight.data(),
                                      layer.permutation, d_stream, d_expert_out, d_expert_weight,
                                      rows, top_k, hidden);
    float* d_expert_in = need_moe_input_gradient ? Zeroed(s.d_expert_in, slots * hidden) : nullptr;
    float* d_act = Sized(s.d_act, slots * inner);
    float* d_gate = Sized(s.d_gate, slots * inner);
    float* d_up = Sized(s.d_up, slots * inner);
    const auto at = [](const AlignedFloats& buffer, int64_t offset) -> const float* {
      return buffer.empty() ? nullptr : buffer.data() + offset;
    };
    const auto expert_backward = [&](int64_t e) {
      const int64_t first = layer.permutation.offsets[static_cast<size_t>(e)];
      MlpBackward(
          adapters,
          MlpOf(base, w.experts[static_cast<size_t>(e)], sites.experts[static_cast<size_t>(e)]),
          {.in = layer.expert_input.data() + first * hidden,
           .gate = at(layer.expert_gate, first * inner),
           .up = at(layer.expert_up, first * inner),
           .act = at(layer.expert_act, first * inner),
           .low_w1 = at(low.expert_w1, first * rank),
           .low_w3 = at(low.expert_w3, first * rank),
           .low_w2 = at(low.expert_w2, first * rank)},
          d_expert_out + first * hidden,
          d_expert_in == nullptr ? nullptr : d_expert_in + first * hidden,
          sink.ForRows(layer.permutation.slot_token.data() + first),
          {.d_act = d_act + first * inner,
           .d_gate = d_gate + first * inner,
           .d_up = d_up + first * inner,
           .d_low = d_low + first * rank},
          layer.permutation.tokens_for(e), inner);
    };
    if (per_record == nullptr) {
      internal::ForEachExpert(layer.permutation, experts, expert_backward);
    } else {
      // Per-record clipping collects its blocks one at a time.
      for (int64_t e = 0; e < experts; ++e) {
        if (layer.permutation.tokens_for(e) > 0) expert_backward(e);
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
    cpu::LinearBackward(layer.moe_norm.data(), adapters.at(sites.router), d_router_logits,
                        need_moe_input_gradient ? d_n2 : nullptr,
                        per_record == nullptr ? sink.gradients + sites.router : nullptr, rows,
                        hidden, experts);
    if (per_record != nullptr) {
      per_record->AddLinear(sink.gradients + sites.router, layer.moe_norm.data(), d_router_logits,
                            rows, hidden, experts);
    }
    if (!need_moe_input_gradient) break;
    cpu::RmsNormBackward(layer.residual.data(), base.vector(w.post_attention_layernorm),
                         layer.moe_rstd.data(), d_n2, d_residual, nullptr, rows, hidden);

    // Attention block: residual = input + o_proj(attention(...)).
    std::copy(d_residual, d_residual + rows * hidden, d_stream);  // the skip connection
    const bool need_input_gradient = i > 0;
    float* d_attention = Zeroed(s.d_attention, rows * q_width);
    Backward(adapters, {base.matrix(w.o_proj), sites.o_proj}, layer.attention_output.data(),
             low.o_proj.data(), d_residual, rows, d_attention, sink, d_low);
    float* d_q = Sized(s.d_q, rows * q_width);
    float* d_k = Sized(s.d_k, rows * kv_width);
    float* d_v = Sized(s.d_v, rows * kv_width);
    cpu::CausalAttentionBackward(layer.q.data(), layer.k.data(), layer.v.data(),
                                 layer.attention_probs.data(), d_attention, d_q, d_k, d_v,
                                 AttentionShapeOf(config, model.batch, model.seq_len));
    cpu::RopeBackward(d_q, model.batch, model.seq_len, config.num_attention_heads, rope);
    cpu::RopeBackward(d_k, model.batch, model.seq_len, config.num_key_value_heads, rope);
    float* d_n1 = need_input_gradient ? Zeroed(s.d_norm, rows * hidden) : nullptr;
    const float* n1 = layer.attention_norm.data();
    Backward(adapters, {base.matrix(w.q_proj), sites.q_proj}, n1, low.q_proj.data(), d_q, rows,
             d_n1, sink, d_low);
    Backward(adapters, {base.matrix(w.k_proj), sites.k_proj}, n1, low.k_proj.data(), d_k, rows,
             d_n1, sink, d_low);
    Backward(adapters, {base.matrix(w.v_proj), sites.v_proj}, n1, low.v_proj.data(), d_v, rows,
             d_n1, sink, d_low);
    if (!need_input_gradient) break;
    cpu::RmsNormBackward(layer.input.data(), base.vector(w.input_layernorm),
                         layer.attention_rstd.data(), d_n1, d_stream, nullptr, rows, hidden);
  }
  return loss;
}

std::vector<TrainedRange> AdapterTrainedRanges(const LoraAdapters& adapters) {
  std::vector<TrainedRange> ranges;
  for (const AdapterTensor& spec : adapters.layout().tensors()) {
    if (spec.role == AdapterRole::kLoraA && !adapters.config().train_a) continue;
    if (!ranges.empty() && ranges.back().offset + ranges.back().size == spec.offset) {
      ranges.back().size += spec.size;
    } else {
      ranges.push_back({.offset = spec.offset, .size = spec.size, .decay = true});
    }
  }
  return ranges;
}

absl::Status MergeAdapters(const LoraAdapters& adapters, ModelParameters& base_parameters) {
  const MoeConfig& config = base_parameters.config();
  if (absl::Status status = CheckAdaptersFit(config, adapters); !status.ok()) return status;
  const int64_t rank = adapters.config().rank;
  const float scale = adapters.config().scaling();
  // W [out, in] += s · B [out, rank] · A [rank, in], accumulated in double.
  const auto merge = [&](int64_t weight, const LoraSite& site) {
    if (!site.present()) return;
    const float* a = adapters.at(site.a);
    const float* b = adapters.at(site.b);
    float* w = base_parameters.at(weight);
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < site.out_features; ++o) {
      for (int64_t c = 0; c < site.in_features; ++c) {
        double product = 0;
        for (int64_t r = 0; r < rank; ++r) {
          product += static_cast<double>(b[o * rank + r]) * a[r * site.in_features + c];
        }
        w[o * site.in_features + c] += static_cast<float>(scale * product);
      }
    }
  };
  const int64_t router_size = config.num_local_experts * config.hidden_size;
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    const LayerOffsets& w = base_parameters.layout().layer(i);
    const LayerSites& sites = adapters.layout().layer(i);
    merge(w.q_proj, sites.q_proj);
    merge(w.k_proj, sites.k_proj);
    merge(w.v_proj, sites.v_proj);
    merge(w.o_proj, sites.o_proj);
    for (size_t e = 0; e < sites.experts.size(); ++e) {
      merge(w.experts[e].w1, sites.experts[e].w1);
      merge(w.experts[e].w2, sites.experts[e].w2);
      merge(w.experts[e].w3, sites.experts[e].w3);
    }
    if (config.n_shared_experts > 0) {
      merge(w.shared.w1, sites.shared.w1);
      merge(w.shared.w2, sites.shared.w2);
      merge(w.shared.w3, sites.shared.w3);
    }
    const float* router = adapters.at(sites.router);
    std::copy(router, router + router_size, base_parameters.at(w.router));
  }
  return absl::OkStatus();
}

}  // namespace fedmoe::model
