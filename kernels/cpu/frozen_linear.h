// The two products a frozen linear weight takes part in, on the CPU (issue [peft]).
//
// A frozen base never needs its weights' gradients, only the output of each linear and the
// gradient flowing back into its input. So its weights can stay in the form they are stored in:
// fp32, bf16, or weight-only INT8 (int8.h), each a FrozenWeight view (kernels/shared/
// frozen_weight.h). kernels/cuda/frozen_linear.h is the GPU twin.
//
// The products never hold an fp32 copy of the whole weight: a compact weight is decoded
// kFrozenTileRows output rows at a time into a small tile, which the fp32 GEMM multiplies. The
// extra memory is a tile per thread, whatever the model's size. A forward product of at most
// kFusedMaxRows rows (generation's decode steps) takes a matrix-vector product per row over each
// tile instead of a GEMM, which would first pack (copy) the whole weight: such a product is
// bound by reading the weights once. With AVX2, an INT8 one converts each weight once straight
// into every row's sums, without a tile.
//
// An INT8 weight marked int8_activations (kernels/shared/frozen_weight.h) takes its forward
// product, of any number of rows, in integers: the input quantized per row and group, then
// int8 · int8 sums per group, each scaled once into fp32. Decoding is then bound by reading the
// weights rather than by converting them to fp32 on two cores.
#ifndef FEDMOE_KERNELS_CPU_FROZEN_LINEAR_H_
#define FEDMOE_KERNELS_CPU_FROZEN_LINEAR_H_

#include <cstdint>

#include "kernels/cpu/int8.h"
#include "kernels/shared/frozen_weight.h"

namespace fedmoe::kernels::cpu {

// Output rows decoded at once by the products.
inline constexpr int64_t kFrozenTileRows = 64;
// The most input rows a forward product takes as matrix-vector products.
inline constexpr int64_t kFusedMaxRows = 8;

using kernels::FrozenWeight;
using kernels::WeightFormat;

// Rows [first, first + count) of the weight as fp32, into out [count, columns].
void DecodeRows(const FrozenWeight& weight, int64_t first, int64_t count, float* out);

// out [rows, out_features] = in [rows, in_features] · ŵᵀ, as cpu::LinearForward on the decoded
// weight (out_features = weight.rows, in_features = weight.columns).
void FrozenLinearForward(const float* in, const FrozenWeight& weight, float* out, int64_t rows);

// d_in [rows, in_features] += d_out [rows, out_features] · ŵ: cpu::LinearBackward's d_in. A
// frozen weight has no gradient of its own.
void FrozenLinearBackwardInput(const float* d_out, const FrozenWeight& weight, float* d_in,
                               int64_t rows);

}  // namespace fedmoe::kernels::cpu

#endif  // FEDMOE_KERNELS_CPU_FROZEN_LINEAR_H_
