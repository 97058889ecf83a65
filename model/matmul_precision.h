// The precision of a pass's weight products. A header of its own so that the kernels' mixed-
// precision layer (internal/mixed_precision.h) names it without the forward pass above it.
#ifndef FEDMOE_MODEL_MATMUL_PRECISION_H_
#define FEDMOE_MODEL_MATMUL_PRECISION_H_

#include <string_view>

#include "absl/status/statusor.h"
#include "kernels/device.h"

namespace fedmoe::model {

// The precision of the weight products, forward and backward: the experts' (routed and
// shared) and the attention projections. kBfloat16 rounds their operands to bfloat16 and
// accumulates in fp32 (kernels/cpu/bf16.h): mixed-precision training, with master weights,
// gradients, optimizer state, the router, attention scores, norms and the loss in fp32.
enum class MatMulPrecision { kFloat32, kBfloat16 };

// "fp32", "bf16", or "auto", for training on `device`. On the CPU, auto is bf16 where it
// multiplies bf16 in hardware (AMX, AVX-512 BF16) and fp32 elsewhere, and "bf16" on a CPU where
// oneDNN has no bf16 product is an error. On a GPU, auto is bf16 (tensor cores).
absl::StatusOr<MatMulPrecision> ResolveMatMulPrecision(
    std::string_view name, kernels::Device device = kernels::Device::kCpu);
std::string_view MatMulPrecisionName(MatMulPrecision precision);

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_MATMUL_PRECISION_H_
