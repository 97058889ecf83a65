// Kernel launches and CUDA/cuBLAS errors as statuses, the same under nvcc and in the CPU
// simulator (sim/include/cuda_runtime.h, built with FEDMOE_CUDA_SIM). Included by .cu files only.
#ifndef FEDMOE_KERNELS_CUDA_LAUNCH_H_
#define FEDMOE_KERNELS_CUDA_LAUNCH_H_

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/profile.h"

// Loop unrolling for nvcc: FEDMOE_UNROLL unrolls a loop of constant trip count fully,
// FEDMOE_UNROLL_BY(n) n times. Unrolled, the loads of later iterations need not wait on the
// arithmetic of earlier ones, which is what keeps enough of them in flight. The simulator's host
// compiler chooses for itself.
#ifdef FEDMOE_CUDA_SIM
#define FEDMOE_UNROLL
#define FEDMOE_UNROLL_BY(n)
#else
#define FEDMOE_PRAGMA(text) _Pragma(#text)
#define FEDMOE_UNROLL FEDMOE_PRAGMA(unroll)
#define FEDMOE_UNROLL_BY(n) FEDMOE_PRAGMA(unroll n)
#endif

namespace fedmoe::kernels::cuda {

struct LaunchShape {
  dim3 grid;
  dim3 block;
  // Bytes of `extern __shared__` memory per block (DynamicSharedMemory).
  size_t dynamic_shared_bytes = 0;
};

inline absl::Status CudaStatus(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(error)));
}

// Queues kernel(args...) on the default stream. A launch error comes back at once; an error
// while it runs, at the next synchronising call.
template <typename... Params, typename... Args>
absl::Status Launch(const char* name, void (*kernel)(Params...), const LaunchShape& shape,
                    Args... args) {
  const ProfiledScope profiled(name);
#ifdef FEDMOE_CUDA_SIM
  const cudaError_t error = cuda_sim::LaunchKernel(
      shape.grid, shape.block, shape.dynamic_shared_bytes, [&] { kernel(args...); });
#else
  // Past 48 KiB a kernel must opt in to its dynamic shared memory.
  constexpr size_t kDefaultDynamicSharedLimit = size_t{48} << 10;
  if (shape.dynamic_shared_bytes > kDefaultDynamicSharedLimit) {
    if (absl::Status status =
            CudaStatus(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(shape.dynamic_shared_bytes)),
                       name);
        !status.ok()) {
      return status;
    }
  }
  // clang-format reads this header as C++, where <<< >>> is no operator.
  // clang-format off
  kernel<<<shape.grid, shape.block, shape.dynamic_shared_bytes>>>(args...);
  // clang-format on
  const cudaError_t error = cudaGetLastError();
#endif
  return CudaStatus(error, name);
}

// The block's `extern __shared__` memory, as T: what a launch's dynamic_shared_bytes sized.
template <typename T>
__device__ __forceinline__ T* DynamicSharedMemory() {
#ifdef FEDMOE_CUDA_SIM
  return static_cast<T*>(cuda_sim::DynamicSharedMemory());
#else
  extern __shared__ __align__(128) unsigned char dynamic_shared[];
  return reinterpret_cast<T*>(dynamic_shared);
#endif
}

// Blocks of `threads` covering n items, one item per thread, capped where a grid-stride loop
// takes over.
inline dim3 BlocksFor(int64_t n, int threads) {
  constexpr int64_t kMaxBlocks = 8192;
  return {static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>((n + threads - 1) / threads, kMaxBlocks)))};
}

}  // namespace fedmoe::kernels::cuda

#endif  // FEDMOE_KERNELS_CUDA_LAUNCH_H_
