#include "kernels/cpu/frozen_linear.h"

#include <immintrin.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <utility>
#include <vector>

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

#if defined(__AVX2__) && defined(__FMA__)
float HorizontalSum(__m256 v) {
  __m128 low = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  low = _mm_add_ps(low, _mm_movehl_ps(low, low));
  return _mm_cvtss_f32(_mm_add_ss(low, _mm_movehdup_ps(low)));
}

// out = in · ŵᵀ over an INT8 weight for kRows input rows, each weight converted once (eight at a
// time) and multiplied into every row's sums, with no tile: the decode steps' products, which a
// tile would make write and read four bytes per one-byte weight. A chain of FMAs into one sum
// waits out each FMA's latency (4–5 cycles), which held one row to about 2 weights a cycle; with
// fewer than four rows, each row's sums run as kChains independent chains over consecutive
// blocks of 8 columns. Needs columns and the group size in multiples of 8.
template <int kRows>
void Int8FewRowsForward(const float* in, const FrozenWeight& weight, float* out) {
  constexpr int kChains = kRows >= 4 ? 1 : 4 / kRows;
  const int64_t columns = weight.columns;
  const int64_t groups = weight.groups_per_row();
  const auto convert = [](const int8_t* at) {
    return _mm256_cvtepi32_ps(
        _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(at))));
  };
#pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < weight.rows; ++o) {
    const int8_t* q = static_cast<const int8_t*>(weight.values) + o * columns;
    __m256 total[kRows];
    for (int r = 0; r < kRows; ++r) total[r] = _mm256_setzero_ps();
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t begin = g * weight.group_size;
      const int64_t end = std::min(begin + weight.group_size, columns);
      __m256 sums[kRows][kChains];
      for (int r = 0; r < kRows; ++r) {
        for (int j = 0; j < kChains; ++j) sums[r][j] = _mm256_setzero_ps();
      }
      int64_t c = begin;
      for (; c + 8 * kChains <= end; c += 8 * kChains) {
        for (int j = 0; j < kChains; ++j) {
          const __m256 w = convert(q + c + 8 * j);
          for (int r = 0; r < kRows; ++r) {
            sums[r][j] =
                _mm256_fmadd_ps(w, _mm256_loadu_ps(in + r * columns + c + 8 * j), sums[r][j]);
          }
        }
      }
      for (; c < end; c += 8) {
        const __m256 w = convert(q + c);
        for (int r = 0; r < kRows; ++r) {
          sums[r][0] = _mm256_fmadd_ps(w, _mm256_loadu_ps(in + r * columns + c), sums[r][0]);
        }
      }
      const __m256 scale = _mm256_set1_ps(weight.scales[o * groups + g]);
      for (int r = 0; r < kRows; ++r) {
        __m256 sum = sums[r][0];
        for (int j = 1; j < kChains; ++j) sum = _mm256_add_ps(sum, sums[r][j]);
        total[r] = _mm256_fmadd_ps(scale, sum, total[r]);
      }
    }
    for (int r = 0; r < kRows; ++r) out[r * weight.rows + o] = HorizontalSum(total[r]);
  }
}

template <int... kRows>
bool Int8FewRowsDispatch(const float* in, const FrozenWeight& weight, float* out, int64_t rows,
                         std::integer_sequence<int, kRows...>) {
  return ((rows == kRows + 1 ? (Int8FewRowsForward<kRows + 1>(in, weight, out), true) : false) ||
          ...);
}
#endif

// The INT8 products of at most kFusedMaxRows rows with the vector kernel above; false where it
// does not apply (no AVX2, or columns or groups not in multiples of 8).
bool Int8FewRows(const float* in, const FrozenWeight& weight, float* out, int64_t rows) {
#if defined(__AVX2__) && defined(__FMA__)
  if (weight.format == WeightFormat::kInt8 && weight.columns % 8 == 0 &&
      weight.group_size % 8 == 0 && rows >= 1 && rows <= kFusedMaxRows) {
    return Int8FewRowsDispatch(in, weight, out, rows,
                               std::make_integer_sequence<int, kFusedMaxRows>());
  }
#endif
  return false;
}

// An input quantized for a product with int8 activations: each row per group of the weight's
// group size, as kernels/shared/frozen_weight.h's QuantizeActivation rounds.
struct QuantizedRows {
  std::vector<int8_t> values;  // [rows, columns]
  std::vector<float> scales;   // [rows, groups]
};

void QuantizeRows(const float* in, int64_t rows, const FrozenWeight& weight,
                  QuantizedRows& quantized) {
  const int64_t columns = weight.columns;
  const int64_t groups = weight.groups_per_row();
  quantized.values.resize(static_cast<size_t>(rows * columns));
  quantized.scales.resize(static_cast<size_t>(rows * groups));
#pragma omp parallel for schedule(static) if (rows * columns > 65536)
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t begin = g * weight.group_size;
      const int64_t end = std::min(begin + weight.group_size, columns);
      const float* x = in + row * columns;
      float largest = 0.0F;
#pragma omp simd reduction(max : largest)
      for (int64_t c = begin; c < end; ++c) largest = std::max(largest, std::abs(x[c]));
      const float inverse = kernels::ActivationInverseScale(largest);
      quantized.scales[static_cast<size_t>(row * groups + g)] = kernels::ActivationScale(largest);
      int8_t* q = quantized.values.data() + row * columns;
#pragma omp simd
      for (int64_t c = begin; c < end; ++c) q[c] = kernels::QuantizeActivation(x[c], inverse);
    }
  }
}

#if defined(__AVX2__) && defined(__FMA__)
// kRows input rows against output row `o` of the weight, 32 columns at a time in integers:
// maddubs multiplies unsigned by signed bytes, so each pair is taken as |w| · (x with w's sign),
// which is w · x. A pair of products is at most 2 · 127 · 127 = 32258 and does not saturate its
// 16 bits, since neither side is ever −128. Each group's integer sums are scaled once into fp32.
// Needs columns and the group size in multiples of 32.
template <int kRows>
void Int8ActivationRows(const int8_t* w, const float* w_scales, const QuantizedRows& input,
                        int64_t first_row, const FrozenWeight& weight, float* out, int64_t o) {
  const int64_t columns = weight.columns;
  const int64_t groups = weight.groups_per_row();
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 total[kRows];
  for (int r = 0; r < kRows; ++r) total[r] = _mm256_setzero_ps();
  const int8_t* x[kRows];
  const float* x_scales[kRows];
  for (int r = 0; r < kRows; ++r) {
    x[r] = input.values.data() + (first_row + r) * columns;
    x_scales[r] = input.scales.data() + (first_row + r) * groups;
  }
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t begin = g * weight.group_size;
    const int64_t end = std::min(begin + weight.group_size, columns);
    __m256i sums[kRows];
    for (int r = 0; r < kRows; ++r) sums[r] = _mm256_setzero_si256();
    for (int64_t c = begin; c < end; c += 32) {
      const __m256i values = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + c));
      const __m256i magnitudes = _mm256_abs_epi8(values);
      for (int r = 0; r < kRows; ++r) {
        const __m256i signed_inputs = _mm256_sign_epi8(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[r] + c)), values);
        const __m256i pairs = _mm256_maddubs_epi16(magnitudes, signed_inputs);
        sums[r] = _mm256_add_epi32(sums[r], _mm256_madd_epi16(pairs, ones));
      }
    }
    for (int r = 0; r < kRows; ++r) {
      total[r] = _mm256_fmadd_ps(_mm256_set1_ps(w_scales[g] * x_scales[r][g]),
                                 _mm256_cvtepi32_ps(sums[r]), total[r]);
    }
  }
  for (int r = 0; r < kRows; ++r) out[(first_row + r) * weight.rows + o] = HorizontalSum(total[r]);
}
#endif

// out = in · ŵᵀ with the input quantized too (FrozenWeight::int8_activations): each output row's
// int8 values are read once per block of rows, from memory once and from cache after.
void Int8ActivationForward(const float* in, const FrozenWeight& weight, float* out, int64_t rows) {
  QuantizedRows input;
  QuantizeRows(in, rows, weight, input);
  const int64_t columns = weight.columns;
  const int64_t groups = weight.groups_per_row();
#if defined(__AVX2__) && defined(__FMA__)
  if (columns % 32 == 0 && weight.group_size % 32 == 0) {
    constexpr int64_t kRowBlock = 4;
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < weight.rows; ++o) {
      const int8_t* w = static_cast<const int8_t*>(weight.values) + o * columns;
      const float* w_scales = weight.scales + o * groups;
      int64_t r = 0;
      for (; r + kRowBlock <= rows; r += kRowBlock) {
        Int8ActivationRows<kRowBlock>(w, w_scales, input, r, weight, out, o);
      }
      switch (rows - r) {
        case 3:
          Int8ActivationRows<3>(w, w_scales, input, r, weight, out, o);
          break;
        case 2:
          Int8ActivationRows<2>(w, w_scales, input, r, weight, out, o);
          break;
        case 1:
          Int8ActivationRows<1>(w, w_scales, input, r, weight, out, o);
          break;
        default:
          break;
      }
    }
    return;
  }
#endif
#pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < weight.rows; ++o) {
    const int8_t* w = static_cast<const int8_t*>(weight.values) + o * columns;
    for (int64_t r = 0; r < rows; ++r) {
      const int8_t* x = input.values.data() + r * columns;
      float total = 0.0F;
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t begin = g * weight.group_size;
        const int64_t end = std::min(begin + weight.group_size, columns);
        int32_t sum = 0;
        for (int64_t c = begin; c < end; ++c) {
          sum += static_cast<int32_t>(w[c]) * static_cast<int32_t>(x[c]);
        }
        total += weight.scales[o * groups + g] * input.scales[static_cast<size_t>(r * groups + g)] *
                 static_cast<float>(sum);
      }
      out[r * weight.rows + o] = total;
    }
  }
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
  if (weight.format == WeightFormat::kInt8 && weight.int8_activations) {
    Int8ActivationForward(in, weight, out, rows);
    return;
  }
  if (rows <= kFusedMaxRows) {
    if (!Int8FewRows(in, weight, out, rows)) FewRowsForward(in, weight, out, rows);
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
