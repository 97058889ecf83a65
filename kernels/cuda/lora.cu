#include <cuda_runtime.h>

#include "kernels/cuda/launch.h"
#include "kernels/cuda/lora.h"

namespace fedmoe::kernels::cuda {
namespace {

__global__ void ScaleKernel(float* __restrict__ values, float scale, int64_t n) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    values[i] *= scale;
  }
}

absl::Status Scale(float* values, float scale, int64_t n) {
  if (n == 0 || scale == 1.0F) return absl::OkStatus();
  constexpr int kThreads = 256;
  return Launch("lora_scale", ScaleKernel, {BlocksFor(n, kThreads), dim3(kThreads)}, values, scale,
                n);
}

MatrixOperand Fp32(const float* data, bool transposed) {
  return {data, ElementType::kFloat32, transposed};
}

}  // namespace

absl::Status LoraForward(Blas& blas, const float* in, const float* a, const float* b, float* low,
                         float* out, const LoraShape& shape) {
  // low [rows, rank] = in [rows, in] · A [rank, in]ᵀ, then scaled.
  if (absl::Status status = blas.MatMul({.a = Fp32(in, false),
                                         .b = Fp32(a, true),
                                         .c = low,
                                         .m = shape.rows,
                                         .n = shape.rank,
                                         .k = shape.in_features},
                                        false);
      !status.ok()) {
    return status;
  }
  if (absl::Status status = Scale(low, shape.scale, shape.rows * shape.rank); !status.ok()) {
    return status;
  }
  // out [rows, out] += low [rows, rank] · B [out, rank]ᵀ.
  return blas.MatMul({.a = Fp32(low, false),
                      .b = Fp32(b, true),
                      .c = out,
                      .m = shape.rows,
                      .n = shape.out_features,
                      .k = shape.rank},
                     true);
}

absl::Status LoraBackward(Blas& blas, const float* in, const float* a, const float* b,
                          const float* low, const float* d_out, float* d_in, float* d_a, float* d_b,
                          float* d_low, const LoraShape& shape) {
  if (d_b != nullptr) {
    // d_b [out, rank] += d_out [rows, out]ᵀ · low [rows, rank].
    if (absl::Status status = blas.MatMul({.a = Fp32(d_out, true),
                                           .b = Fp32(low, false),
                                           .c = d_b,
                                           .m = shape.out_features,
                                           .n = shape.rank,
                                           .k = shape.rows},
                                          true);
        !status.ok()) {
      return status;
    }
  }
  // d_low [rows, rank] = s · d_out [rows, out] · B [out, rank].
  if (absl::Status status = blas.MatMul({.a = Fp32(d_out, false),
                                         .b = Fp32(b, false),
                                         .c = d_low,
                                         .m = shape.rows,
                                         .n = shape.rank,
                                         .k = shape.out_features},
                                        false);
      !status.ok()) {
    return status;
  }
  if (absl::Status status = Scale(d_low, shape.scale, shape.rows * shape.rank); !status.ok()) {
    return status;
  }
  if (d_a != nullptr) {
    // d_a [rank, in] += d_low [rows, rank]ᵀ · in [rows, in].
    if (absl::Status status = blas.MatMul({.a = Fp32(d_low, true),
                                           .b = Fp32(in, false),
                                           .c = d_a,
                                           .m = shape.rank,
                                           .n = shape.in_features,
                                           .k = shape.rows},
                                          true);
        !status.ok()) {
      return status;
    }
  }
  if (d_in == nullptr) return absl::OkStatus();
  // d_in [rows, in] += d_low [rows, rank] · A [rank, in].
  return blas.MatMul({.a = Fp32(d_low, false),
                      .b = Fp32(a, false),
                      .c = d_in,
                      .m = shape.rows,
                      .n = shape.in_features,
                      .k = shape.rank},
                     true);
}

}  // namespace fedmoe::kernels::cuda
