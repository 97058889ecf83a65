// The training step on the GPU, for bench/train_step --device cuda (and train_step_sim, its
// dry run on the CUDA simulator).
#include <functional>

#include "bench/train_step_shapes.h"
#include "kernels/cuda/device_memory.h"
#include "kernels/cuda/profile.h"
#include "kernels/device.h"
#include "model/cuda_training.h"
#include "model/init.h"

namespace fedmoe::bench {
namespace {

// One more step, with every kernel, product, copy and memset timed on the GPU: where the step's
// time goes, and (gpu_seconds against step_seconds) how long the GPU waited on the host.
Json ProfiledStep(const std::function<absl::Status()>& step) {
  kernels::cuda::SetKernelProfiling(true);
  const Clock::time_point start = Clock::now();
  const absl::Status status = step();
  const double step_seconds = Seconds(start);
  kernels::cuda::SetKernelProfiling(false);
  absl::StatusOr<std::vector<kernels::cuda::KernelTime>> times =
      kernels::cuda::CollectKernelProfile();
  if (!status.ok() || !times.ok()) {
    return {{"error", std::string((status.ok() ? times.status() : status).message())}};
  }
  Json by_name = Json::array();
  double gpu_seconds = 0;
  for (const kernels::cuda::KernelTime& time : *times) {
    by_name.push_back({{"name", time.name}, {"calls", time.calls}, {"seconds", time.seconds}});
    gpu_seconds += time.seconds;
  }
  return {{"step_seconds", step_seconds}, {"gpu_seconds", gpu_seconds}, {"kernels", by_name}};
}

}  // namespace

// One optimizer step on the GPU as the trainer takes it (default trainable set, balance loss,
// clipping, AdamW), in bf16 products, over `accumulation` micro-batches, timed over `steps`
// after one warm-up step. On one GPU: the MFU is per chip.
Json CudaTrainStep(const Shape& shape, int steps, const CudaStepChoices& choices) {
  const int accumulation = choices.accumulation;
  const double peak_tflops = choices.peak_tflops;
  const model::MoeConfig config = ConfigOf(shape);
  Json line = StepLine(shape, "bf16");
  line.update({{"device", "cuda"},
               {"gradient_accumulation", accumulation},
               {"attention", choices.tensor_core_attention ? "tf32 tensor cores" : "fp32"},
               {"expert_products", choices.concurrent_expert_products
                                       ? "one cublasGemmEx each, on concurrent streams"
                                       : "one grouped cuBLAS call"}});
  if (kernels::cuda::IsSimulator()) {
    line["gpu"] = "CPU simulator of CUDA (timings mean nothing)";
  } else {
    const absl::StatusOr<std::string> gpu = kernels::CudaDeviceName(0);
    line["gpu"] = gpu.ok() ? *gpu : std::string(gpu.status().message());
  }
  const model::ModelParameters parameters = model::InitializeModel(config, 1);
  line["parameters"] = parameters.layout().total_size();
  const Clock::time_point created = Clock::now();
  absl::StatusOr<std::unique_ptr<model::TrainingBackend>> backend =
      model::CreateCudaTrainingBackend(
          parameters, {.trainable = {},
                       .adamw = {},
                       .matmul_precision = model::MatMulPrecision::kBfloat16,
                       .devices = 1,
                       .tensor_core_attention = choices.tensor_core_attention,
                       .concurrent_expert_products = choices.concurrent_expert_products});
  if (!backend.ok()) {
    line["error"] = std::string(backend.status().message());
    return line;
  }
  line["upload_seconds"] = Seconds(created);
  const std::vector<int32_t> tokens = RandomTokens(shape.batch * (shape.seq_len + 1), 3);
  model::Batch batch;
  batch.batch = shape.batch;
  batch.seq_len = shape.seq_len;
  for (int64_t b = 0; b < shape.batch; ++b) {
    const auto row = tokens.begin() + b * (shape.seq_len + 1);
    batch.tokens.insert(batch.tokens.end(), row, row + shape.seq_len);
    batch.targets.insert(batch.targets.end(), row + 1, row + shape.seq_len + 1);
  }
  batch.predictions = static_cast<int64_t>(batch.targets.size());
  const model::BackwardOptions options{
      .balance_coefficient = 0.02,
      .predictions_in_step = static_cast<double>(batch.predictions * accumulation),
      .step_share = 1.0 / accumulation};
  double gradient_seconds = 0;
  double optimizer_seconds = 0;
  double loss = 0;
  const auto step = [&]() -> absl::Status {
    Clock::time_point phase = Clock::now();
    loss = 0;
    for (int micro_batch = 0; micro_batch < accumulation; ++micro_batch) {
      absl::StatusOr<model::LossBreakdown> accumulated =
          (*backend)->AccumulateGradients(batch, options);
      if (!accumulated.ok()) return accumulated.status();
      // The loss comes back to the host once the backward pass has run (it reads the balance
      // term's counts), so this times forward and backward.
      loss += accumulated->cross_entropy;
    }
    gradient_seconds += Seconds(phase);
    phase = Clock::now();
    absl::StatusOr<double> norm = (*backend)->ApplyGradients(1e-4, 1.0);
    if (!norm.ok()) return norm.status();
    if (absl::Status synced = kernels::cuda::Synchronize(); !synced.ok()) return synced;
    optimizer_seconds += Seconds(phase);
    return absl::OkStatus();
  };
  if (absl::Status status = step(); !status.ok()) {
    line["error"] = std::string(status.message());
    return line;
  }
  gradient_seconds = optimizer_seconds = 0;
  const Clock::time_point start = Clock::now();
  for (int i = 0; i < steps; ++i) {
    if (absl::Status status = step(); !status.ok()) {
      line["error"] = std::string(status.message());
      return line;
    }
  }
  const double seconds = Seconds(start) / steps;
  const auto tokens_per_step = static_cast<double>(shape.batch * shape.seq_len * accumulation);
  const double flops = TrainingFlopsPerToken(config, shape.seq_len) * tokens_per_step;
  line["loss"] = loss;
  line["steps"] = steps;
  line["tokens_per_second"] = tokens_per_step / seconds;
  line["step_seconds"] = seconds;
  line["forward_backward_seconds"] = gradient_seconds / steps;
  line["optimizer_seconds"] = optimizer_seconds / steps;
  line["model_tflop_per_step"] = flops * 1e-12;
  line["peak_bf16_tflops"] = peak_tflops;
  line["mfu"] = flops / seconds / (peak_tflops * 1e12);
  // Without the optimizer, whose cost is per step, not per token: what more tokens per step
  // (a larger batch, gradient accumulation) approach. For medium the optimizer is memory-bound:
  // about 30 bytes read or written per parameter, 141 GB, near 33 ms at 4.3 TB/s.
  line["mfu_forward_backward"] = flops / (gradient_seconds / steps) / (peak_tflops * 1e12);
  // The same, counting only the products this fine-tuning step must do: the default trainable
  // set leaves attention, norms, embeddings and the head frozen, so their weight gradients are
  // never computed (6.4% of medium's model FLOPs).
  const double trained_flops =
      flops - FrozenWeightGradientFlopsPerToken(config, model::TrainableSet{}) * tokens_per_step;
  line["trained_tflop_per_step"] = trained_flops * 1e-12;
  line["mfu_trained_set"] = trained_flops / seconds / (peak_tflops * 1e12);
  line["kernel_profile"] = ProfiledStep(step);
  return line;
}

}  // namespace fedmoe::bench
