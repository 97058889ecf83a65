// CudaAdapterBackend, the CUDA twin of the CPU adapter backend (adapter_backend.cc): LoRA
// adapters trained on one GPU over a frozen base held there compactly (issue [peft]). Shared by
// cuda_adapter_backend.cc (the device base, set-up and the forward pass) and
// cuda_adapter_backward.cc (the backward pass). Internal to model/.
//
// It is CudaTrainingBackend with another model inside: the trained buffer (parameters_,
// gradients_, AdamW's moments) is the adapters' buffer, and the forward and backward passes are
// adapted_model.cc's, step for step, on kernels/cuda. Everything around the passes is the whole
// model's: batch preparation, the activations' buffers, the losses and the balance term, the
// optimizer step, the routing histogram, and DP-SGD's per-record clipping (one backward pass
// per record). Products are fp32: each linear's base weight is decoded into one weight's fp32
// scratch at a time (kernels/cuda/frozen_linear.h), never the whole base.
#ifndef FEDMOE_MODEL_INTERNAL_CUDA_ADAPTER_BACKEND_H_
#define FEDMOE_MODEL_INTERNAL_CUDA_ADAPTER_BACKEND_H_

#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

#include "kernels/cuda/frozen_linear.h"
#include "kernels/cuda/lora.h"
#include "model/frozen_base.h"
#include "model/internal/cuda_backend.h"
#include "model/lora.h"

namespace fedmoe::model::internal {

// A frozen base on the device: each matrix's values (and INT8's scales) in the format the host
// holds them, and the fp32 norms and routers.
class DeviceBase {
 public:
  // Copies `base` to the current device. ResourceExhausted, saying how large the base is, when
  // it does not fit.
  static absl::StatusOr<DeviceBase> Upload(const FrozenBase& base);

  // The matrix at this layout offset, as a view of device memory.
  const kernels::FrozenWeight& matrix(int64_t offset) const { return matrices_.at(offset); }
  // The fp32 norm weight or router at this layout offset, on the device.
  const float* vector(int64_t offset) const { return vectors_.at(offset); }
  // The fp32 scratch that decoding the largest matrix takes (kernels/cuda/frozen_linear.h).
  int64_t decode_scratch() const { return decode_scratch_; }

 private:
  std::vector<DeviceArray<uint8_t>> storage_;
  std::vector<DeviceArray<float>> fp32_storage_;
  std::unordered_map<int64_t, kernels::FrozenWeight> matrices_;
  std::unordered_map<int64_t, const float*> vectors_;
  int64_t decode_scratch_ = 0;
};

// One layer's low-rank activations, adapted_model.h's LoraLayerActivations on the device.
struct LowBuffers {
  DeviceArray<float> q_proj, k_proj, v_proj, o_proj;
  DeviceArray<float> expert_w1, expert_w3, expert_w2;
  DeviceArray<float> shared_w1, shared_w3, shared_w2;
};

class CudaAdapterBackend final : public CudaTrainingBackend {
 public:
  CudaAdapterBackend(DeviceBase base, const LoraAdapters& adapters, const BackendOptions& options,
                     int device, cuda::Blas blas)
      : CudaTrainingBackend(adapters.model_config(), options, device, std::move(blas)),
        base_(std::move(base)),
        adapters_(adapters),
        sites_(adapters.layout()),
        lora_(adapters.config()) {}

  // Uploads the adapters and the optimizer state, and the decode scratch.
  absl::Status Initialize();

  absl::Status CopyParametersTo(ModelParameters&) override {
    return absl::UnimplementedError(
        "an adapter backend trains adapters and holds no full parameters");
  }

  absl::Status CopyAdaptersTo(LoraAdapters& adapters) override;

  // A sequence in a decode step: its new tokens, and its cached keys and values on the device.
  struct DecodeSequence {
    std::span<const int32_t> tokens;
    // Positions cached before the step.
    int64_t first = 0;
    // Per layer, room for [first + tokens.size(), kv_width] on the device.
    std::vector<float*> keys, values;
  };
  // generation.h's decode step on the device (cuda_generation.cc): runs every sequence's tokens
  // at the end of its cache, writes their keys and values there, and copies each sequence's
  // last row's logits to `logits` [sequences, vocab] on the host.
  absl::Status Decode(std::span<const DecodeSequence> sequences, std::span<float> logits);

 private:
  absl::Status ReserveForward(const PassShape& s, bool bf16, bool training) override;
  absl::Status ReserveBackward(const PassShape& s, bool bf16) override;
  void ReleaseActivations() override;
  absl::Status Forward(const PassShape& s, bool bf16, bool training) override;
  absl::StatusOr<LossBreakdown> Backward(const PassShape& s, const Batch& batch,
                                         const BackwardOptions& options, bool bf16) override;

  // adapted_model.cc's blocks: the attention half (layer.input → layer.residual) and the MoE
  // half (layer.residual → out).
  absl::Status AdaptedAttention(int64_t index, const PassShape& s, LayerBuffers& layer,
                                LowBuffers& low);
  // The attention half's ends, which training and decoding share: the norm and the q, k and v
  // products, before RoPE; and the o product with the residual, after attention.
  absl::Status AdaptedQkv(int64_t index, const PassShape& s, LayerBuffers& layer, LowBuffers& low);
  absl::Status AdaptedAttentionOutput(int64_t index, const PassShape& s, LayerBuffers& layer,
                                      LowBuffers& low);
  absl::Status AdaptedMoe(int64_t index, const PassShape& s, bool training, LayerBuffers& layer,
                          LowBuffers& low, float* out);
  // Their backward passes; need_input_gradient as in CudaTrainingBackend::MoeBackward.
  absl::Status AdaptedMoeBackward(int64_t index, const PassShape& s, bool need_input_gradient,
                                  const float* balance_gradient);
  absl::Status AdaptedAttentionBackward(int64_t index, const PassShape& s,
                                        bool need_input_gradient);

  // out [rows, out] = in·Ŵᵀ + s·(in·Aᵀ)·Bᵀ, keeping s·in·Aᵀ in `low` (null without an adapter).
  absl::Status Linear(int64_t weight, const LoraSite& site, const float* in, int64_t rows,
                      float* low, float* out);
  // Its backward: d_in (unless null) += the gradient through both branches; B's gradient (and
  // A's under plain LoRA) += into gradients_.
  absl::Status LinearBackward(int64_t weight, const LoraSite& site, const float* in,
                              const float* low, const float* d_out, int64_t rows, float* d_in);
  // One SwiGLU MLP over `rows` rows of `in`, from offsets into the layer's buffers.
  struct Mlp {
    const ExpertOffsets& weights;
    const ExpertSites& sites;
  };
  struct MlpRows {
    float* in;
    float* gate;
    float* up;
    float* act;
    float* low_w1;
    float* low_w3;
    float* low_w2;
  };
  absl::Status MlpForward(const Mlp& mlp, const MlpRows& at, float* out, int64_t rows,
                          int64_t inner);

  // The embedding table as fp32 on the device: the base's own when fp32, else decoded into the
  // scratch.
  absl::StatusOr<const float*> EmbeddingTable();

  // A [rows, rank] low-rank buffer of `buffer`, at row `first`, or null without an adapter.
  float* LowAt(DeviceArray<float>& buffer, const LoraSite& site, int64_t first) {
    return site.present() ? buffer.data() + first * lora_.rank : nullptr;
  }
  kernels::LoraShape ShapeOf(const LoraSite& site, int64_t rows) const {
    return {.rows = rows,
            .in_features = site.in_features,
            .out_features = site.out_features,
            .rank = lora_.rank,
            .scale = lora_.scaling()};
  }
  // Whether any attention projection has an adapter: then gradients flow below the first
  // layer's MoE block.
  bool AttentionAdapted() const;

  DeviceBase base_;
  const LoraAdapters& adapters_;
  LoraLayout sites_;
  LoraConfig lora_;
  DeviceArray<float> decoded_;  // one base weight in fp32
  DeviceArray<float> d_low_;    // [max(slots, rows), rank]
  // Decoding: each sequence's last row, and cached attention's scores.
  DeviceArray<float> last_rows_, cached_attention_scratch_;
  std::vector<LowBuffers> lows_;
};

}  // namespace fedmoe::model::internal

#endif  // FEDMOE_MODEL_INTERNAL_CUDA_ADAPTER_BACKEND_H_
