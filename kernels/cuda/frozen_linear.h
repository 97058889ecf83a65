// The two products a frozen linear weight takes part in, on the GPU: the CUDA twins of
// kernels/cpu/frozen_linear.h (issue [peft]). The weight is a kernels::FrozenWeight whose values
// and scales are device pointers. A compact weight is decoded into fp32 scratch of its own size
// by one kernel (kernels/shared/frozen_weight.h's DecodeValue, the CPU tiles' arithmetic), then
// multiplied by cuBLAS: one weight's fp32 copy at a time, never the base's. An fp32 weight is
// multiplied as it is. An INT8 weight with int8 activations takes its forward product as the
// CPU does: the input rows quantized into the scratch, then int8 · int8 sums per group (dp4a).
#ifndef FEDMOE_KERNELS_CUDA_FROZEN_LINEAR_H_
#define FEDMOE_KERNELS_CUDA_FROZEN_LINEAR_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/gemm.h"
#include "kernels/shared/frozen_weight.h"

namespace fedmoe::kernels::cuda {

// The scratch the products need for this weight, in floats (0 for an fp32 weight).
int64_t FrozenLinearScratch(const FrozenWeight& weight);

// out [weight.rows, weight.columns] = the decoded weight.
absl::Status DecodeFrozenWeight(const FrozenWeight& weight, float* out);

// out [rows, out_features] = in [rows, in_features] · ŵᵀ.
absl::Status FrozenLinearForward(Blas& blas, const float* in, const FrozenWeight& weight,
                                 float* out, int64_t rows, float* scratch);

// d_in [rows, in_features] += d_out [rows, out_features] · ŵ.
absl::Status FrozenLinearBackwardInput(Blas& blas, const float* d_out, const FrozenWeight& weight,
                                       float* d_in, int64_t rows, float* scratch);

}  // namespace fedmoe::kernels::cuda

#endif  // FEDMOE_KERNELS_CUDA_FROZEN_LINEAR_H_
