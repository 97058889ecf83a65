// What the training-step benchmark's CPU and GPU halves share: the model shapes it times, their
// FLOPs per token, and the head of each JSON line (bench/train_step.cc).
#ifndef FEDMOE_BENCH_TRAIN_STEP_SHAPES_H_
#define FEDMOE_BENCH_TRAIN_STEP_SHAPES_H_

#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "model/config.h"
#include "model/trainable_set.h"

namespace fedmoe::bench {

using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

struct Shape {
  std::string name;
  int64_t hidden, layers, heads, kv_heads, inner, experts, top_k, shared_experts, batch, seq_len;
  bool on_cpu;  // small enough for the CPU path
};

// tiny, small (both on the CPU) and medium (the GPU only).
extern const Shape kShapes[3];

model::MoeConfig ConfigOf(const Shape& shape);

// The model FLOPs of training on one token (forward and backward, 3× the forward), the MFU
// convention: every weight product a token takes part in (attention projections, router, its
// top-k and shared experts, output head), plus the attention scores and their weighted sum over
// the keys a causal row sees on average. Recomputation in the backward pass is not counted.
double TrainingFlopsPerToken(const model::MoeConfig& config, int64_t seq_len);

// Of TrainingFlopsPerToken, the weight-gradient products a step skips because the weights are
// frozen: 2 FLOPs per multiply-add of each frozen weight product. The convention counts them (a
// model's FLOPs do not depend on what is trained); fine-tuning with the default trainable set
// (experts and router) does not do them, so the bench reports utilisation both ways.
double FrozenWeightGradientFlopsPerToken(const model::MoeConfig& config,
                                         const model::TrainableSet& trainable);

// A train_step line's start: the benchmark, the shape and the product precision.
Json StepLine(const Shape& shape, std::string_view matmul_precision);

std::vector<int32_t> RandomTokens(int64_t count, uint32_t seed);

double Seconds(Clock::time_point start);

// The GPU step's settings (read only by the CUDA bench).
struct CudaStepChoices {
  int accumulation = 1;
  // H100 and H200 SXM: 989 dense bf16 TFLOP/s.
  double peak_tflops = 989.0;
  bool tensor_core_attention = true;
  bool concurrent_expert_products = false;
};

#ifdef FEDMOE_BENCH_CUDA
// `steps` training steps of `shape` on the GPU (bench/train_step_cuda.cc): tokens/s, MFU and a
// profiled step.
Json CudaTrainStep(const Shape& shape, int steps, const CudaStepChoices& choices);
#endif

}  // namespace fedmoe::bench

#endif  // FEDMOE_BENCH_TRAIN_STEP_SHAPES_H_
