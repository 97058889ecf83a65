#include <cuda_runtime.h>

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/axpy.h"
#include "kernels/cuda/launch.h"

namespace fedmoe::kernels::cuda {
namespace {

// Grid-stride loop: any n runs correctly with a grid capped at what fills the device.
__global__ void AxpyKernel(float alpha, const float* __restrict__ x, float* __restrict__ y,
                           int64_t n) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    y[i] = fmaf(alpha, x[i], y[i]);
  }
}

}  // namespace

absl::Status Axpy(float alpha, const DeviceArray<float>& x, DeviceArray<float>& y) {
  if (x.size() != y.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("axpy: x has ", x.size(), " values but y has ", y.size()));
  }
  if (x.size() == 0) return absl::OkStatus();
  constexpr int kThreads = 256;
  const auto n = static_cast<int64_t>(x.size());
  return Launch("axpy", AxpyKernel, {BlocksFor(n, kThreads), dim3(kThreads)}, alpha,
                static_cast<const float*>(x.data()), y.data(), n);
}

}  // namespace fedmoe::kernels::cuda
