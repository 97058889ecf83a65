#include "kernels/cpu/int8.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/eigen_maps.h"

namespace fedmoe::kernels::cpu {
namespace {

using internal::RowMatrix;
using internal::View;

// Rows [first, first + count) of the weight, dequantized into `tile` [count, columns].
void DequantizeRows(const Int8Matrix& matrix, int64_t first, int64_t count, float* tile) {
  const int64_t groups = matrix.groups_per_row();
  for (int64_t r = 0; r < count; ++r) {
    const int64_t row = first + r;
    const int8_t* q = matrix.values.data() + row * matrix.columns;
    const float* scale = matrix.scales.data() + row * groups;
    float* destination = tile + r * matrix.columns;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t begin = g * matrix.group_size;
      const int64_t end = std::min(begin + matrix.group_size, matrix.columns);
      for (int64_t c = begin; c < end; ++c) destination[c] = scale[g] * static_cast<float>(q[c]);
    }
  }
}

}  // namespace

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
  for (int64_t first = 0; first < matrix.rows; first += kInt8TileRows) {
    DequantizeRows(matrix, first, std::min(kInt8TileRows, matrix.rows - first),
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

void LinearForwardInt8(const float* in, const Int8Matrix& weight, float* out, int64_t rows) {
  const int64_t in_features = weight.columns;
  const int64_t out_features = weight.rows;
  const auto input = View(in, rows, in_features);
  auto output = View(out, rows, out_features);
#pragma omp parallel for schedule(static)
  for (int64_t first = 0; first < out_features; first += kInt8TileRows) {
    const int64_t count = std::min(kInt8TileRows, out_features - first);
    RowMatrix tile(count, in_features);
    DequantizeRows(weight, first, count, tile.data());
    output.middleCols(first, count).noalias() = input * tile.transpose();
  }
}

void LinearBackwardInputInt8(const float* d_out, const Int8Matrix& weight, float* d_in,
                             int64_t rows) {
  const int64_t in_features = weight.columns;
  const int64_t out_features = weight.rows;
  const auto gradient = View(d_out, rows, out_features);
  // Each tile adds into all of d_in, so the tiles run in order; the product inside each is
  // Eigen's, threaded.
  RowMatrix tile(kInt8TileRows, in_features);
  for (int64_t first = 0; first < out_features; first += kInt8TileRows) {
    const int64_t count = std::min(kInt8TileRows, out_features - first);
    DequantizeRows(weight, first, count, tile.data());
    View(d_in, rows, in_features).noalias() +=
        gradient.middleCols(first, count) * tile.topRows(count);
  }
}

}  // namespace fedmoe::kernels::cpu
