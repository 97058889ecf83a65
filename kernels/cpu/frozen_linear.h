// A frozen linear weight held compactly, and the two products it takes part in (issue [peft]).
//
// A frozen base never needs its weights' gradients, only the output of each linear and the
// gradient flowing back into its input. So its weights can stay in the form they are stored in:
// fp32, bf16, or weight-only INT8 (int8.h). FrozenWeight is a view of one [out_features,
// in_features] weight in any of the three; the memory behind it belongs to someone else (a
// memory-mapped safetensors file, or the owner's buffers).
//
// The products never hold an fp32 copy of the whole weight: a compact weight is decoded
// kFrozenTileRows output rows at a time into a small tile, which the fp32 GEMM multiplies. The
// extra memory is a tile per thread, whatever the model's size.
#ifndef FEDMOE_KERNELS_CPU_FROZEN_LINEAR_H_
#define FEDMOE_KERNELS_CPU_FROZEN_LINEAR_H_

#include <cstdint>

#include "kernels/cpu/bf16.h"
#include "kernels/cpu/int8.h"

namespace fedmoe::kernels::cpu {

// Output rows decoded at once by the products.
inline constexpr int64_t kFrozenTileRows = 64;

enum class WeightFormat { kFloat32, kBfloat16, kInt8 };

struct FrozenWeight {
  WeightFormat format = WeightFormat::kFloat32;
  int64_t rows = 0;
  int64_t columns = 0;
  // INT8 only: columns per scale, and the scales [rows, groups_per_row()].
  int64_t group_size = 0;
  const void* values = nullptr;
  const float* scales = nullptr;

  static FrozenWeight Float32(const float* values, int64_t rows, int64_t columns);
  static FrozenWeight Bfloat16(const Bf16* values, int64_t rows, int64_t columns);
  static FrozenWeight Int8(const int8_t* values, const float* scales, int64_t rows, int64_t columns,
                           int64_t group_size);
  static FrozenWeight Int8(const Int8Matrix& matrix);

  int64_t groups_per_row() const { return (columns + group_size - 1) / group_size; }
  // The bytes of the values and scales behind the view.
  int64_t bytes() const;
};

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
