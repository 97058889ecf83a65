#include "kernels/cpu/frozen_linear.h"

#include <algorithm>
#include <bit>

#include "kernels/cpu/bf16.h"
#include "kernels/cpu/eigen_maps.h"

namespace fedmoe::kernels::cpu {
namespace {

using internal::RowMatrix;
using internal::View;

// bf16 is the top half of an fp32: inline, so that the loops below vectorise.
inline float Bf16Value(Bf16 value) {
  return std::bit_cast<float>(static_cast<uint32_t>(value) << 16);
}

// out = in · ŵᵀ for at most kFusedMaxRows rows: a matrix-vector product per row over each block
// of kFrozenTileRows output rows (decoded into a tile when compact, read in place when fp32),
// so the block is read from memory once and from cache by the other rows. Small products are
// bound by reading the weights, and a GEMM would first pack (copy) the whole weight.
void FewRowsForward(const float* in, const FrozenWeight& weight, float* out, int64_t rows) {
  const auto input = View(in, rows, weight.columns);
  auto output = View(out, rows, weight.rows);
#pragma omp parallel for schedule(static)
  for (int64_t first = 0; first < weight.rows; first += kFrozenTileRows) {
    const int64_t count = std::min(kFrozenTileRows, weight.rows - first);
    RowMatrix tile;
    const float* block = static_cast<const float*>(weight.values) + first * weight.columns;
    if (weight.format != WeightFormat::kFloat32) {
      tile.resize(count, weight.columns);
      DecodeRows(weight, first, count, tile.data());
      block = tile.data();
    }
    const auto weights = View(block, count, weight.columns);
    for (int64_t r = 0; r < rows; ++r) {
      output.row(r).segment(first, count).noalias() = weights * input.row(r).transpose();
    }
  }
}

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
#pragma omp simd
      for (int64_t i = 0; i < count * columns; ++i) out[i] = Bf16Value(source[i]);
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
  if (rows <= kFusedMaxRows) {
    FewRowsForward(in, weight, out, rows);
    return;
  }
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
