#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/optimizer.h"
#include "kernels/cuda/reduce.cuh"

namespace fedmoe::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// The range holding joint index i: the last r with firsts[r] ≤ i.
__device__ __forceinline__ int64_t RangeOf(const int64_t* firsts, int64_t count, int64_t i) {
  int64_t low = 0;
  int64_t high = count - 1;
  while (low < high) {
    const int64_t middle = (low + high + 1) / 2;
    if (firsts[middle] <= i) {
      low = middle;
    } else {
      high = middle - 1;
    }
  }
  return low;
}

// A fixed grid of kSumOfSquaresPartials blocks, each striding over the joint index space, so
// the additions happen in the same order on every run.
__global__ void SumOfSquaresPartialsKernel(const float* __restrict__ values,
                                           const int64_t* __restrict__ offsets,
                                           const int64_t* __restrict__ firsts, int64_t count,
                                           int64_t total, double* __restrict__ partials) {
  double sum = 0.0;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t r = RangeOf(firsts, count, i);
    const double v = values[offsets[r] + (i - firsts[r])];
    sum += v * v;
  }
  sum = BlockSum(sum);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

__global__ void SumPartialsKernel(const double* __restrict__ partials, int64_t count,
                                  double* __restrict__ total) {
  double sum = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) sum += partials[i];
  sum = BlockSum(sum);
  if (threadIdx.x == 0) *total = sum;
}

__global__ void AdamWKernel(float* __restrict__ parameters,
                            DeviceBf16* __restrict__ parameters_bf16,
                            const float* __restrict__ gradients, float* __restrict__ m,
                            float* __restrict__ v, const int64_t* __restrict__ offsets,
                            const int64_t* __restrict__ firsts, const uint8_t* __restrict__ decays,
                            int64_t count, int64_t total, AdamWStep step,
                            const double* __restrict__ norm_squared) {
  float scale = 1.0F;
  if (step.max_norm > 0.0F) {
    const double norm = sqrt(*norm_squared);
    if (norm > step.max_norm) scale = static_cast<float>(step.max_norm / norm);
  }
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t r = RangeOf(firsts, count, i);
    const int64_t at = offsets[r] + (i - firsts[r]);
    const float g = scale * gradients[at];
    const float first = step.beta1 * m[at] + (1.0F - step.beta1) * g;
    const float second = step.beta2 * v[at] + (1.0F - step.beta2) * g * g;
    m[at] = first;
    v[at] = second;
    const float theta = parameters[at];
    const float decay = decays[r] != 0 ? step.decay : 0.0F;
    const float updated =
        theta - (decay * theta +
                 step.step_size * first / (sqrtf(second) / step.root_correction2 + step.epsilon));
    parameters[at] = updated;
    if (parameters_bf16 != nullptr) {
      reinterpret_cast<__nv_bfloat16*>(parameters_bf16)[at] = __float2bfloat16(updated);
    }
  }
}

}  // namespace

absl::StatusOr<DeviceRanges> DeviceRanges::Create(std::span<const ParameterRange> ranges) {
  std::vector<int64_t> offsets, firsts;
  std::vector<uint8_t> decay;
  int64_t total = 0;
  int64_t end = 0;
  for (const ParameterRange& range : ranges) {
    if (range.offset < 0 || range.size < 0 || range.offset < end) {
      return absl::InvalidArgumentError(absl::StrCat("parameter range [", range.offset, ", +",
                                                     range.size,
                                                     ") is negative or overlaps or "
                                                     "precedes the one before"));
    }
    if (range.size == 0) continue;
    const auto flag = static_cast<uint8_t>(range.decay ? 1 : 0);
    if (!offsets.empty() && range.offset == end && decay.back() == flag) {
      end += range.size;
    } else {
      offsets.push_back(range.offset);
      firsts.push_back(total);
      decay.push_back(flag);
      end = range.offset + range.size;
    }
    total += range.size;
  }
  firsts.push_back(total);
  const auto count = static_cast<int64_t>(offsets.size());
  // A device array of zero values has no storage: keep one element so the pointers are real.
  if (offsets.empty()) {
    offsets.push_back(0);
    decay.push_back(0);
  }
  absl::StatusOr<DeviceArray<int64_t>> device_offsets =
      DeviceArray<int64_t>::Allocate(offsets.size());
  absl::StatusOr<DeviceArray<int64_t>> device_firsts =
      DeviceArray<int64_t>::Allocate(firsts.size());
  absl::StatusOr<DeviceArray<uint8_t>> device_decay = DeviceArray<uint8_t>::Allocate(decay.size());
  for (const absl::Status& status :
       {device_offsets.status(), device_firsts.status(), device_decay.status()}) {
    if (!status.ok()) return status;
  }
  for (const absl::Status& status :
       {device_offsets->CopyFrom(offsets), device_firsts->CopyFrom(firsts),
        device_decay->CopyFrom(decay)}) {
    if (!status.ok()) return status;
  }
  return DeviceRanges(std::move(*device_offsets), std::move(*device_firsts),
                      std::move(*device_decay), count, total);
}

absl::Status SumOfSquares(const float* values, const DeviceRanges& ranges, double* partials,
                          double* norm_squared) {
  if (absl::Status status =
          Launch("sum of squares", SumOfSquaresPartialsKernel,
                 {dim3(kSumOfSquaresPartials), dim3(kThreads)}, values, ranges.offsets(),
                 ranges.firsts(), ranges.count(), ranges.total(), partials);
      !status.ok()) {
    return status;
  }
  return Launch("sum of partials", SumPartialsKernel, {dim3(1), dim3(kThreads)},
                static_cast<const double*>(partials), kSumOfSquaresPartials, norm_squared);
}

absl::Status AdamWUpdate(float* parameters, DeviceBf16* parameters_bf16, const float* gradients,
                         float* first_moment, float* second_moment, const DeviceRanges& ranges,
                         const AdamWStep& step, const double* norm_squared) {
  if (ranges.total() == 0) return absl::OkStatus();
  if (step.max_norm > 0.0F && norm_squared == nullptr) {
    return absl::InvalidArgumentError("clipping needs the gradient norm");
  }
  return Launch("adamw", AdamWKernel, {BlocksFor(ranges.total(), kThreads), dim3(kThreads)},
                parameters, parameters_bf16, gradients, first_moment, second_moment,
                ranges.offsets(), ranges.firsts(), ranges.decay(), ranges.count(), ranges.total(),
                step, norm_squared);
}

}  // namespace fedmoe::kernels::cuda
