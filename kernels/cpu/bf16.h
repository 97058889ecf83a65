// Mixed-precision matrix products on the host: operands rounded to bfloat16, products
// accumulated and returned in fp32, through oneDNN's matmul (AMX tiles or AVX-512 BF16 dot
// products where the CPU has them). The weight products of mixed-precision training run on
// them; master weights, gradients and optimizer state stay fp32.
#ifndef FEDMOE_KERNELS_CPU_BF16_H_
#define FEDMOE_KERNELS_CPU_BF16_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kernels/cpu/aligned.h"

namespace fedmoe::kernels::cpu {

// A bfloat16 as its bits: the top half of an IEEE float (8 exponent bits, 7 mantissa bits).
using Bf16 = uint16_t;
using AlignedBf16 = std::vector<Bf16, AlignedAllocator<Bf16>>;

// Whether this CPU multiplies bf16 matrices in hardware (AMX, or AVX-512 BF16), which makes the
// bf16 products faster than fp32 ones. Elsewhere oneDNN emulates them, slower than Eigen's fp32.
bool HasNativeBf16MatMul();

// OK when Bf16MatMul can run here, else why not (oneDNN has no bf16 matmul for this CPU).
absl::Status CheckBf16MatMul();

// dst[i] = src[i] rounded to the nearest bfloat16, ties to even; NaN stays NaN.
void ToBf16(const float* src, Bf16* dst, int64_t n);
float FromBf16(Bf16 value);

// How a matrix operand is stored.
enum class Storage {
  kRowMajor,    // [rows, cols] row by row
  kTransposed,  // its transpose row by row: [cols, rows]
};

// c[m, n] = a[m, k] · b[k, n], or c += that when `accumulate`, with bf16 operands and fp32
// accumulation; c is [m, n] row-major fp32. Any of m, n, k may change from call to call (one
// oneDNN primitive per storage pair serves every shape). Inside an OpenMP parallel region it
// runs on the calling thread alone; outside, on CpuThreads() threads. Requires CheckBf16MatMul()
// to be OK; the caller validates shapes.
void Bf16MatMul(const Bf16* a, Storage a_storage, const Bf16* b, Storage b_storage, float* c,
                int64_t m, int64_t n, int64_t k, bool accumulate);

}  // namespace fedmoe::kernels::cpu

#endif  // FEDMOE_KERNELS_CPU_BF16_H_
