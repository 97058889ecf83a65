// Local training on one GPU: the CUDA twin of the CPU backend, on kernels/cuda. The whole
// replica lives on the device: fp32 master weights, their bf16 working copy (bf16 products),
// the gradient, AdamW's moments, every activation the backward pass reads, and the routing
// histogram. A step crosses to the host only for what it reports (the losses, the gradient
// norm) and for each layer's per-expert token counts, which size the grouped expert products.
//
// Same arithmetic as forward.h and backward.h, in the same precisions: with bf16 products the
// experts and the attention projections multiply bf16 operands with fp32 accumulation; the
// router, the output head, norms and the loss stay fp32. Attention is fused
// (kernels/cuda/attention.h): it keeps each row's log-sum-exp, not the probabilities; with bf16
// products it runs on the tensor cores with TF32 operands unless
// BackendOptions::tensor_core_attention is off, with fp32 ones it is fp32 as on the CPU.
//
// Built twice from one source: against the CUDA kernels (fedmoe_model_cuda, with nvcc) and
// against the CPU simulator of CUDA (fedmoe_model_cuda_sim), where its tests run without a GPU.
#ifndef FEDMOE_MODEL_CUDA_TRAINING_H_
#define FEDMOE_MODEL_CUDA_TRAINING_H_

#include <memory>

#include "absl/status/statusor.h"
#include "model/training_backend.h"

namespace fedmoe::model {

// With several GPUs (options.devices), training is data-parallel: one replica per GPU, each
// micro-batch's sequences split among them, their gradients summed with NCCL before every
// optimizer step, which each replica then takes identically. A micro-batch over n GPUs is
// gradient accumulation over n smaller micro-batches on one: the same gradient, with the
// balance loss taken per share (backward.h).

// OK when the CUDA kernels can train a model of this config; else InvalidArgument, saying what
// they do not take (head_dim other than 16, 32, 64 or 128; more than kMaxExperts experts).
absl::Status CheckCudaTakesModel(const MoeConfig& config);

// Uploads `parameters` and allocates the optimizer state on each device used. The caller's
// parameters are not touched until CopyParametersTo. InvalidArgument for a model the kernels
// do not take (CheckCudaTakesModel); ResourceExhausted when a device runs out of memory;
// Unimplemented for several GPUs in a build without NCCL.
absl::StatusOr<std::unique_ptr<TrainingBackend>> CreateCudaTrainingBackend(
    const ModelParameters& parameters, const BackendOptions& options);

// Trains `adapters` (every B and router, and A under plain LoRA) on one GPU over a frozen base
// uploaded there in its own format: the CUDA twin of training_backend.h's
// CreateCpuAdapterBackend, with the same arithmetic (fp32 products over each base weight decoded
// in turn) and the same refusals. The base need not outlive the backend; `adapters` must, and
// take the trained values from CopyAdaptersTo. One GPU only (options.devices ≤ 1): the base is
// what takes the memory, and data parallelism would hold it once per GPU. ResourceExhausted
// when the base or the adapters' optimizer state does not fit.
absl::StatusOr<std::unique_ptr<TrainingBackend>> CreateCudaAdapterBackend(
    const FrozenBase& base, LoraAdapters& adapters, const BackendOptions& options);

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_CUDA_TRAINING_H_
