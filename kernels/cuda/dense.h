// Row-wise transformer kernels on the GPU: the CUDA twins of kernels/cpu/dense.h (RMSNorm,
// rotate-half RoPE, SwiGLU), plus the embedding lookup and bf16 rounding that mixed precision
// needs. Same layouts and the same "backward adds into input gradients" rule as the CPU
// kernels. Pointers are device pointers; sizes are the caller's to check, as on the CPU. Each
// call queues its kernels on the default stream and returns a launch error, if any.
//
// bf16 values are their bits (uint16_t), as __nv_bfloat16 stores them; a null bf16 output is
// skipped.
#ifndef FEDMOE_KERNELS_CUDA_DENSE_H_
#define FEDMOE_KERNELS_CUDA_DENSE_H_

#include <cstdint>

#include "absl/status/status.h"

namespace fedmoe::kernels::cuda {

using DeviceBf16 = uint16_t;

// out = in / sqrt(mean(in²) + eps) ⊙ weight per row, and rstd[row] = that 1/rms. out and
// out_bf16 may each be null.
absl::Status RmsNormForward(const float* in, const float* weight, float* out, DeviceBf16* out_bf16,
                            float* rstd, int64_t rows, int64_t width, float eps);

// The scratch RmsNormBackward needs for d_weight, in floats.
int64_t RmsNormBackwardScratch(int64_t rows, int64_t width);
// d_in += ∂/∂in, and d_weight += ∂/∂weight unless null (then scratch may be null). The weight
// gradient is summed in a fixed order, so runs repeat bit for bit.
absl::Status RmsNormBackward(const float* in, const float* weight, const float* rstd,
                             const float* d_out, float* d_in, float* d_weight, float* scratch,
                             int64_t rows, int64_t width);

// The cos and sin tables [positions, head_dim/2] on the device: kernels/cpu's RopeTable, copied.
struct DeviceRopeTable {
  const float* cos = nullptr;
  const float* sin = nullptr;
  int64_t head_dim = 0;
};

// Rotates the heads of x [batch·seq_len, heads·head_dim] in place by position (row % seq_len):
// the twin of cpu::RopeForward.
absl::Status RopeForward(float* x, int64_t batch, int64_t seq_len, int64_t heads,
                         const DeviceRopeTable& table);
// The inverse rotation, in place on the gradient (RoPE is orthogonal): cpu::RopeBackward's twin.
absl::Status RopeBackward(float* d_x, int64_t batch, int64_t seq_len, int64_t heads,
                          const DeviceRopeTable& table);
// cpu::RopeForwardAt's twin: `rows` consecutive positions of one sequence from first_position,
// which the table must reach.
absl::Status RopeForwardAt(float* x, int64_t rows, int64_t heads, int64_t first_position,
                           const DeviceRopeTable& table);

// act = silu(gate) ⊙ up over n values, into act and/or act_bf16 (either may be null).
absl::Status SwiGluForward(const float* gate, const float* up, float* act, DeviceBf16* act_bf16,
                           int64_t n);
// Writes d_gate and d_up, each as fp32 or bf16 (pass one of each pair).
absl::Status SwiGluBackward(const float* gate, const float* up, const float* d_act, float* d_gate,
                            DeviceBf16* d_gate_bf16, float* d_up, DeviceBf16* d_up_bf16, int64_t n);

// out[row] = table[tokens[row]] for [rows, width].
absl::Status EmbeddingForward(const int32_t* tokens, const float* table, float* out, int64_t rows,
                              int64_t width);

// d_table[tokens[row]] += d_out[row]. Rows that share a token add with atomics, so the order
// of their additions (and the last bits) can differ between runs.
absl::Status EmbeddingBackward(const int32_t* tokens, const float* d_out, float* d_table,
                               int64_t rows, int64_t width);

// out[i] = in[i] rounded to bf16, ties to even.
absl::Status RoundToBf16(const float* in, DeviceBf16* out, int64_t n);

// destination[i] += source[i].
absl::Status AddInto(float* destination, const float* source, int64_t n);

// The scratch SumColumns needs, in doubles.
int64_t SumColumnsScratch(int64_t rows, int64_t width);
// sums[j] = Σ_row values[row, j] over [rows, width], in double, summed in a fixed order (64-row
// chunks, then the chunks), so runs repeat bit for bit.
absl::Status SumColumns(const float* values, int64_t rows, int64_t width, double* scratch,
                        double* sums);

// out[row, j] = row_values[j] for every row of [rows, width].
absl::Status BroadcastRow(const float* row_values, float* out, int64_t rows, int64_t width);

}  // namespace fedmoe::kernels::cuda

#endif  // FEDMOE_KERNELS_CUDA_DENSE_H_
