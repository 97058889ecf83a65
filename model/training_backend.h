// Where local training computes: the steps of model/trainer.h's loop (a micro-batch's gradient,
// the optimizer step, a validation batch's loss) behind one interface, with a CPU twin (this
// file, on the kernels/cpu path of forward.h and backward.h) and a CUDA twin
// (model/cuda_training.h). The loop itself (data, schedule, reporting) is the same for both.
#ifndef FEDMOE_MODEL_TRAINING_BACKEND_H_
#define FEDMOE_MODEL_TRAINING_BACKEND_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "model/backward.h"
#include "model/data.h"
#include "model/forward.h"
#include "model/frozen_base.h"
#include "model/lora.h"
#include "model/optimizer.h"
#include "model/parameters.h"

namespace fedmoe::model {

// What a backend trains and how.
struct BackendOptions {
  TrainableSet trainable;
  AdamWOptions adamw;
  // Of the weight products while training (forward.h); evaluation is always fp32.
  MatMulPrecision matmul_precision = MatMulPrecision::kFloat32;
  // GPUs for data-parallel training (CUDA only): each micro-batch's sequences are split among
  // them and their gradients summed (NCCL) before every optimizer step. 0: every visible GPU.
  int devices = 0;
  // CUDA only, with bf16 products: attention's products on the tensor cores, with TF32 operands
  // (kernels/cuda/attention.h), several times faster than fp32 ones and finer than the bf16
  // weights around them. False keeps them fp32, as on the CPU, for tests that compare the two
  // backends number for number. fp32 training always keeps them fp32.
  bool tensor_core_attention = true;
  // CUDA only: each layer's expert products as one cuBLAS product each on concurrent streams,
  // rather than one grouped call (kernels/cuda/gemm.h's GroupedProducts). The same products;
  // which runs faster is for a GPU to say (bench/train_step --expert-products).
  bool concurrent_expert_products = false;
  // Ditto's proximal term (trainer.h's ProximalTerm): ApplyGradients adds
  // 2·proximal_coefficient·(θ − proximal_anchor) to the gradient before it clips and steps. The
  // anchor is in the parameters' layout and outlives the backend; 0 turns the term off.
  double proximal_coefficient = 0;
  std::span<const float> proximal_anchor{};
};

// InvalidArgument when the options' proximal anchor is set and does not fit `parameters`.
absl::Status CheckProximalAnchor(const BackendOptions& options, const ModelParameters& parameters);

// What a DP-SGD micro-batch reports besides its loss.
struct PrivateBatch {
  // Each record's gradient norm before clipping, in record order.
  std::vector<double> record_norms;
  // [layers·experts], added to: Σ over the records of routing_scale times the record's routing
  // fractions (its slots routed to each expert of a layer over its slots in that layer). Each
  // record's part has L2 norm at most routing_scale·√layers, whatever the record, so the sum
  // can be noised with the gradient (trainer.cc).
  std::vector<double> routing_sum;
};

// Adds routing_scale times one record's routing fractions to `routing_sum`, from its slots per
// [layer, expert] (`slots`, layers·experts of them) and `slots_per_layer` = its rows × top-k.
void AddRecordRouting(std::span<const int64_t> slots, int64_t slots_per_layer, double routing_scale,
                      std::vector<double>& routing_sum);

// Adds a pass's routed token slots per [layer][expert] into `slots`.
void AddExpertSlots(const ForwardPass& pass, std::vector<std::vector<int64_t>>& slots);

// Adds each record's routing fractions in a pass (AddRecordRouting) into `routing_sum`.
void AddRecordsRouting(const ForwardPass& pass, const MoeConfig& config, const RecordRows& records,
                       double routing_scale, std::vector<double>& routing_sum);

// DP-SGD's micro-batch around either backend's backward pass: begins `clipping` over `records`,
// runs `backward` with per-record clipping on, finishes the clipping (its sum goes where the
// backward pass said), and reports the records' norms and routing fractions into `out`.
absl::StatusOr<LossBreakdown> ClippedBackward(
    PerRecordClipping& clipping, const RecordRows& records, const BackwardOptions& options,
    double clip_norm, double routing_scale, const ForwardPass& pass, const MoeConfig& config,
    PrivateBatch& out,
    const std::function<absl::StatusOr<LossBreakdown>(const BackwardOptions&)>& backward);

class TrainingBackend {
 public:
  virtual ~TrainingBackend() = default;

  // Forward and backward over one micro-batch, adding its gradient into the step's, and its
  // routed token slots into the routing histogram. Returns its loss (backward.h's breakdown).
  virtual absl::StatusOr<LossBreakdown> AccumulateGradients(const Batch& batch,
                                                            const BackwardOptions& options) = 0;

  // DP-SGD's micro-batch: forward and backward over a batch whose rows belong to `records`
  // (each record's windows side by side), adding the sum of the records' gradients each clipped
  // to L2 norm clip_norm, and their routing fractions times routing_scale into
  // out.routing_sum (sized by the caller). Each record's loss is its mean cross-entropy plus its
  // own balance term (backward.h's BackwardOptions::per_record). Returns the loss with its
  // cross-entropy summed over the records' predictions and divided by options.predictions_in_step,
  // and writes each record's norm before clipping. The CPU takes norms by Gram matrices where
  // cheaper (per_record_clipping.h); the GPU runs one backward pass per record into a buffer of its
  // own. fp32 products only.
  virtual absl::StatusOr<LossBreakdown> AccumulateClippedGradients(
      const Batch& batch, const RecordRows& records, const BackwardOptions& options,
      double clip_norm, double routing_scale, PrivateBatch& out) = 0;

  // Hands the step's gradient so far, in the parameters' layout, to `update` to change in place
  // (DP-SGD's noise and averaging), where it lives: the GPU copies it out and back.
  virtual absl::Status UpdateStepGradients(
      const std::function<absl::Status(std::span<float>)>& update) = 0;

  // Clips the step's gradient to max_norm (≤ 0: no clipping), takes one AdamW step at
  // `learning_rate` and zeroes the gradient for the next step. Returns the norm before clipping.
  virtual absl::StatusOr<double> ApplyGradients(double learning_rate, double max_norm) = 0;

  // The summed next-token cross-entropy of a batch under the current parameters, in fp32.
  virtual absl::StatusOr<LossSum> Evaluate(const Batch& batch) = 0;

  // Routed token slots per [layer][expert] over every AccumulateGradients so far.
  virtual absl::StatusOr<std::vector<std::vector<int64_t>>> ExpertSlots() = 0;

  // The step's gradient so far, in the parameters' layout (zero outside the trainable set):
  // for tests that compare backends, and for debugging.
  virtual absl::Status CopyGradientsTo(std::span<float> gradients) = 0;

  // Writes the trained parameters into `parameters` (same config). A backend that trains a
  // copy elsewhere (a GPU) copies it back; the CPU one trains the caller's parameters in place.
  virtual absl::Status CopyParametersTo(ModelParameters& parameters) = 0;

  // Writes the trained adapters into `adapters` (the layout trained): the GPU's adapter backend
  // copies them back; the CPU's trains the caller's in place. Unimplemented for a backend of
  // whole parameters.
  virtual absl::Status CopyAdaptersTo(LoraAdapters& /*adapters*/) {
    return absl::UnimplementedError("this backend trains whole parameters, not adapters");
  }
};

// Trains `adapters` (every B and router, and A under plain LoRA) in place on the CPU, over a
// frozen base: adapted_model.h's passes. Both must outlive the backend. The base's format sets
// the products' arithmetic, so options.matmul_precision is not taken; neither are a trainable
// set or a proximal term (InvalidArgument). CopyParametersTo is Unimplemented: there are no
// full parameters to copy.
absl::StatusOr<std::unique_ptr<TrainingBackend>> CreateCpuAdapterBackend(
    const FrozenBase& base, LoraAdapters& adapters, const BackendOptions& options);

// Trains `parameters` in place on the CPU; they must outlive the backend. Unimplemented for
// bf16 products on a CPU without them (forward.h).
absl::StatusOr<std::unique_ptr<TrainingBackend>> CreateCpuTrainingBackend(
    ModelParameters& parameters, const BackendOptions& options);

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_TRAINING_BACKEND_H_
