// The low-rank branch of a LoRA-adapted linear on the GPU: the CUDA twin of kernels/cpu/lora.h,
// with the same shapes, the same kept activation (low = s · in · Aᵀ) and the same null-skips,
// on cuBLAS products. Pointers are device pointers.
#ifndef FEDMOE_KERNELS_CUDA_LORA_H_
#define FEDMOE_KERNELS_CUDA_LORA_H_

#include "absl/status/status.h"
#include "kernels/cuda/gemm.h"
#include "kernels/shared/lora_shape.h"

namespace fedmoe::kernels::cuda {

// low [rows, rank] = s · in · Aᵀ; out [rows, out_features] += low · Bᵀ.
absl::Status LoraForward(Blas& blas, const float* in, const float* a, const float* b, float* low,
                         float* out, const LoraShape& shape);

// d_b += d_outᵀ · low (unless null); d_low = s · d_out · B (always); d_a += d_lowᵀ · in and
// d_in += d_low · A (each unless null).
absl::Status LoraBackward(Blas& blas, const float* in, const float* a, const float* b,
                          const float* low, const float* d_out, float* d_in, float* d_a, float* d_b,
                          float* d_low, const LoraShape& shape);

}  // namespace fedmoe::kernels::cuda

#endif  // FEDMOE_KERNELS_CUDA_LORA_H_
