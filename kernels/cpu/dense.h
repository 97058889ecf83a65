// Row-wise dense kernels of a transformer block on the host: linear layers, RMSNorm, rotate-half
// RoPE and the SwiGLU gate, each a forward/backward pair. Activations are row-major
// [rows, width] float arrays, one row per token; weights are in the Hugging Face layout
// ([out_features, in_features] for a linear).
//
// Backward kernels ADD into the gradients of inputs and weights (d_in += ..., d_weight += ...),
// so a tensor used twice (the residual stream) collects both contributions and gradient
// accumulation over micro-batches is free; callers zero them first. A null weight gradient
// skips that product (a frozen weight).
//
// Preconditions (sizes, non-overlapping buffers) are the caller's: the model validates shapes
// once per pass, so the kernels do not re-check them per call. Each kernel parallelises over
// rows (OpenMP) or inside its GEMM (Eigen), with CpuThreads() threads.
#ifndef FEDMOE_KERNELS_CPU_DENSE_H_
#define FEDMOE_KERNELS_CPU_DENSE_H_

#include <cstdint>
#include <vector>

#include "kernels/cpu/bf16.h"

namespace fedmoe::kernels::cpu {

// out[rows, out_features] = in[rows, in_features] · weightᵀ, as torch.nn.Linear without bias.
void LinearForward(const float* in, const float* weight, float* out, int64_t rows,
                   int64_t in_features, int64_t out_features);

void LinearBackward(const float* in, const float* weight, const float* d_out, float* d_in,
                    float* d_weight, int64_t rows, int64_t in_features, int64_t out_features);

// out = in / sqrt(mean(in²) + eps) ⊙ weight, per row. Stores each row's 1/rms in rstd[rows]
// for the backward pass.
void RmsNormForward(const float* in, const float* weight, float* out, float* rstd, int64_t rows,
                    int64_t width, float eps);

void RmsNormBackward(const float* in, const float* weight, const float* rstd, const float* d_out,
                     float* d_in, float* d_weight, int64_t rows, int64_t width);

// cos and sin of position·θ^(−2i/head_dim), i < head_dim/2, for positions [0, max_positions).
class RopeTable {
 public:
  RopeTable(int64_t max_positions, int64_t head_dim, double theta);
  int64_t max_positions() const { return max_positions_; }
  int64_t head_dim() const { return head_dim_; }
  const float* cos(int64_t position) const { return &cos_[position * (head_dim_ / 2)]; }
  const float* sin(int64_t position) const { return &sin_[position * (head_dim_ / 2)]; }

 private:
  int64_t max_positions_;
  int64_t head_dim_;
  std::vector<float> cos_;
  std::vector<float> sin_;
};

// Rotates, in place, the heads of x[batch·seq_len, heads·head_dim] by their position in the
// sequence (row % seq_len): the rotate-half form, x·cos + rotate_half(x)·sin, where
// rotate_half pairs element i with element i + head_dim/2. Needs seq_len ≤ table.max_positions().
void RopeForward(float* x, int64_t batch, int64_t seq_len, int64_t heads, const RopeTable& table);

// The inverse rotation, in place on the gradient: RoPE is orthogonal, so its backward is its
// transpose.
void RopeBackward(float* d_x, int64_t batch, int64_t seq_len, int64_t heads,
                  const RopeTable& table);

// RopeForward over `rows` consecutive positions of one sequence from first_position on: the new
// rows of a key-value cache. Needs first_position + rows ≤ table.max_positions().
void RopeForwardAt(float* x, int64_t rows, int64_t heads, int64_t first_position,
                   const RopeTable& table);

// out = silu(gate) ⊙ up over n values, where silu(g) = g·sigmoid(g).
void SwiGluForward(const float* gate, const float* up, float* out, int64_t n);
// Writes (does not add) d_gate and d_up.
void SwiGluBackward(const float* gate, const float* up, const float* d_out, float* d_gate,
                    float* d_up, int64_t n);

// The two-layer gated MLP of one expert over a block of rows:
//   gate = in·w1ᵀ, up = in·w3ᵀ, act = silu(gate) ⊙ up, out = act·w2ᵀ,
// with w1, w3 [inner, width] and w2 [width, inner]. gate, up and act [rows, inner] are kept for
// the backward pass.
void SwiGluMlpForward(const float* in, const float* w1, const float* w3, const float* w2,
                      float* gate, float* up, float* act, float* out, int64_t rows, int64_t width,
                      int64_t inner);
// Backward of SwiGluMlpForward. d_gate, d_up and d_act [rows, inner] are scratch. Null weight
// gradients, and a null d_in, are skipped.
void SwiGluMlpBackward(const float* in, const float* w1, const float* w3, const float* w2,
                       const float* gate, const float* up, const float* act, const float* d_out,
                       float* d_in, float* d_w1, float* d_w3, float* d_w2, float* d_gate,
                       float* d_up, float* d_act, int64_t rows, int64_t width, int64_t inner);

// LinearForward and LinearBackward with bf16 operands (bf16.h), fp32 accumulation and fp32
// results: out = in·weightᵀ; d_in += d_out·weight and d_weight += d_outᵀ·in, a null one
// skipped. Require CheckBf16MatMul() to be OK.
void LinearForwardBf16(const Bf16* in, const Bf16* weight, float* out, int64_t rows,
                       int64_t in_features, int64_t out_features);
void LinearBackwardBf16(const Bf16* in, const Bf16* weight, const Bf16* d_out, float* d_in,
                        float* d_weight, int64_t rows, int64_t in_features, int64_t out_features);

// SwiGluMlpForward with its three products in bf16: `in` and the weights come rounded to bf16,
// gate and up are fp32, and act is kept rounded to bf16, as the backward's weight product takes
// it.
void SwiGluMlpForwardBf16(const Bf16* in, const Bf16* w1, const Bf16* w3, const Bf16* w2,
                          float* gate, float* up, Bf16* act, float* out, int64_t rows,
                          int64_t width, int64_t inner);
// Its backward, with its five products in bf16; gradients accumulate in fp32 as in
// SwiGluMlpBackward. d_act [rows, inner] is fp32 scratch; d_gate and d_up [rows, inner] are
// scratch that takes those gradients rounded to bf16, as the products read them.
void SwiGluMlpBackwardBf16(const Bf16* in, const Bf16* w1, const Bf16* w3, const Bf16* w2,
                           const float* gate, const float* up, const Bf16* act, const Bf16* d_out,
                           float* d_in, float* d_w1, float* d_w3, float* d_w2, float* d_act,
                           Bf16* d_gate, Bf16* d_up, int64_t rows, int64_t width, int64_t inner);

}  // namespace fedmoe::kernels::cpu

#endif  // FEDMOE_KERNELS_CPU_DENSE_H_
