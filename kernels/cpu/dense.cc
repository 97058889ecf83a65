#include "kernels/cpu/dense.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/eigen_maps.h"

namespace fedmoe::kernels::cpu {

using internal::View;

namespace {

// Calls body(first, count) over [0, n) in blocks: Eigen arrays of one block keep exp and the
// arithmetic in the vector units, and large ranges split their blocks across threads.
template <typename Body>
void ForEachBlock(int64_t n, const Body& body) {
  constexpr int64_t kBlock = 16384;
#pragma omp parallel for schedule(static) if (n > 4 * kBlock)
  for (int64_t first = 0; first < n; first += kBlock) body(first, std::min(kBlock, n - first));
}

}  // namespace

void LinearForward(const float* in, const float* weight, float* out, int64_t rows,
                   int64_t in_features, int64_t out_features) {
  View(out, rows, out_features).noalias() =
      View(in, rows, in_features) * View(weight, out_features, in_features).transpose();
}

void LinearBackward(const float* in, const float* weight, const float* d_out, float* d_in,
                    float* d_weight, int64_t rows, int64_t in_features, int64_t out_features) {
  const auto gradient = View(d_out, rows, out_features);
  if (d_in != nullptr) {
    View(d_in, rows, in_features).noalias() += gradient * View(weight, out_features, in_features);
  }
  if (d_weight != nullptr) {
    View(d_weight, out_features, in_features).noalias() +=
        gradient.transpose() * View(in, rows, in_features);
  }
}

void RmsNormForward(const float* in, const float* weight, float* out, float* rstd, int64_t rows,
                    int64_t width, float eps) {
  const auto weights = View(weight, 1, width).array();
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const auto x = View(in + row * width, 1, width);
    const float inverse_rms = 1.0f / std::sqrt(x.squaredNorm() / static_cast<float>(width) + eps);
    rstd[row] = inverse_rms;
    View(out + row * width, 1, width).array() = x.array() * inverse_rms * weights;
  }
}

void RmsNormBackward(const float* in, const float* weight, const float* rstd, const float* d_out,
                     float* d_in, float* d_weight, int64_t rows, int64_t width) {
  // y = x·r·w with r = (mean(x²) + eps)^(−1/2), so
  // dx = r·(w⊙dy) − x·r³/width·Σ(w⊙dy⊙x) and dw = Σ_rows dy⊙x·r.
  const auto weights = View(weight, 1, width).array();
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const auto x = View(in + row * width, 1, width).array();
    const auto dy = View(d_out + row * width, 1, width).array();
    const float r = rstd[row];
    const float projection = (weights * dy * x).sum();
    View(d_in + row * width, 1, width).array() +=
        r * weights * dy - x * (r * r * r * projection / static_cast<float>(width));
  }
  if (d_weight == nullptr) return;
  auto d_weights = View(d_weight, 1, width).array();
  for (int64_t row = 0; row < rows; ++row) {
    d_weights += View(d_out + row * width, 1, width).array() *
                 View(in + row * width, 1, width).array() * rstd[row];
  }
}

RopeTable::RopeTable(int64_t max_positions, int64_t head_dim, double theta)
    : max_positions_(max_positions), head_dim_(head_dim) {
  const int64_t half = head_dim / 2;
  cos_.resize(static_cast<size_t>(max_positions * half));
  sin_.resize(cos_.size());
  for (int64_t position = 0; position < max_positions; ++position) {
    for (int64_t i = 0; i < half; ++i) {
      const double inverse_frequency =
          std::pow(theta, -static_cast<double>(2 * i) / static_cast<double>(head_dim));
      const double angle = static_cast<double>(position) * inverse_frequency;
      cos_[static_cast<size_t>(position * half + i)] = static_cast<float>(std::cos(angle));
      sin_[static_cast<size_t>(position * half + i)] = static_cast<float>(std::sin(angle));
    }
  }
}

namespace {

// Rotates each (i, i + head_dim/2) pair of every head by the position's angle; direction −1
// rotates back by the same angle, which is RoPE's transpose and so its backward.
void RotateHalves(float* x, int64_t batch, int64_t seq_len, int64_t heads, const RopeTable& table,
                  float direction, int64_t first_position = 0) {
  const int64_t head_dim = table.head_dim();
  const int64_t half = head_dim / 2;
  const int64_t rows = batch * seq_len;
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t position = first_position + row % seq_len;
    const float* cos = table.cos(position);
    const float* sin = table.sin(position);
    for (int64_t head = 0; head < heads; ++head) {
      float* h = x + (row * heads + head) * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const float first = h[i];
        const float second = h[i + half];
        const float signed_sin = direction * sin[i];
        h[i] = first * cos[i] - second * signed_sin;
        h[i + half] = second * cos[i] + first * signed_sin;
      }
    }
  }
}

}  // namespace

void RopeForward(float* x, int64_t batch, int64_t seq_len, int64_t heads, const RopeTable& table) {
  RotateHalves(x, batch, seq_len, heads, table, 1.0f);
}

void RopeBackward(float* d_x, int64_t batch, int64_t seq_len, int64_t heads,
                  const RopeTable& table) {
  RotateHalves(d_x, batch, seq_len, heads, table, -1.0f);
}

void RopeForwardAt(float* x, int64_t rows, int64_t heads, int64_t first_position,
                   const RopeTable& table) {
  RotateHalves(x, 1, rows, heads, table, 1.0f, first_position);
}

namespace {

// silu(gate) ⊙ up, block by block: store(first, count, values) receives each block's values as
// an Eigen expression.
template <typename Store>
void SwiGluBlocks(const float* gate, const float* up, int64_t n, const Store& store) {
  ForEachBlock(n, [&](int64_t first, int64_t count) {
    const auto g = View(gate + first, 1, count).array();
    store(first, count, g / (1.0f + (-g).exp()) * View(up + first, 1, count).array());
  });
}

// The gradients of out = silu(gate) ⊙ up, block by block: store(first, count, d_gate, d_up)
// receives each block's two as Eigen expressions.
template <typename Store>
void SwiGluGradientBlocks(const float* gate, const float* up, const float* d_out, int64_t n,
                          const Store& store) {
  ForEachBlock(n, [&](int64_t first, int64_t count) {
    const auto g = View(gate + first, 1, count).array();
    const auto dy = View(d_out + first, 1, count).array();
    const Eigen::Array<float, 1, Eigen::Dynamic> sigmoid = 1.0f / (1.0f + (-g).exp());
    // d silu(g)/dg = σ(g)·(1 + g·(1 − σ(g))).
    store(first, count,
          dy * View(up + first, 1, count).array() * sigmoid * (1.0f + g * (1.0f - sigmoid)),
          dy * g * sigmoid);
  });
}

}  // namespace

void SwiGluForward(const float* gate, const float* up, float* out, int64_t n) {
  SwiGluBlocks(gate, up, n, [&](int64_t first, int64_t count, const auto& values) {
    View(out + first, 1, count).array() = values;
  });
}

void SwiGluBackward(const float* gate, const float* up, const float* d_out, float* d_gate,
                    float* d_up, int64_t n) {
  SwiGluGradientBlocks(gate, up, d_out, n,
                       [&](int64_t first, int64_t count, const auto& d_g, const auto& d_u) {
                         View(d_gate + first, 1, count).array() = d_g;
                         View(d_up + first, 1, count).array() = d_u;
                       });
}

void SwiGluMlpForward(const float* in, const float* w1, const float* w3, const float* w2,
                      float* gate, float* up, float* act, float* out, int64_t rows, int64_t width,
                      int64_t inner) {
  LinearForward(in, w1, gate, rows, width, inner);
  LinearForward(in, w3, up, rows, width, inner);
  SwiGluForward(gate, up, act, rows * inner);
  LinearForward(act, w2, out, rows, inner, width);
}

void SwiGluMlpBackward(const float* in, const float* w1, const float* w3, const float* w2,
                       const float* gate, const float* up, const float* act, const float* d_out,
                       float* d_in, float* d_w1, float* d_w3, float* d_w2, float* d_gate,
                       float* d_up, float* d_act, int64_t rows, int64_t width, int64_t inner) {
  // d_act is written, not accumulated: it is scratch, so no zeroing pass first.
  View(d_act, rows, inner).noalias() = View(d_out, rows, width) * View(w2, width, inner);
  LinearBackward(act, w2, d_out, /*d_in=*/nullptr, d_w2, rows, inner, width);
  SwiGluBackward(gate, up, d_act, d_gate, d_up, rows * inner);
  LinearBackward(in, w1, d_gate, d_in, d_w1, rows, width, inner);
  LinearBackward(in, w3, d_up, d_in, d_w3, rows, width, inner);
}

void LinearForwardBf16(const Bf16* in, const Bf16* weight, float* out, int64_t rows,
                       int64_t in_features, int64_t out_features) {
  // The weight is [out_features, in_features]: as the right operand of in·weightᵀ it is read
  // transposed, which oneDNN does through strides.
  Bf16MatMul(in, Storage::kRowMajor, weight, Storage::kTransposed, out, rows, out_features,
             in_features, false);
}

void LinearBackwardBf16(const Bf16* in, const Bf16* weight, const Bf16* d_out, float* d_in,
                        float* d_weight, int64_t rows, int64_t in_features, int64_t out_features) {
  if (d_in != nullptr) {
    Bf16MatMul(d_out, Storage::kRowMajor, weight, Storage::kRowMajor, d_in, rows, in_features,
               out_features, true);
  }
  // d_outᵀ·in: the row-major [rows, out_features] gradient read transposed.
  if (d_weight != nullptr) {
    Bf16MatMul(d_out, Storage::kTransposed, in, Storage::kRowMajor, d_weight, out_features,
               in_features, rows, true);
  }
}

void SwiGluMlpForwardBf16(const Bf16* in, const Bf16* w1, const Bf16* w3, const Bf16* w2,
                          float* gate, float* up, Bf16* act, float* out, int64_t rows,
                          int64_t width, int64_t inner) {
  LinearForwardBf16(in, w1, gate, rows, width, inner);
  LinearForwardBf16(in, w3, up, rows, width, inner);
  SwiGluBlocks(gate, up, rows * inner, [&](int64_t first, int64_t count, const auto& values) {
    const Eigen::Array<float, 1, Eigen::Dynamic> block = values;
    ToBf16(block.data(), act + first, count);
  });
  LinearForwardBf16(act, w2, out, rows, inner, width);
}

void SwiGluMlpBackwardBf16(const Bf16* in, const Bf16* w1, const Bf16* w3, const Bf16* w2,
                           const float* gate, const float* up, const Bf16* act, const Bf16* d_out,
                           float* d_in, float* d_w1, float* d_w3, float* d_w2, float* d_act,
                           Bf16* d_gate, Bf16* d_up, int64_t rows, int64_t width, int64_t inner) {
  // d_act is written, not accumulated: it is scratch, so no zeroing pass first.
  Bf16MatMul(d_out, Storage::kRowMajor, w2, Storage::kRowMajor, d_act, rows, inner, width, false);
  LinearBackwardBf16(act, w2, d_out, /*d_in=*/nullptr, d_w2, rows, inner, width);
  // Rounded as they are written: only the products read them.
  SwiGluGradientBlocks(gate, up, d_act, rows * inner,
                       [&](int64_t first, int64_t count, const auto& d_g, const auto& d_u) {
                         const Eigen::Array<float, 1, Eigen::Dynamic> gate_block = d_g;
                         const Eigen::Array<float, 1, Eigen::Dynamic> up_block = d_u;
                         ToBf16(gate_block.data(), d_gate + first, count);
                         ToBf16(up_block.data(), d_up + first, count);
                       });
  LinearBackwardBf16(in, w1, d_gate, d_in, d_w1, rows, width, inner);
  LinearBackwardBf16(in, w3, d_up, d_in, d_w3, rows, width, inner);
}

}  // namespace fedmoe::kernels::cpu
