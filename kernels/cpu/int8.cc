#include "kernels/cpu/int8.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/frozen_linear.h"

namespace fedmoe::kernels::cpu {

Int8Matrix QuantizeInt8(std::span<const float> weights, int64_t rows, int64_t columns,
                        int64_t group_size) {
  Int8Matrix matrix;
  matrix.rows = rows;
  matrix.columns = columns;
  matrix.group_size = group_size <= 0 || group_size > columns ? columns : group_size;
  const int64_t groups = matrix.groups_per_row();
  matrix.values.resize(static_cast<size_t>(rows * columns));
  matrix.scales.resize(static_cast<size_t>(rows * groups));
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t begin = g * matrix.group_size;
      const int64_t end = std::min(begin + matrix.group_size, columns);
      const float* w = weights.data() + row * columns;
      float largest = 0.0F;
      for (int64_t c = begin; c < end; ++c) largest = std::max(largest, std::abs(w[c]));
      const float scale = largest / 127.0F;
      matrix.scales[static_cast<size_t>(row * groups + g)] = scale;
      int8_t* q = matrix.values.data() + row * columns;
      for (int64_t c = begin; c < end; ++c) {
        const float level = scale > 0.0F ? std::nearbyint(w[c] / scale) : 0.0F;
        q[c] = static_cast<int8_t>(std::clamp(level, -127.0F, 127.0F));
      }
    }
  }
  return matrix;
}

void DequantizeInt8(const Int8Matrix& matrix, std::span<float> out) {
#pragma omp parallel for schedule(static)
  for (int64_t first = 0; first < matrix.rows; first += kFrozenTileRows) {
    DecodeRows(FrozenWeight::Int8(matrix), first, std::min(kFrozenTileRows, matrix.rows - first),
               out.data() + first * matrix.columns);
  }
}

double RelativeSquaredError(std::span<const float> weights, const Int8Matrix& matrix) {
  std::vector<float> restored(weights.size());
  DequantizeInt8(matrix, restored);
  double error = 0;
  double total = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    const double difference = static_cast<double>(weights[i]) - restored[i];
    error += difference * difference;
    total += static_cast<double>(weights[i]) * weights[i];
  }
  return total > 0 ? error / total : 0.0;
}

}  // namespace fedmoe::kernels::cpu
