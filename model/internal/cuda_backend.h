// CudaTrainingBackend, model/cuda_training.h's backend on one GPU, shared by the files that
// implement it: cuda_training.cc (set-up, the optimizer step, linear products and buffers),
// cuda_forward.cc (the forward pass and the losses), cuda_backward.cc (the backward pass and
// per-record clipping) and cuda_data_parallel.cc (one replica per GPU). They mirror forward.cc
// and backward.cc on the CPU. Internal to model/.
#ifndef FEDMOE_MODEL_INTERNAL_CUDA_BACKEND_H_
#define FEDMOE_MODEL_INTERNAL_CUDA_BACKEND_H_

#include <algorithm>
#include <cmath>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/dense.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/axpy.h"
#include "kernels/cuda/collectives.h"
#include "kernels/cuda/cross_entropy.h"
#include "kernels/cuda/dense.h"
#include "kernels/cuda/device_memory.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/moe_routing.h"
#include "kernels/cuda/optimizer.h"
#include "kernels/device.h"
#include "model/cuda_training.h"

namespace fedmoe::model::internal {

namespace cuda = kernels::cuda;
using cuda::DeviceArray;
using cuda::DeviceBf16;
using cuda::ElementType;
using cuda::GemmProblem;
using cuda::MatrixOperand;

// Grows `array` to at least `size` values; what it held is not kept. Buffers only grow, so a
// run of same-shaped batches allocates once.
template <typename T>
absl::Status Reserve(DeviceArray<T>& array, int64_t size) {
  if (static_cast<int64_t>(array.size()) >= size) return absl::OkStatus();
  array = DeviceArray<T>();  // the old and the new one need not fit side by side
  absl::StatusOr<DeviceArray<T>> grown = DeviceArray<T>::Allocate(static_cast<size_t>(size));
  if (!grown.ok()) return grown.status();
  array = std::move(*grown);
  return absl::OkStatus();
}

// bf16 buffers are reserved only for passes with bf16 products and fp32 operand buffers only for
// fp32 ones; the other stays empty and its pointer null.
template <typename T>
absl::Status ReserveIf(bool wanted, DeviceArray<T>& array, int64_t size) {
  return wanted ? Reserve(array, size) : absl::OkStatus();
}

template <typename T>
T* DataIf(bool wanted, DeviceArray<T>& array) {
  return wanted ? array.data() : nullptr;
}

// One layer's saved activations, forward.h's LayerActivations on the device. Attention keeps
// each row's log-sum-exp in place of the probabilities.
struct LayerBuffers {
  DeviceArray<float> input;  // [rows, H]
  DeviceArray<float> attention_norm, attention_rstd;
  DeviceArray<DeviceBf16> attention_norm_bf16;
  DeviceArray<float> q, k, v, attention_output, logsumexp;
  DeviceArray<DeviceBf16> attention_output_bf16;
  DeviceArray<float> residual, moe_norm, moe_rstd;
  DeviceArray<DeviceBf16> moe_norm_bf16;
  DeviceArray<float> router_logits, router_probs, expert_weight;
  DeviceArray<int32_t> expert_index, offsets, slot_token, permuted_slot;
  DeviceArray<float> expert_input;  // [slots, H], fp32 passes
  DeviceArray<DeviceBf16> expert_input_bf16;
  DeviceArray<float> expert_gate, expert_up, expert_act;  // [slots, I]
  DeviceArray<DeviceBf16> expert_act_bf16;
  DeviceArray<float> expert_output;  // [slots, H]
  DeviceArray<float> shared_gate, shared_up, shared_act;
  DeviceArray<DeviceBf16> shared_act_bf16;
  // offsets on the host: the grouped products' sizes, read back once per layer and pass.
  std::vector<int32_t> host_offsets;
};

// The backward pass's buffers, backward.h's BackwardScratch on the device.
struct GradientBuffers {
  DeviceArray<float> d_logits, d_stream, d_norm, d_residual, d_attention, d_q, d_k, d_v;
  DeviceArray<DeviceBf16> d_out_bf16, d_q_bf16, d_k_bf16, d_v_bf16;
  DeviceArray<float> d_expert_out;
  DeviceArray<DeviceBf16> d_expert_out_bf16;
  DeviceArray<float> d_expert_weight, d_expert_in;
  DeviceArray<float> d_act, d_gate, d_up;  // [max(slots·I, rows·S)]
  DeviceArray<DeviceBf16> d_gate_bf16, d_up_bf16;
  DeviceArray<float> balance_gradient;  // [layers, experts], per step
  DeviceArray<float> d_probs, d_router_logits;
  DeviceArray<float> norm_scratch, attention_scratch;
};

// The widths of one pass (forward.h's names: H, Q, K, E, k, I, S).
struct PassShape {
  int64_t batch = 0, seq_len = 0, rows = 0, slots = 0;
  int64_t hidden = 0, q_width = 0, kv_width = 0, experts = 0, top_k = 0, inner = 0, shared = 0;
  int64_t vocab = 0;
  cuda::AttentionShape attention;
};

// A layer's expert weights by kind: w1() is e ↦ expert e's w1 offset, and so on.
struct ExpertWeights {
  const LayerOffsets& layer;
  auto w1() const {
    return [this](int64_t e) { return layer.experts[static_cast<size_t>(e)].w1; };
  }
  auto w2() const {
    return [this](int64_t e) { return layer.experts[static_cast<size_t>(e)].w2; };
  }
  auto w3() const {
    return [this](int64_t e) { return layer.experts[static_cast<size_t>(e)].w3; };
  }
};

class CudaTrainingBackend : public TrainingBackend {
 public:
  // On GPU `device`, with a cuBLAS handle made there.
  CudaTrainingBackend(const MoeConfig& config, const BackendOptions& options, int device,
                      cuda::Blas blas)
      : config_(config),
        layout_(config),
        options_(options),
        device_(device),
        blas_(std::move(blas)) {}
  ~CudaTrainingBackend() override = default;

  // Uploads the parameters and allocates what does not depend on the batch's shape.
  absl::Status Initialize(const ModelParameters& parameters) {
    return Initialize(parameters.values(), TrainedRanges(layout_, options_.trainable));
  }

  // The same for any buffer of trained values (the adapters' buffer: cuda_adapter_backend.h),
  // of which `trained` are stepped.
  absl::Status Initialize(std::span<const float> values, const std::vector<TrainedRange>& trained);

  absl::StatusOr<LossBreakdown> AccumulateGradients(const Batch& batch,
                                                    const BackwardOptions& options) override;

  // One backward pass per record, each into a buffer of its own whose norm is taken on the
  // device; the clipped gradient is then added to the step's. The Gram norms and book-keeping
  // of the CPU twin (per_record_clipping.h) are not on the GPU yet: this is its materialised
  // form, exact and simple, and slower where records are many and short.
  absl::StatusOr<LossBreakdown> AccumulateClippedGradients(const Batch& batch,
                                                           const RecordRows& records,
                                                           const BackwardOptions& options,
                                                           double clip_norm, double routing_scale,
                                                           PrivateBatch& out) override;

  absl::Status UpdateStepGradients(
      const std::function<absl::Status(std::span<float>)>& update) override;

  absl::StatusOr<double> ApplyGradients(double learning_rate, double max_norm) override;

  absl::StatusOr<LossSum> Evaluate(const Batch& batch) override;

  absl::StatusOr<std::vector<std::vector<int64_t>>> ExpertSlots() override;

  absl::Status CopyGradientsTo(std::span<float> gradients) override {
    if (absl::Status selected = cuda::SetDevice(device_); !selected.ok()) return selected;
    return gradients_.CopyTo(gradients);
  }

  absl::Status CopyParametersTo(ModelParameters& parameters) override {
    if (parameters.layout().total_size() != layout_.total_size()) {
      return absl::InvalidArgumentError("the parameters' config differs from the trained model's");
    }
    if (absl::Status selected = cuda::SetDevice(device_); !selected.ok()) return selected;
    return parameters_.CopyTo(parameters.values());
  }

  // This replica's gradient buffer on its device, in the parameters' layout: what data
  // parallelism sums across replicas.
  float* gradient_buffer() { return gradients_.data(); }

 protected:
  bool training_bf16() const { return options_.matmul_precision == MatMulPrecision::kBfloat16; }

  float* Parameter(int64_t offset) { return parameters_.data() + offset; }
  // Where a tensor's gradient goes, or null when it is not trained.
  float* Gradient(int64_t offset, TensorRole role) {
    return options_.trainable.Includes(role) ? gradients_.data() + offset : nullptr;
  }
  // A weight [out, in] as the b operand of x·weightᵀ (stored transposed) or of d_y·weight.
  MatrixOperand Weight(int64_t offset, bool bf16, bool transposed) {
    if (bf16) return {parameters_bf16_.data() + offset, ElementType::kBfloat16, transposed};
    return {parameters_.data() + offset, ElementType::kFloat32, transposed};
  }
  static MatrixOperand Activation(bool bf16, const float* fp32, const DeviceBf16* half,
                                  bool transposed = false) {
    if (bf16) return {half, ElementType::kBfloat16, transposed};
    return {fp32, ElementType::kFloat32, transposed};
  }

  // out [rows, out_features] = in · weightᵀ.
  absl::Status LinearForward(MatrixOperand in, MatrixOperand weight, float* out, int64_t rows,
                             int64_t in_features, int64_t out_features);

  // d_in (+)= d_out · weight (accumulating when asked), d_weight += d_outᵀ · in; nulls skipped.
  // `weight` is stored [out, in], not transposed; d_out is [rows, out].
  absl::Status LinearBackward(MatrixOperand in, MatrixOperand weight, MatrixOperand d_out,
                              float* d_in, bool accumulate_d_in, float* d_weight, int64_t rows,
                              int64_t in_features, int64_t out_features);

  // LinearForward and LinearBackward per expert, over each expert's block of slots, with one
  // grouped cuBLAS call per product: `weight(e)` is expert e's weight [out, in].
  template <typename WeightOf>
  absl::Status ExpertLinearForward(const std::vector<int32_t>& offsets, MatrixOperand in,
                                   WeightOf weight, bool bf16, float* out, int64_t in_features,
                                   int64_t out_features) {
    return ExpertProducts(offsets, false, [&](int64_t e, int64_t first, int64_t count) {
      return GemmProblem{.a = Offset(in, first * in_features),
                         .b = Weight(weight(e), bf16, /*transposed=*/true),
                         .c = out + first * out_features,
                         .m = count,
                         .n = out_features,
                         .k = in_features};
    });
  }

  // d_in (+)= d_out·weight unless d_in is null; the weight's gradient += d_outᵀ·in when
  // `train`.
  template <typename WeightOf>
  absl::Status ExpertLinearBackward(const std::vector<int32_t>& offsets, MatrixOperand in,
                                    WeightOf weight, bool bf16, MatrixOperand d_out, float* d_in,
                                    bool accumulate_d_in, bool train, int64_t in_features,
                                    int64_t out_features) {
    absl::Status status;
    if (d_in != nullptr) {
      status.Update(
          ExpertProducts(offsets, accumulate_d_in, [&](int64_t e, int64_t first, int64_t count) {
            return GemmProblem{.a = Offset(d_out, first * out_features),
                               .b = Weight(weight(e), bf16, /*transposed=*/false),
                               .c = d_in + first * in_features,
                               .m = count,
                               .n = in_features,
                               .k = out_features};
          }));
    }
    if (train) {
      status.Update(ExpertProducts(offsets, true, [&](int64_t e, int64_t first, int64_t count) {
        return GemmProblem{.a = Transposed(Offset(d_out, first * out_features)),
                           .b = Offset(in, first * in_features),
                           .c = gradients_.data() + weight(e),
                           .m = out_features,
                           .n = in_features,
                           .k = count};
      }));
    }
    return status;
  }

  // One product per expert, in one grouped call: make(expert, first slot, slot count).
  template <typename MakeProblem>
  absl::Status ExpertProducts(const std::vector<int32_t>& offsets, bool accumulate,
                              MakeProblem make) {
    problems_.clear();
    for (size_t e = 0; e + 1 < offsets.size(); ++e) {
      problems_.push_back(
          make(static_cast<int64_t>(e), int64_t{offsets[e]}, int64_t{offsets[e + 1] - offsets[e]}));
    }
    return blas_.GroupedMatMul(problems_, accumulate);
  }

  // The widths of a pass over `batch` sequences of `seq_len` tokens.
  PassShape PassShapeOf(int64_t batch, int64_t seq_len) const;
  // RoPE's cos and sin tables for positions [0, positions) to the device.
  absl::Status UploadRope(int64_t positions);

  // Checks the batch, uploads its tokens and targets, and sizes the forward buffers.
  absl::StatusOr<PassShape> Prepare(const Batch& batch);

  absl::Status ReserveLayer(LayerBuffers& layer, const PassShape& s, bool bf16);

  virtual absl::Status ReserveBackward(const PassShape& s, bool bf16);

  // The forward pass's buffers: every layer's for training, the first layer's alone (reused by
  // all) for evaluation.
  virtual absl::Status ReserveForward(const PassShape& s, bool bf16, bool training);

  // A device out of memory for a batch's activations says so, and what to change. The
  // half-grown buffers are let go: kept, they would crowd out the next batch, which may be one
  // that fit before. The model, its gradient and optimizer state stay.
  absl::Status BatchTooLarge(const PassShape& s, const absl::Status& status);
  // Lets go of every buffer a pass's shape sized (BatchTooLarge's release).
  virtual void ReleaseActivations();

  // The forward pass over the uploaded tokens, into buffers ReserveForward sized. Training
  // keeps every layer's activations and counts the routing; evaluation reuses the first
  // layer's buffers for all layers.
  virtual absl::Status Forward(const PassShape& s, bool bf16, bool training);

  cuda::AttentionArithmetic AttentionArithmeticFor(bool bf16) const {
    return bf16 && options_.tensor_core_attention ? cuda::AttentionArithmetic::kTensorFloat32
                                                  : cuda::AttentionArithmetic::kFloat32;
  }

  absl::Status AttentionBlock(const LayerOffsets& w, const PassShape& s, bool bf16,
                              LayerBuffers& layer);
  // RoPE on layer.q and layer.k, then causal attention into layer.attention_output: the middle
  // of both models' attention blocks.
  absl::Status RotateAndAttend(const PassShape& s, LayerBuffers& layer,
                               cuda::AttentionArithmetic arithmetic);

  absl::Status MoeBlock(int64_t index, const PassShape& s, bool bf16, bool training,
                        LayerBuffers& layer, float* out);

  // A MoE block's routing once its router's logits are in layer.router_logits: the top-k, the
  // expert permutation, the routing histogram (training), the normed rows gathered by expert,
  // and each expert's slot offsets read back to size the products.
  absl::Status RouteToExperts(int64_t index, const PassShape& s, bool bf16, bool training,
                              LayerBuffers& layer);

  static MatrixOperand Offset(MatrixOperand operand, int64_t values) {
    const size_t bytes =
        operand.type == ElementType::kBfloat16 ? sizeof(DeviceBf16) : sizeof(float);
    operand.data = static_cast<const char*>(operand.data) + values * static_cast<int64_t>(bytes);
    return operand;
  }

  absl::StatusOr<LossSum> SumLosses(const Batch& batch, int64_t rows);

  // backward.h's L_bal averaged over layers, from the routing counts and the probabilities'
  // column sums; with the balance term on (scale ≠ 0), every layer's gradient with respect to
  // the probabilities (one value per expert, the same on every row) goes to the device in one
  // copy, into scratch_.balance_gradient [layers, experts].
  absl::StatusOr<double> Balance(const PassShape& s, double scale, int64_t private_experts);

  // The balance term's weight per layer in a step's loss.
  double BalanceScale(const BackwardOptions& options) const {
    return options.balance_coefficient * options.step_share /
           static_cast<double>(config_.num_hidden_layers);
  }

  // The start of either model's backward pass: the loss's gradient with respect to the logits
  // into scratch_.d_logits, the balance term's into scratch_.balance_gradient (Balance), and
  // the loss.
  absl::StatusOr<LossBreakdown> LossGradient(const PassShape& s, const Batch& batch,
                                             const BackwardOptions& options);

  // The loss's gradient into gradients_ after Forward; returns the loss.
  virtual absl::StatusOr<LossBreakdown> Backward(const PassShape& s, const Batch& batch,
                                                 const BackwardOptions& options, bool bf16);

  // MoE block: out = residual + shared(n2) + Σ_j w_j·expert_j(n2), n2 = rmsnorm(residual), with
  // d_stream the gradient of out. Leaves the gradient of the block's input in d_residual.
  absl::Status MoeBackward(int64_t index, const PassShape& s, bool bf16, bool need_input_gradient,
                           const float* balance_gradient);

  // Attention block: residual = input + o_proj(attention(...)), with d_residual the gradient
  // of residual. Leaves the gradient of the layer's input in d_stream.
  absl::Status AttentionBackward(int64_t index, const PassShape& s, bool bf16);

  static MatrixOperand Transposed(MatrixOperand operand) {
    operand.transposed = true;
    return operand;
  }

  MoeConfig config_;
  ModelLayout layout_;
  BackendOptions options_;
  int device_;
  cuda::Blas blas_;
  std::vector<GemmProblem> problems_;

  DeviceArray<float> parameters_, gradients_, first_moment_, second_moment_;
  // DP-SGD: one record's gradient at a time, allocated at the first private micro-batch.
  DeviceArray<float> record_gradients_;
  // Ditto's anchor (BackendOptions::proximal_anchor), when its term is on.
  DeviceArray<float> proximal_anchor_;
  DeviceArray<DeviceBf16> parameters_bf16_;
  std::unique_ptr<cuda::DeviceRanges> trainable_ranges_;
  int64_t steps_ = 0;
  DeviceArray<double> norm_partials_, norm_squared_;
  DeviceArray<int64_t> expert_counts_;    // [layers, experts]
  DeviceArray<double> probability_sums_;  // [layers, experts] of the last training pass
  DeviceArray<double> column_sum_scratch_;

  DeviceArray<int32_t> tokens_, targets_, permutation_scratch_;
  DeviceArray<float> rope_cos_, rope_sin_;
  cuda::DeviceRopeTable RopeTable() const {
    return {.cos = rope_cos_.data(), .sin = rope_sin_.data(), .head_dim = config_.head_dim};
  }
  int64_t rope_positions_ = 0;
  std::vector<LayerBuffers> layers_;
  DeviceArray<float> final_input_, final_norm_, final_rstd_, logits_, losses_;
  GradientBuffers scratch_;
};

// DataParallelBackend over `replicas`, one per GPU of `clique` (cuda_data_parallel.cc).
std::unique_ptr<TrainingBackend> MakeDataParallelBackend(
    const ModelLayout& layout, const TrainableSet& trainable,
    std::vector<std::unique_ptr<CudaTrainingBackend>> replicas, cuda::DeviceClique clique);

}  // namespace fedmoe::model::internal

#endif  // FEDMOE_MODEL_INTERNAL_CUDA_BACKEND_H_
