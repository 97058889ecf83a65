#include <cuda_runtime.h>

#include <cfloat>

#include "kernels/cuda/cross_entropy.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/reduce.cuh"

namespace fedmoe::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// One block per row. With d_logits null only the loss is written.
__global__ void CrossEntropyKernel(const float* __restrict__ logits,
                                   const int32_t* __restrict__ targets, float* __restrict__ losses,
                                   float* __restrict__ d_logits, int64_t vocab, float scale) {
  const int64_t row = blockIdx.x;
  const float* z = logits + row * vocab;
  const int32_t target = targets[row];
  if (target < 0) {  // the same for the whole block: no thread reaches a barrier below
    if (threadIdx.x == 0) losses[row] = 0.0F;
    if (d_logits != nullptr) {
      for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) d_logits[row * vocab + i] = 0.0F;
    }
    return;
  }
  float max_logit = -FLT_MAX;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) max_logit = fmaxf(max_logit, z[i]);
  max_logit = BlockMax(max_logit, -FLT_MAX);
  float total = 0.0F;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) total += expf(z[i] - max_logit);
  total = BlockSum(total);
  if (threadIdx.x == 0) losses[row] = max_logit + logf(total) - z[target];
  if (d_logits == nullptr) return;
  const float factor = scale / total;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    d_logits[row * vocab + i] = expf(z[i] - max_logit) * factor - (i == target ? scale : 0.0F);
  }
}

}  // namespace

absl::Status CrossEntropyForward(const float* logits, const int32_t* targets, float* losses,
                                 int64_t rows, int64_t vocab) {
  if (rows == 0) return absl::OkStatus();
  return Launch("cross-entropy forward", CrossEntropyKernel,
                {dim3(static_cast<unsigned>(rows)), dim3(kThreads)}, logits, targets, losses,
                static_cast<float*>(nullptr), vocab, 0.0F);
}

absl::Status CrossEntropyBackward(const float* logits, const int32_t* targets, float* d_logits,
                                  float* losses, int64_t rows, int64_t vocab, float scale) {
  if (rows == 0) return absl::OkStatus();
  return Launch("cross-entropy backward", CrossEntropyKernel,
                {dim3(static_cast<unsigned>(rows)), dim3(kThreads)}, logits, targets, losses,
                d_logits, vocab, scale);
}

}  // namespace fedmoe::kernels::cuda
