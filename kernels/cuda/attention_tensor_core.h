// The tensor-core flash attention behind kernels/cuda/attention.h's
// AttentionArithmetic::kTensorFloat32. Callers go through attention.h, which checks the shape
// and computes the backward pass's row terms.
#ifndef FEDMOE_KERNELS_CUDA_ATTENTION_TENSOR_CORE_H_
#define FEDMOE_KERNELS_CUDA_ATTENTION_TENSOR_CORE_H_

#include "absl/status/status.h"
#include "kernels/cpu/attention.h"

namespace fedmoe::kernels::cuda::attention_internal {

absl::Status TensorCoreForward(const float* q, const float* k, const float* v, float* out,
                               float* logsumexp, const cpu::AttentionShape& shape);

// row_terms [batch, heads, seq_len]: ⟨d_out, out⟩ of each row.
absl::Status TensorCoreBackward(const float* q, const float* k, const float* v,
                                const float* logsumexp, const float* row_terms, const float* d_out,
                                float* d_q, float* d_k, float* d_v,
                                const cpu::AttentionShape& shape);

}  // namespace fedmoe::kernels::cuda::attention_internal

#endif  // FEDMOE_KERNELS_CUDA_ATTENTION_TENSOR_CORE_H_
