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
// Values each thread takes per tile. The norm reads one array, so it keeps more loads in flight
// per thread: its grid is small and fixed (kSumOfSquaresPartials blocks, for a fixed order),
// and memory only runs at full speed with some 4 MB of loads outstanding on an H100/H200.
constexpr int kNormValuesPerThread = 16;
constexpr int kAdamWValuesPerThread = 4;

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

template <int kPerThread>
constexpr int64_t kTileValues = int64_t{kThreads} * kPerThread;

template <int kPerThread>
int64_t TilesOf(int64_t total) {
  return (total + kTileValues<kPerThread> - 1) / kTileValues<kPerThread>;
}

// Where this thread's values of one tile of the joint index space lie in memory: thread t takes
// values t, t + kThreads, …, so each step of j is one coalesced access. at[j] is −1 past the
// end. Ranges hold whole tensors, so nearly every tile lies inside one and maps by one shift,
// found with one search per tile; a tile across a boundary searches per value.
template <int kPerThread>
__device__ __forceinline__ void LocateTile(const int64_t* __restrict__ offsets,
                                           const int64_t* __restrict__ firsts, int64_t count,
                                           int64_t total, int64_t tile, int64_t (&at)[kPerThread],
                                           int64_t (&range)[kPerThread]) {
  const int64_t begin = tile * kTileValues<kPerThread>;
  const int64_t end =
      total - begin < kTileValues<kPerThread> ? total : begin + kTileValues<kPerThread>;
  const int64_t first_range = RangeOf(firsts, count, begin);
  if (firsts[first_range + 1] >= end) {
    const int64_t shift = offsets[first_range] - firsts[first_range];
    FEDMOE_UNROLL
    for (int j = 0; j < kPerThread; ++j) {
      const int64_t i = begin + int64_t{j} * kThreads + threadIdx.x;
      at[j] = i < end ? i + shift : -1;
      range[j] = first_range;
    }
  } else {
    FEDMOE_UNROLL
    for (int j = 0; j < kPerThread; ++j) {
      const int64_t i = begin + int64_t{j} * kThreads + threadIdx.x;
      const int64_t r = RangeOf(firsts, count, i < end ? i : begin);
      at[j] = i < end ? offsets[r] + (i - firsts[r]) : -1;
      range[j] = r;
    }
  }
}

// A fixed grid of kSumOfSquaresPartials blocks, block b taking tiles b, b + grid, …, so the
// additions happen in the same order on every run and every GPU.
__global__ void SumOfSquaresPartialsKernel(const float* __restrict__ values,
                                           const int64_t* __restrict__ offsets,
                                           const int64_t* __restrict__ firsts, int64_t count,
                                           int64_t total, int64_t tiles,
                                           double* __restrict__ partials) {
  double sum = 0.0;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    int64_t at[kNormValuesPerThread];
    int64_t range[kNormValuesPerThread];
    LocateTile(offsets, firsts, count, total, tile, at, range);
    // All loads first, then the additions: the loads are what take the time.
    float loaded[kNormValuesPerThread];
    FEDMOE_UNROLL
    for (int j = 0; j < kNormValuesPerThread; ++j) loaded[j] = at[j] >= 0 ? values[at[j]] : 0.0F;
    FEDMOE_UNROLL
    for (const float value : loaded) {
      const double v = value;
      sum += v * v;
    }
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
                            int64_t count, int64_t total, int64_t tiles, AdamWStep step,
                            const double* __restrict__ norm_squared) {
  const float scale = ClipFactor(step.max_norm, *norm_squared);
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    int64_t at[kAdamWValuesPerThread];
    int64_t range[kAdamWValuesPerThread];
    LocateTile(offsets, firsts, count, total, tile, at, range);
    // Every load of the tile before any store, so they are in flight together.
    float gradient[kAdamWValuesPerThread];
    float first[kAdamWValuesPerThread];
    float second[kAdamWValuesPerThread];
    float theta[kAdamWValuesPerThread];
    FEDMOE_UNROLL
    for (int j = 0; j < kAdamWValuesPerThread; ++j) {
      if (at[j] < 0) continue;
      gradient[j] = gradients[at[j]];
      first[j] = m[at[j]];
      second[j] = v[at[j]];
      theta[j] = parameters[at[j]];
    }
    FEDMOE_UNROLL
    for (int j = 0; j < kAdamWValuesPerThread; ++j) {
      if (at[j] < 0) continue;
      const float decay = decays[range[j]] != 0 ? step.decay : 0.0F;
      const float updated =
          AdamWValue(theta[j], first[j], second[j], scale * gradient[j], step, decay);
      m[at[j]] = first[j];
      v[at[j]] = second[j];
      parameters[at[j]] = updated;
      if (parameters_bf16 != nullptr) {
        reinterpret_cast<__nv_bfloat16*>(parameters_bf16)[at[j]] = __float2bfloat16(updated);
      }
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
  if (absl::Status status = Launch(
          "sum of squares", SumOfSquaresPartialsKernel,
          {dim3(kSumOfSquaresPartials), dim3(kThreads)}, values, ranges.offsets(), ranges.firsts(),
          ranges.count(), ranges.total(), TilesOf<kNormValuesPerThread>(ranges.total()), partials);
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
  const int64_t tiles = TilesOf<kAdamWValuesPerThread>(ranges.total());
  return Launch("adamw", AdamWKernel, {BlocksFor(tiles, 1), dim3(kThreads)}, parameters,
                parameters_bf16, gradients, first_moment, second_moment, ranges.offsets(),
                ranges.firsts(), ranges.decay(), ranges.count(), ranges.total(), tiles, step,
                norm_squared);
}

}  // namespace fedmoe::kernels::cuda
