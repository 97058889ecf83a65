// The low-rank branch of a LoRA-adapted linear (Hu et al. 2021), beside a frozen base product:
//   out += s · (in · Aᵀ) · Bᵀ,  A [rank, in_features], B [out_features, rank], s = α / rank.
// The forward keeps low = s · in · Aᵀ [rows, rank] for the backward, which is all the branch
// needs: rank is small, so the kept activation is a sliver of the base's.
//
// Backward, with d_low = s · d_out · B:
//   d_b += d_outᵀ · low,  d_a += d_lowᵀ · in,  d_in += d_low · A
// A null d_a skips A's gradient (FFA-LoRA freezes A), a null d_b B's (DP-SGD takes them record by
// record), a null d_in the input's. d_low is always written: per-record clipping reads it.
//
// Row-major buffers; the products are Eigen's and thread as cpu::LinearForward's do.
// kernels/cuda/lora.h is the GPU twin.
#ifndef FEDMOE_KERNELS_CPU_LORA_H_
#define FEDMOE_KERNELS_CPU_LORA_H_

#include <cstdint>

#include "kernels/shared/lora_shape.h"

namespace fedmoe::kernels::cpu {

using kernels::LoraShape;

// low [rows, rank] = s · in · Aᵀ; out [rows, out_features] += low · Bᵀ.
void LoraForward(const float* in, const float* a, const float* b, float* low, float* out,
                 const LoraShape& shape);

// d_low [rows, rank] receives s · d_out · B.
void LoraBackward(const float* in, const float* a, const float* b, const float* low,
                  const float* d_out, float* d_in, float* d_a, float* d_b, float* d_low,
                  const LoraShape& shape);

}  // namespace fedmoe::kernels::cpu

#endif  // FEDMOE_KERNELS_CPU_LORA_H_
