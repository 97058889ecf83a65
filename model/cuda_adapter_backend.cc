// CudaAdapterBackend's device base, set-up and forward pass (internal/cuda_adapter_backend.h),
// mirroring adapted_model.cc's AdaptedForward.
#include "model/internal/cuda_adapter_backend.h"

#include <algorithm>
#include <string>

#include "model/adapted_model.h"

namespace fedmoe::model {

namespace cuda = kernels::cuda;

namespace internal {
namespace {

// The bytes of a matrix's values, without INT8's scales.
int64_t ValueBytes(const kernels::FrozenWeight& weight) {
  switch (weight.format) {
    case WeightFormat::kFloat32:
      return weight.rows * weight.columns * static_cast<int64_t>(sizeof(float));
    case WeightFormat::kBfloat16:
      return weight.rows * weight.columns * static_cast<int64_t>(sizeof(uint16_t));
    case WeightFormat::kInt8:
      return weight.rows * weight.columns;
  }
  return 0;
}

}  // namespace

absl::StatusOr<DeviceBase> DeviceBase::Upload(const FrozenBase& base) {
  DeviceBase device;
  const auto fail = [&base](const absl::Status& status) {
    if (!absl::IsResourceExhausted(status)) return status;
    return absl::ResourceExhaustedError(absl::StrCat(
        "the GPU cannot hold the frozen base: its ", std::string(WeightFormatName(base.format())),
        " weights take ", absl::SixDigits(static_cast<double>(base.bytes()) / (1 << 30)), " GiB (",
        status.message(), ")"));
  };
  for (const TensorSpec& spec : base.layout().tensors()) {
    // Tied embeddings share one tensor; it is uploaded once.
    if (device.matrices_.contains(spec.offset) || device.vectors_.contains(spec.offset)) continue;
    if (!IsFrozenMatrix(spec.role)) {
      absl::StatusOr<DeviceArray<float>> values =
          DeviceArray<float>::Allocate(static_cast<size_t>(spec.size));
      if (!values.ok()) return fail(values.status());
      if (absl::Status status =
              values->CopyFrom({base.vector(spec.offset), static_cast<size_t>(spec.size)});
          !status.ok()) {
        return status;
      }
      device.vectors_[spec.offset] = values->data();
      device.fp32_storage_.push_back(*std::move(values));
      continue;
    }
    kernels::FrozenWeight weight = base.matrix(spec.offset);
    const auto bytes = static_cast<size_t>(ValueBytes(weight));
    absl::StatusOr<DeviceArray<uint8_t>> values = DeviceArray<uint8_t>::Allocate(bytes);
    if (!values.ok()) return fail(values.status());
    if (absl::Status status = cuda::CopyHostToDevice(values->data(), weight.values, bytes);
        !status.ok()) {
      return status;
    }
    weight.values = values->data();
    device.storage_.push_back(*std::move(values));
    if (weight.format == WeightFormat::kInt8) {
      const auto scales = static_cast<size_t>(weight.rows * weight.groups_per_row());
      absl::StatusOr<DeviceArray<float>> on_device = DeviceArray<float>::Allocate(scales);
      if (!on_device.ok()) return fail(on_device.status());
      if (absl::Status status = on_device->CopyFrom({weight.scales, scales}); !status.ok()) {
        return status;
      }
      weight.scales = on_device->data();
      device.fp32_storage_.push_back(*std::move(on_device));
    }
    device.decode_scratch_ = std::max(device.decode_scratch_, cuda::FrozenLinearScratch(weight));
    device.matrices_[spec.offset] = weight;
  }
  return device;
}

absl::Status CudaAdapterBackend::Initialize() {
  if (absl::Status status =
          CudaTrainingBackend::Initialize(adapters_.values(), AdapterTrainedRanges(adapters_));
      !status.ok()) {
    return status;
  }
  lows_.resize(static_cast<size_t>(config_.num_hidden_layers));
  return Reserve(decoded_, std::max<int64_t>(base_.decode_scratch(), 1));
}

absl::Status CudaAdapterBackend::CopyAdaptersTo(LoraAdapters& adapters) {
  if (adapters.values().size() != parameters_.size()) {
    return absl::InvalidArgumentError("the adapters' layout differs from the trained ones'");
  }
  if (absl::Status selected = cuda::SetDevice(device_); !selected.ok()) return selected;
  return parameters_.CopyTo(adapters.values());
}

bool CudaAdapterBackend::AttentionAdapted() const {
  return std::any_of(lora_.targets.begin(), lora_.targets.end(), [](LoraModule module) {
    return module != LoraModule::kW1 && module != LoraModule::kW2 && module != LoraModule::kW3;
  });
}

absl::Status CudaAdapterBackend::ReserveForward(const PassShape& s, bool bf16, bool training) {
  absl::Status status = CudaTrainingBackend::ReserveForward(s, bf16, training);
  const auto reserve = [&](DeviceArray<float>& buffer, const LoraSite& site, int64_t rows) {
    if (site.present()) status.Update(Reserve(buffer, rows * lora_.rank));
  };
  const size_t kept = training ? lows_.size() : 1;
  for (size_t i = 0; i < kept && status.ok(); ++i) {
    const LayerSites& sites = sites_.layer(static_cast<int64_t>(i));
    LowBuffers& low = lows_[i];
    reserve(low.q_proj, sites.q_proj, s.rows);
    reserve(low.k_proj, sites.k_proj, s.rows);
    reserve(low.v_proj, sites.v_proj, s.rows);
    reserve(low.o_proj, sites.o_proj, s.rows);
    const ExpertSites& any_expert = sites.experts.front();
    reserve(low.expert_w1, any_expert.w1, s.slots);
    reserve(low.expert_w3, any_expert.w3, s.slots);
    reserve(low.expert_w2, any_expert.w2, s.slots);
    if (s.shared > 0) {
      reserve(low.shared_w1, sites.shared.w1, s.rows);
      reserve(low.shared_w3, sites.shared.w3, s.rows);
      reserve(low.shared_w2, sites.shared.w2, s.rows);
    }
  }
  if (!status.ok()) {
    for (LowBuffers& low : lows_) low = LowBuffers();
  }
  return status;
}

void CudaAdapterBackend::ReleaseActivations() {
  CudaTrainingBackend::ReleaseActivations();
  for (LowBuffers& low : lows_) low = LowBuffers();
  d_low_ = DeviceArray<float>();
  last_rows_ = DeviceArray<float>();
  cached_attention_scratch_ = DeviceArray<float>();
}

absl::Status CudaAdapterBackend::ReserveBackward(const PassShape& s, bool bf16) {
  absl::Status status = CudaTrainingBackend::ReserveBackward(s, bf16);
  status.Update(Reserve(d_low_, std::max(s.slots, s.rows) * lora_.rank));
  return status;
}

absl::Status CudaAdapterBackend::Linear(int64_t weight, const LoraSite& site, const float* in,
                                        int64_t rows, float* low, float* out) {
  absl::Status status =
      cuda::FrozenLinearForward(blas_, in, base_.matrix(weight), out, rows, decoded_.data());
  if (site.present() && status.ok()) {
    status = cuda::LoraForward(blas_, in, Parameter(site.a), Parameter(site.b), low, out,
                               ShapeOf(site, rows));
  }
  return status;
}

absl::Status CudaAdapterBackend::MlpForward(const Mlp& mlp, const MlpRows& at, float* out,
                                            int64_t rows, int64_t inner) {
  absl::Status status = Linear(mlp.weights.w1, mlp.sites.w1, at.in, rows, at.low_w1, at.gate);
  status.Update(Linear(mlp.weights.w3, mlp.sites.w3, at.in, rows, at.low_w3, at.up));
  status.Update(cuda::SwiGluForward(at.gate, at.up, at.act, nullptr, rows * inner));
  status.Update(Linear(mlp.weights.w2, mlp.sites.w2, at.act, rows, at.low_w2, out));
  return status;
}

absl::StatusOr<const float*> CudaAdapterBackend::EmbeddingTable() {
  const kernels::FrozenWeight& embedding = base_.matrix(layout_.embed_tokens());
  if (embedding.format == WeightFormat::kFloat32) {
    return static_cast<const float*>(embedding.values);
  }
  if (absl::Status status = cuda::DecodeFrozenWeight(embedding, decoded_.data()); !status.ok()) {
    return status;
  }
  return decoded_.data();
}

absl::Status CudaAdapterBackend::Forward(const PassShape& s, bool /*bf16*/, bool training) {
  absl::StatusOr<const float*> table = EmbeddingTable();
  if (!table.ok()) return table.status();
  if (absl::Status status =
          cuda::EmbeddingForward(tokens_.data(), *table, layers_[0].input.data(), s.rows, s.hidden);
      !status.ok()) {
    return status;
  }
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
    const auto kept = training ? static_cast<size_t>(i) : 0;
    LayerBuffers& layer = layers_[kept];
    float* next = i + 1 == config_.num_hidden_layers
                      ? final_input_.data()
                      : layers_[training ? static_cast<size_t>(i + 1) : 0].input.data();
    if (absl::Status status = AdaptedAttention(i, s, layer, lows_[kept]); !status.ok()) {
      return status;
    }
    if (absl::Status status = AdaptedMoe(i, s, training, layer, lows_[kept], next); !status.ok()) {
      return status;
    }
  }
  absl::Status status = cuda::RmsNormForward(
      final_input_.data(), base_.vector(layout_.final_norm()), final_norm_.data(), nullptr,
      final_rstd_.data(), s.rows, s.hidden, static_cast<float>(config_.rms_norm_eps));
  status.Update(cuda::FrozenLinearForward(blas_, final_norm_.data(),
                                          base_.matrix(layout_.lm_head()), logits_.data(), s.rows,
                                          decoded_.data()));
  return status;
}

absl::Status CudaAdapterBackend::AdaptedAttention(int64_t index, const PassShape& s,
                                                  LayerBuffers& layer, LowBuffers& low) {
  absl::Status status = AdaptedQkv(index, s, layer, low);
  status.Update(RotateAndAttend(s, layer, cuda::AttentionArithmetic::kFloat32));
  status.Update(AdaptedAttentionOutput(index, s, layer, low));
  return status;
}

absl::Status CudaAdapterBackend::AdaptedQkv(int64_t index, const PassShape& s, LayerBuffers& layer,
                                            LowBuffers& low) {
  const LayerOffsets& w = layout_.layer(index);
  const LayerSites& sites = sites_.layer(index);
  absl::Status status = cuda::RmsNormForward(
      layer.input.data(), base_.vector(w.input_layernorm), layer.attention_norm.data(), nullptr,
      layer.attention_rstd.data(), s.rows, s.hidden, static_cast<float>(config_.rms_norm_eps));
  const float* n1 = layer.attention_norm.data();
  status.Update(Linear(w.q_proj, sites.q_proj, n1, s.rows, LowAt(low.q_proj, sites.q_proj, 0),
                       layer.q.data()));
  status.Update(Linear(w.k_proj, sites.k_proj, n1, s.rows, LowAt(low.k_proj, sites.k_proj, 0),
                       layer.k.data()));
  status.Update(Linear(w.v_proj, sites.v_proj, n1, s.rows, LowAt(low.v_proj, sites.v_proj, 0),
                       layer.v.data()));
  return status;
}

absl::Status CudaAdapterBackend::AdaptedAttentionOutput(int64_t index, const PassShape& s,
                                                        LayerBuffers& layer, LowBuffers& low) {
  const LayerOffsets& w = layout_.layer(index);
  const LayerSites& sites = sites_.layer(index);
  absl::Status status = Linear(w.o_proj, sites.o_proj, layer.attention_output.data(), s.rows,
                               LowAt(low.o_proj, sites.o_proj, 0), layer.residual.data());
  status.Update(cuda::AddInto(layer.residual.data(), layer.input.data(), s.rows * s.hidden));
  return status;
}

absl::Status CudaAdapterBackend::AdaptedMoe(int64_t index, const PassShape& s, bool training,
                                            LayerBuffers& layer, LowBuffers& low, float* out) {
  const LayerOffsets& w = layout_.layer(index);
  const LayerSites& sites = sites_.layer(index);
  const int64_t h = s.hidden;
  absl::Status status = cuda::RmsNormForward(
      layer.residual.data(), base_.vector(w.post_attention_layernorm), layer.moe_norm.data(),
      nullptr, layer.moe_rstd.data(), s.rows, h, static_cast<float>(config_.rms_norm_eps));
  // The router is the adapters' trained copy.
  status.Update(LinearForward(Activation(false, layer.moe_norm.data(), nullptr),
                              Weight(sites.router, false, true), layer.router_logits.data(), s.rows,
                              h, s.experts));
  status.Update(RouteToExperts(index, s, /*bf16=*/false, training, layer));
  if (!status.ok()) return status;

  // Each expert's MLP over its block of slots: one frozen product and one low-rank branch per
  // linear and expert (an expert's adapter is its own).
  const int64_t inner = s.inner;
  for (int64_t e = 0; e < s.experts && status.ok(); ++e) {
    const int64_t first = layer.host_offsets[static_cast<size_t>(e)];
    const int64_t count = layer.host_offsets[static_cast<size_t>(e) + 1] - first;
    if (count == 0) continue;
    const ExpertSites& expert = sites.experts[static_cast<size_t>(e)];
    status = MlpForward({w.experts[static_cast<size_t>(e)], expert},
                        {.in = layer.expert_input.data() + first * h,
                         .gate = layer.expert_gate.data() + first * inner,
                         .up = layer.expert_up.data() + first * inner,
                         .act = layer.expert_act.data() + first * inner,
                         .low_w1 = LowAt(low.expert_w1, expert.w1, first),
                         .low_w3 = LowAt(low.expert_w3, expert.w3, first),
                         .low_w2 = LowAt(low.expert_w2, expert.w2, first)},
                        layer.expert_output.data() + first * h, count, inner);
  }
  if (s.shared > 0) {
    status.Update(MlpForward({w.shared, sites.shared},
                             {.in = layer.moe_norm.data(),
                              .gate = layer.shared_gate.data(),
                              .up = layer.shared_up.data(),
                              .act = layer.shared_act.data(),
                              .low_w1 = LowAt(low.shared_w1, sites.shared.w1, 0),
                              .low_w3 = LowAt(low.shared_w3, sites.shared.w3, 0),
                              .low_w2 = LowAt(low.shared_w2, sites.shared.w2, 0)},
                             out, s.rows, s.shared));
    status.Update(cuda::AddInto(out, layer.residual.data(), s.rows * h));
  } else {
    status.Update(cuda::CopyDeviceToDevice(out, layer.residual.data(),
                                           static_cast<size_t>(s.rows * h) * sizeof(float)));
  }
  status.Update(cuda::CombineExpertOutputs(layer.expert_output.data(), layer.expert_weight.data(),
                                           layer.permuted_slot.data(), out, s.rows, s.top_k, h));
  return status;
}

}  // namespace internal

absl::StatusOr<std::unique_ptr<TrainingBackend>> CreateCudaAdapterBackend(
    const FrozenBase& base, LoraAdapters& adapters, const BackendOptions& options) {
  if (options.proximal_coefficient != 0) {
    return absl::InvalidArgumentError("adapter training takes no proximal term");
  }
  if (options.devices > 1) {
    return absl::InvalidArgumentError(
        "adapter training runs on one GPU: the base is what takes the memory, and every replica "
        "would hold it whole");
  }
  if (absl::Status status = CheckAdaptersFit(base.config(), adapters); !status.ok()) {
    return status;
  }
  if (absl::Status status = CheckCudaTakesModel(base.config()); !status.ok()) return status;
  if (absl::Status status = cuda::SetDevice(0); !status.ok()) return status;
  absl::StatusOr<cuda::Blas> blas = cuda::Blas::Create(cuda::GroupedProducts::kGroupedCall);
  if (!blas.ok()) return blas.status();
  absl::StatusOr<internal::DeviceBase> device_base = internal::DeviceBase::Upload(base);
  if (!device_base.ok()) return device_base.status();
  // The base's format sets the arithmetic: products are fp32 over its decoded weights, and
  // nothing of a whole-model trainable set applies (embeddings never train).
  BackendOptions adapter_options;
  adapter_options.adamw = options.adamw;
  adapter_options.devices = 1;
  auto backend = std::make_unique<internal::CudaAdapterBackend>(
      *std::move(device_base), adapters, adapter_options, 0, *std::move(blas));
  if (absl::Status status = backend->Initialize(); !status.ok()) return status;
  return std::unique_ptr<TrainingBackend>(std::move(backend));
}

}  // namespace fedmoe::model
