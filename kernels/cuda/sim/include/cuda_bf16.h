// The simulator's bfloat16: CUDA's conversions, rounding to nearest even as __float2bfloat16
// does (through kernels/cpu/bf16.h, which is tested against the definition).
#ifndef FEDMOE_KERNELS_CUDA_SIM_CUDA_BF16_H_
#define FEDMOE_KERNELS_CUDA_SIM_CUDA_BF16_H_

// This header stands in for the CUDA toolkit's, so it declares CUDA's own names, which are
// reserved identifiers (__global__, __shfl_sync, __nv_bfloat16, ...).
// NOLINTBEGIN(bugprone-reserved-identifier)

#include <cstdint>

#include "cuda_runtime.h"
#include "kernels/cpu/bf16.h"

struct __nv_bfloat16 {
  uint16_t bits;
};

inline __nv_bfloat16 __float2bfloat16(float value) {
  __nv_bfloat16 rounded;
  fedmoe::kernels::cpu::ToBf16(&value, &rounded.bits, 1);
  return rounded;
}
inline float __bfloat162float(__nv_bfloat16 value) {
  return fedmoe::kernels::cpu::FromBf16(value.bits);
}

// NOLINTEND(bugprone-reserved-identifier)

#endif  // FEDMOE_KERNELS_CUDA_SIM_CUDA_BF16_H_
