// Warp and block reductions for fedmoe's kernels (device code only). Every thread of the block
// must call a block reduction: it synchronises the block.
#ifndef FEDMOE_KERNELS_CUDA_REDUCE_CUH_
#define FEDMOE_KERNELS_CUDA_REDUCE_CUH_

#include <cuda_runtime.h>

namespace fedmoe::kernels::cuda {

constexpr unsigned kFullWarp = 0xffffffffU;

template <typename T>
__device__ __forceinline__ T WarpSum(T value) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(kFullWarp, value, offset);
  return value;
}

template <typename T>
__device__ __forceinline__ T WarpMax(T value) {
  for (int offset = 16; offset > 0; offset /= 2) {
    const T other = __shfl_xor_sync(kFullWarp, value, offset);
    value = other > value ? other : value;
  }
  return value;
}

// The sum over the block, returned to every thread. blockDim.x is a multiple of 32 (≤ 1024);
// the order of the additions is fixed by the block size, so results repeat bit for bit.
template <typename T>
__device__ __forceinline__ T BlockSum(T value) {
  __shared__ T partial[32];
  const unsigned lane = threadIdx.x % 32;
  const unsigned warp = threadIdx.x / 32;
  value = WarpSum(value);
  __syncthreads();  // a previous call's readers are done with `partial`
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  T total = lane < blockDim.x / 32 ? partial[lane] : T{0};
  return WarpSum(total);
}

template <typename T>
__device__ __forceinline__ T BlockMax(T value, T lowest) {
  __shared__ T partial[32];
  const unsigned lane = threadIdx.x % 32;
  const unsigned warp = threadIdx.x / 32;
  value = WarpMax(value);
  __syncthreads();
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  T best = lane < blockDim.x / 32 ? partial[lane] : lowest;
  return WarpMax(best);
}

}  // namespace fedmoe::kernels::cuda

#endif  // FEDMOE_KERNELS_CUDA_REDUCE_CUH_
