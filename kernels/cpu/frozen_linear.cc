#include "kernels/cpu/frozen_linear.h"

#include <algorithm>

#include "kernels/cpu/bf16.h"
#include "kernels/cpu/eigen_maps.h"

namespace fedmoe::kernels::cpu {
namespace {

using internal::RowMatrix;
using internal::View;

}  // namespace

void DecodeRows(const FrozenWeight& weight, int64_t first, int64_t count, float* out) {
  const int64_t columns = weight.columns;
  switch (weight.format) {
    case WeightFormat::kFloat32: {
      const float* source = static_cast<const float*>(weight.values) + first * columns;
      std::copy(source, source + count * columns, out);
      return;
    }
    case WeightFormat::kBfloat16: {
      const Bf16* source = static_cast<const Bf16*>(weight.values) + first * columns;
      for (int64_t i = 0; i < count * columns; ++i) out[i] = FromBf16(source[i]);
      return;
    }
    case WeightFormat::kInt8: {
      const int64_t groups = weight.groups_per_row();
      for (int64_t r = 0; r < count; ++r) {
        const int64_t row = first + r;
        const int8_t* q = static_cast<const int8_t*>(weight.values) + row * columns;
        const float* scale = weight.scales + row * groups;
        float* destination = out + r * columns;
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t begin = g * weight.group_size;
          const int64_t end = std::min(begin + weight.group_size, columns);
          for (int64_t c = begin; c < end; ++c) {
            destination[c] = scale[g] * static_cast<float>(q[c]);
          }
        }
      }
      return;
    }
  }
}

void FrozenLinearForward(const float* in, const FrozenWeight& weight, float* out, int64_t rows) {
  const int64_t in_features = weight.columns;
  const int64_t out_features = weight.rows;
  const auto input = View(in, rows, in_features);
  auto output = View(out, rows, out_features);
  if (weight.format == WeightFormat::kFloat32) {
    output.noalias() =
        input *
        View(static_cast<const float*>(weight.values), out_features, in_features).transpose();
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t first = 0; first < out_features; first += kFrozenTileRows) {
    const int64_t count = std::min(kFrozenTileRows, out_features - first);
    RowMatrix tile(count, in_features);
    DecodeRows(weight, first, count, tile.data());
    output.middleCols(first, count).noalias() = input * tile.transpose();
  }
}

void FrozenLinearBackwardInput(const float* d_out, const FrozenWeight& weight, float* d_in,
                               int64_t rows) {
  const int64_t in_features = weight.columns;
  const int64_t out_features = weight.rows;
  const auto gradient = View(d_out, rows, out_features);
  auto input_gradient = View(d_in, rows, in_features);
  if (weight.format == WeightFormat::kFloat32) {
    input_gradient.noalias() +=
        gradient * View(static_cast<const float*>(weight.values), out_features, in_features);
    return;
  }
  // Each tile adds into all of d_in, so the tiles run in order; the product inside each is
  // Eigen's, threaded.
  RowMatrix tile(kFrozenTileRows, in_features);
  for (int64_t first = 0; first < out_features; first += kFrozenTileRows) {
    const int64_t count = std::min(kFrozenTileRows, out_features - first);
    DecodeRows(weight, first, count, tile.data());
    input_gradient.noalias() += gradient.middleCols(first, count) * tile.topRows(count);
  }
}

}  // namespace fedmoe::kernels::cpu
