#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/cuda/dense.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/reduce.cuh"

namespace fedmoe::kernels::cuda {
namespace {

constexpr int kRowThreads = 256;
constexpr int kElementThreads = 256;
// RmsNormBackward's weight gradient: each block sums this many rows of a column strip.
constexpr int64_t kRowsPerPartial = 64;

__device__ __forceinline__ __nv_bfloat16* AsBf16(DeviceBf16* bits) {
  return reinterpret_cast<__nv_bfloat16*>(bits);
}

__global__ void RmsNormForwardKernel(const float* __restrict__ in, const float* __restrict__ weight,
                                     float* __restrict__ out, DeviceBf16* __restrict__ out_bf16,
                                     float* __restrict__ rstd, int64_t width, float eps) {
  const int64_t row = blockIdx.x;
  const float* x = in + row * width;
  float squares = 0.0F;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) squares += x[i] * x[i];
  squares = BlockSum(squares);
  const float inverse_rms = rsqrtf(squares / static_cast<float>(width) + eps);
  if (threadIdx.x == 0) rstd[row] = inverse_rms;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    const float y = x[i] * inverse_rms * weight[i];
    if (out != nullptr) out[row * width + i] = y;
    if (out_bf16 != nullptr) AsBf16(out_bf16)[row * width + i] = __float2bfloat16(y);
  }
}

// y = w ⊙ x·r with r = (mean(x²) + eps)^-1/2:
//   dx = r·(w ⊙ dy) − x·r³·⟨w ⊙ dy, x⟩/n.
__global__ void RmsNormInputGradientKernel(const float* __restrict__ in,
                                           const float* __restrict__ weight,
                                           const float* __restrict__ rstd,
                                           const float* __restrict__ d_out,
                                           float* __restrict__ d_in, int64_t width) {
  const int64_t row = blockIdx.x;
  const float* x = in + row * width;
  const float* dy = d_out + row * width;
  float dot = 0.0F;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) dot += weight[i] * dy[i] * x[i];
  dot = BlockSum(dot);
  const float r = rstd[row];
  const float correction = r * r * r * dot / static_cast<float>(width);
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    d_in[row * width + i] += r * weight[i] * dy[i] - x[i] * correction;
  }
}

// partials[chunk, i] = Σ over the chunk's rows of dy·x·r, one thread per column.
__global__ void RmsNormWeightPartialsKernel(const float* __restrict__ in,
                                            const float* __restrict__ rstd,
                                            const float* __restrict__ d_out,
                                            float* __restrict__ partials, int64_t rows,
                                            int64_t width) {
  const int64_t column = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  if (column >= width) return;
  const int64_t first = chunk * kRowsPerPartial;
  const int64_t last = rows < first + kRowsPerPartial ? rows : first + kRowsPerPartial;
  float sum = 0.0F;
  for (int64_t row = first; row < last; ++row) {
    sum += d_out[row * width + column] * in[row * width + column] * rstd[row];
  }
  partials[chunk * width + column] = sum;
}

// sums[i] (+)= Σ over the chunks, in chunk order. The loads do not depend on the running sum,
// so unrolled they are in flight together.
template <typename T, bool kAccumulate>
__global__ void AddColumnSumsKernel(const T* __restrict__ partials, int64_t chunks, int64_t width,
                                    T* __restrict__ sums) {
  const int64_t column = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (column >= width) return;
  T sum = 0;
  FEDMOE_UNROLL_BY(8)
  for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += partials[chunk * width + column];
  if constexpr (kAccumulate) {
    sums[column] += sum;
  } else {
    sums[column] = sum;
  }
}

__global__ void RopeRotateKernel(float* __restrict__ x, const float* __restrict__ cos,
                                 const float* __restrict__ sin, int64_t rows, int64_t seq_len,
                                 int64_t heads, int64_t head_dim, float direction,
                                 int64_t first_position) {
  const int64_t half = head_dim / 2;
  const int64_t pairs = rows * heads * half;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < pairs;
       p += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t i = p % half;
    const int64_t head = (p / half) % heads;
    const int64_t row = p / (half * heads);
    const int64_t position = first_position + row % seq_len;
    float* values = x + row * heads * head_dim + head * head_dim;
    const float c = cos[position * half + i];
    const float s = direction * sin[position * half + i];
    const float first = values[i];
    const float second = values[i + half];
    values[i] = first * c - second * s;
    values[i + half] = second * c + first * s;
  }
}

__device__ __forceinline__ float Sigmoid(float g) { return 1.0F / (1.0F + expf(-g)); }

__global__ void SwiGluForwardKernel(const float* __restrict__ gate, const float* __restrict__ up,
                                    float* __restrict__ act, DeviceBf16* __restrict__ act_bf16,
                                    int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const float g = gate[i];
    const float y = g * Sigmoid(g) * up[i];
    if (act != nullptr) act[i] = y;
    if (act_bf16 != nullptr) AsBf16(act_bf16)[i] = __float2bfloat16(y);
  }
}

__global__ void SwiGluBackwardKernel(const float* __restrict__ gate, const float* __restrict__ up,
                                     const float* __restrict__ d_act, float* __restrict__ d_gate,
                                     DeviceBf16* __restrict__ d_gate_bf16, float* __restrict__ d_up,
                                     DeviceBf16* __restrict__ d_up_bf16, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const float g = gate[i];
    const float sigmoid = Sigmoid(g);
    const float dy = d_act[i];
    // d silu(g)/dg = σ(g)·(1 + g·(1 − σ(g))).
    const float dg = dy * up[i] * sigmoid * (1.0F + g * (1.0F - sigmoid));
    const float du = dy * g * sigmoid;
    if (d_gate != nullptr) d_gate[i] = dg;
    if (d_gate_bf16 != nullptr) AsBf16(d_gate_bf16)[i] = __float2bfloat16(dg);
    if (d_up != nullptr) d_up[i] = du;
    if (d_up_bf16 != nullptr) AsBf16(d_up_bf16)[i] = __float2bfloat16(du);
  }
}

__global__ void EmbeddingForwardKernel(const int32_t* __restrict__ tokens,
                                       const float* __restrict__ table, float* __restrict__ out,
                                       int64_t width) {
  const int64_t row = blockIdx.x;
  const float* source = table + static_cast<int64_t>(tokens[row]) * width;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) out[row * width + i] = source[i];
}

__global__ void EmbeddingBackwardKernel(const int32_t* __restrict__ tokens,
                                        const float* __restrict__ d_out,
                                        float* __restrict__ d_table, int64_t width) {
  const int64_t row = blockIdx.x;
  float* destination = d_table + static_cast<int64_t>(tokens[row]) * width;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    atomicAdd(destination + i, d_out[row * width + i]);
  }
}

__global__ void RoundToBf16Kernel(const float* __restrict__ in, DeviceBf16* __restrict__ out,
                                  int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    AsBf16(out)[i] = __float2bfloat16(in[i]);
  }
}

__global__ void AddIntoKernel(float* __restrict__ destination, const float* __restrict__ source,
                              int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    destination[i] += source[i];
  }
}

// partials[chunk, j] = Σ over the chunk's rows of values[row, j], in double: a thread per
// (chunk, column), so a narrow matrix (a router's 64 experts) still occupies the GPU.
__global__ void ColumnChunkSumsKernel(const float* __restrict__ values, int64_t rows, int64_t width,
                                      double* __restrict__ partials) {
  const int64_t chunks = (rows + kRowsPerPartial - 1) / kRowsPerPartial;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < chunks * width;
       t += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t column = t % width;
    const int64_t first = t / width * kRowsPerPartial;
    const int64_t last = rows < first + kRowsPerPartial ? rows : first + kRowsPerPartial;
    double sum = 0.0;
    FEDMOE_UNROLL_BY(8)
    for (int64_t row = first; row < last; ++row) {
      sum += static_cast<double>(values[row * width + column]);
    }
    partials[t] = sum;
  }
}

__global__ void BroadcastRowKernel(const float* __restrict__ row_values, float* __restrict__ out,
                                   int64_t n, int64_t width) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    out[i] = row_values[i % width];
  }
}

LaunchShape PerRow(int64_t rows) { return {dim3(static_cast<unsigned>(rows)), dim3(kRowThreads)}; }
LaunchShape PerElement(int64_t n) { return {BlocksFor(n, kElementThreads), dim3(kElementThreads)}; }

int64_t PartialChunks(int64_t rows) { return (rows + kRowsPerPartial - 1) / kRowsPerPartial; }

// direction +1 is RoPE, −1 its transpose.
absl::Status RopeRotate(float* x, int64_t batch, int64_t seq_len, int64_t heads,
                        const DeviceRopeTable& table, float direction, int64_t first_position = 0) {
  const int64_t rows = batch * seq_len;
  const int64_t pairs = rows * heads * (table.head_dim / 2);
  if (pairs == 0) return absl::OkStatus();
  return Launch("rope", RopeRotateKernel, PerElement(pairs), x, table.cos, table.sin, rows, seq_len,
                heads, table.head_dim, direction, first_position);
}

}  // namespace

absl::Status RmsNormForward(const float* in, const float* weight, float* out, DeviceBf16* out_bf16,
                            float* rstd, int64_t rows, int64_t width, float eps) {
  if (rows == 0) return absl::OkStatus();
  return Launch("rmsnorm forward", RmsNormForwardKernel, PerRow(rows), in, weight, out, out_bf16,
                rstd, width, eps);
}

int64_t RmsNormBackwardScratch(int64_t rows, int64_t width) { return PartialChunks(rows) * width; }

absl::Status RmsNormBackward(const float* in, const float* weight, const float* rstd,
                             const float* d_out, float* d_in, float* d_weight, float* scratch,
                             int64_t rows, int64_t width) {
  if (rows == 0) return absl::OkStatus();
  if (absl::Status status = Launch("rmsnorm backward", RmsNormInputGradientKernel, PerRow(rows), in,
                                   weight, rstd, d_out, d_in, width);
      !status.ok()) {
    return status;
  }
  if (d_weight == nullptr) return absl::OkStatus();
  const int64_t chunks = PartialChunks(rows);
  const auto column_blocks = static_cast<unsigned>((width + kElementThreads - 1) / kElementThreads);
  if (absl::Status status =
          Launch("rmsnorm weight gradient", RmsNormWeightPartialsKernel,
                 {dim3(column_blocks, static_cast<unsigned>(chunks)), dim3(kElementThreads)}, in,
                 rstd, d_out, scratch, rows, width);
      !status.ok()) {
    return status;
  }
  return Launch("rmsnorm weight gradient sum", AddColumnSumsKernel<float, true>,
                {dim3(column_blocks), dim3(kElementThreads)}, static_cast<const float*>(scratch),
                chunks, width, d_weight);
}

absl::Status RopeForward(float* x, int64_t batch, int64_t seq_len, int64_t heads,
                         const DeviceRopeTable& table) {
  return RopeRotate(x, batch, seq_len, heads, table, 1.0F);
}

absl::Status RopeBackward(float* d_x, int64_t batch, int64_t seq_len, int64_t heads,
                          const DeviceRopeTable& table) {
  return RopeRotate(d_x, batch, seq_len, heads, table, -1.0F);
}

absl::Status RopeForwardAt(float* x, int64_t rows, int64_t heads, int64_t first_position,
                           const DeviceRopeTable& table) {
  return RopeRotate(x, 1, rows, heads, table, 1.0F, first_position);
}

absl::Status SwiGluForward(const float* gate, const float* up, float* act, DeviceBf16* act_bf16,
                           int64_t n) {
  if (n == 0) return absl::OkStatus();
  return Launch("swiglu forward", SwiGluForwardKernel, PerElement(n), gate, up, act, act_bf16, n);
}

absl::Status SwiGluBackward(const float* gate, const float* up, const float* d_act, float* d_gate,
                            DeviceBf16* d_gate_bf16, float* d_up, DeviceBf16* d_up_bf16,
                            int64_t n) {
  if (n == 0) return absl::OkStatus();
  return Launch("swiglu backward", SwiGluBackwardKernel, PerElement(n), gate, up, d_act, d_gate,
                d_gate_bf16, d_up, d_up_bf16, n);
}

absl::Status EmbeddingForward(const int32_t* tokens, const float* table, float* out, int64_t rows,
                              int64_t width) {
  if (rows == 0) return absl::OkStatus();
  return Launch("embedding forward", EmbeddingForwardKernel, PerRow(rows), tokens, table, out,
                width);
}

absl::Status EmbeddingBackward(const int32_t* tokens, const float* d_out, float* d_table,
                               int64_t rows, int64_t width) {
  if (rows == 0) return absl::OkStatus();
  return Launch("embedding backward", EmbeddingBackwardKernel, PerRow(rows), tokens, d_out, d_table,
                width);
}

absl::Status RoundToBf16(const float* in, DeviceBf16* out, int64_t n) {
  if (n == 0) return absl::OkStatus();
  return Launch("round to bf16", RoundToBf16Kernel, PerElement(n), in, out, n);
}

absl::Status AddInto(float* destination, const float* source, int64_t n) {
  if (n == 0) return absl::OkStatus();
  return Launch("add", AddIntoKernel, PerElement(n), destination, source, n);
}

int64_t SumColumnsScratch(int64_t rows, int64_t width) { return PartialChunks(rows) * width; }

absl::Status SumColumns(const float* values, int64_t rows, int64_t width, double* scratch,
                        double* sums) {
  if (width == 0) return absl::OkStatus();
  const int64_t chunks = PartialChunks(rows);
  if (absl::Status status = Launch("sum columns", ColumnChunkSumsKernel, PerElement(chunks * width),
                                   values, rows, width, scratch);
      !status.ok()) {
    return status;
  }
  return Launch("sum columns of chunks", AddColumnSumsKernel<double, false>,
                {BlocksFor(width, kElementThreads), dim3(kElementThreads)},
                static_cast<const double*>(scratch), chunks, width, sums);
}

absl::Status BroadcastRow(const float* row_values, float* out, int64_t rows, int64_t width) {
  if (rows * width == 0) return absl::OkStatus();
  return Launch("broadcast row", BroadcastRowKernel, PerElement(rows * width), row_values, out,
                rows * width, width);
}

}  // namespace fedmoe::kernels::cuda
