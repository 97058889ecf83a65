// Weight-only INT8 for a frozen base (issue [peft]): a linear's weight [out_features,
// in_features] held as symmetric int8 values with one float scale per output row and group of
// `group_size` input columns (group_size = in_features is one scale per output channel).
//
//   w ≈ scale[row, g] · q,  q = round(w / scale) ∈ [−127, 127],  scale = max|w over the group| /
//   127
//
// The products on these weights are frozen_linear.h's, which take them as a FrozenWeight view.
#ifndef FEDMOE_KERNELS_CPU_INT8_H_
#define FEDMOE_KERNELS_CPU_INT8_H_

#include <cstdint>
#include <span>
#include <vector>

namespace fedmoe::kernels::cpu {

struct Int8Matrix {
  int64_t rows = 0;
  int64_t columns = 0;
  int64_t group_size = 0;
  std::vector<int8_t> values;  // [rows, columns]
  std::vector<float> scales;   // [rows, groups_per_row()]

  int64_t groups_per_row() const { return (columns + group_size - 1) / group_size; }
  // Bytes held: the values and the scales.
  int64_t bytes() const {
    return static_cast<int64_t>(values.size() + scales.size() * sizeof(float));
  }
};

// Quantizes `weights` [rows, columns] with a scale per row and group of `group_size` columns
// (0 or more than `columns`: one group per row). A group of zeros gets scale 0 and zeros.
Int8Matrix QuantizeInt8(std::span<const float> weights, int64_t rows, int64_t columns,
                        int64_t group_size);

// `out` [rows, columns] = scale · q.
void DequantizeInt8(const Int8Matrix& matrix, std::span<float> out);

// Σ (w − ŵ)² / Σ w² over the matrix: how much of the weight the quantization lost (0 for an
// all-zero weight). What decides between per-channel and per-group scales.
double RelativeSquaredError(std::span<const float> weights, const Int8Matrix& matrix);

}  // namespace fedmoe::kernels::cpu

#endif  // FEDMOE_KERNELS_CPU_INT8_H_
