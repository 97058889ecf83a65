#include <cuda_runtime.h>

#include <cfloat>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/attention_tensor_core.h"
#include "kernels/cuda/attention_tiles.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/reduce.cuh"

namespace fedmoe::kernels::cuda {
namespace {

using attention_internal::BlocksOf;
using attention_internal::FirstVisibleKey;
using attention_internal::Geometry;
using attention_internal::GeometryOf;
using attention_internal::HeadStart;
using attention_internal::LastSeeingQuery;
using attention_internal::LoadTile;
using attention_internal::RowValuesStart;
using attention_internal::Visible;
using attention_internal::WithHeadDim;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
// A key block (forward, d_q) or a query block (d_k, d_v) has one position per lane.
constexpr int kLaneBlock = 32;

// Per head_dim: each lane holds head_dim/32 (at least one) of a row's dimensions, and a warp
// owns this many rows, fewer for wide heads so that the tiles fit 48 KiB of shared memory.
template <int kHeadDim>
struct Tiling {
  static constexpr int kDimsPerLane = (kHeadDim + 31) / 32;
  static constexpr int kRowsPerWarp = kHeadDim >= 128 ? 2 : 4;
  static constexpr int kBlockRows = kWarps * kRowsPerWarp;
  // Rows that lanes read across are padded by one float, off the shared-memory bank stride.
  static constexpr int kPadded = kHeadDim + 1;
};

// A warp's per-row sums, its lanes holding the head's dimensions lane, lane + 32, ...
template <int kHeadDim>
using WarpRows = float[Tiling<kHeadDim>::kRowsPerWarp][Tiling<kHeadDim>::kDimsPerLane];

template <int kHeadDim>
__device__ __forceinline__ void ZeroRows(WarpRows<kHeadDim>& rows) {
  using T = Tiling<kHeadDim>;
  for (int r = 0; r < T::kRowsPerWarp; ++r) {
    for (int i = 0; i < T::kDimsPerLane; ++i) rows[r][i] = 0.0F;
  }
}

// Writes the warp's rows, each divided by divisor[r] (null: by 1), to positions first + r of one
// head (base, width floats apart), leaving out positions past seq_len.
template <int kHeadDim>
__device__ __forceinline__ void StoreRows(const WarpRows<kHeadDim>& rows, const float* divisor,
                                          float* base, int64_t width, int64_t first,
                                          int64_t seq_len) {
  using T = Tiling<kHeadDim>;
  const int lane = threadIdx.x % 32;
  for (int r = 0; r < T::kRowsPerWarp; ++r) {
    if (first + r >= seq_len) continue;
    for (int i = 0; i < T::kDimsPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < kHeadDim) {
        base[(first + r) * width + d] = divisor == nullptr ? rows[r][i] : rows[r][i] / divisor[r];
      }
    }
  }
}

// grid (query blocks, heads, batch). Warp w owns query rows w·R .. w·R + R − 1 of the block;
// lanes split the key block for scores and the head's dimensions for the output.
template <int kHeadDim>
__global__ void __launch_bounds__(kThreads)
    FlashForwardKernel(const float* __restrict__ q, const float* __restrict__ k,
                       const float* __restrict__ v, float* __restrict__ out,
                       float* __restrict__ logsumexp, Geometry g) {
  using T = Tiling<kHeadDim>;
  __shared__ float q_tile[T::kBlockRows * kHeadDim];
  __shared__ float k_tile[kLaneBlock * T::kPadded];
  __shared__ float v_tile[kLaneBlock * kHeadDim];
  const int64_t sequence = blockIdx.z;
  const int64_t head = blockIdx.y;
  const int64_t kv_head = head / (g.heads / g.kv_heads);
  const int64_t first_query = static_cast<int64_t>(blockIdx.x) * T::kBlockRows;
  const int64_t q_width = g.heads * kHeadDim;
  const int64_t kv_width = g.kv_heads * kHeadDim;
  const float* q_base = q + HeadStart<kHeadDim>(g, g.heads, sequence, head);
  const float* k_base = k + HeadStart<kHeadDim>(g, g.kv_heads, sequence, kv_head);
  const float* v_base = v + HeadStart<kHeadDim>(g, g.kv_heads, sequence, kv_head);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;

  LoadTile<kHeadDim>(q_tile, kHeadDim, q_base, q_width, first_query, T::kBlockRows, g.seq_len);
  float running_max[T::kRowsPerWarp];
  float running_sum[T::kRowsPerWarp];
  WarpRows<kHeadDim> accumulator;
  ZeroRows<kHeadDim>(accumulator);
  for (int r = 0; r < T::kRowsPerWarp; ++r) {
    running_max[r] = -FLT_MAX;
    running_sum[r] = 0.0F;
  }
  const int64_t last_query = first_query + T::kBlockRows - 1;
  const int64_t first_key = FirstVisibleKey(g, first_query) / kLaneBlock * kLaneBlock;
  for (int64_t key_block = first_key; key_block <= last_query && key_block < g.seq_len;
       key_block += kLaneBlock) {
    __syncthreads();  // the previous block's tiles are read
    LoadTile<kHeadDim>(k_tile, T::kPadded, k_base, kv_width, key_block, kLaneBlock, g.seq_len);
    LoadTile<kHeadDim>(v_tile, kHeadDim, v_base, kv_width, key_block, kLaneBlock, g.seq_len);
    __syncthreads();
    const int64_t key = key_block + lane;
    for (int r = 0; r < T::kRowsPerWarp; ++r) {
      const int row = warp * T::kRowsPerWarp + r;
      const int64_t query = first_query + row;
      const bool visible = Visible(g, query, key);
      float score = -FLT_MAX;
      if (visible) {
        float dot = 0.0F;
        for (int d = 0; d < kHeadDim; ++d)
          dot += q_tile[row * kHeadDim + d] * k_tile[lane * T::kPadded + d];
        score = dot * g.scale;
      }
      const float block_max = WarpMax(score);
      if (block_max == -FLT_MAX) continue;  // nothing visible in this block (warp-uniform)
      const float new_max = fmaxf(running_max[r], block_max);
      const float p = visible ? expf(score - new_max) : 0.0F;
      const float correction = expf(running_max[r] - new_max);
      running_sum[r] = running_sum[r] * correction + WarpSum(p);
      for (int i = 0; i < T::kDimsPerLane; ++i) accumulator[r][i] *= correction;
      for (int j = 0; j < kLaneBlock; ++j) {
        const float p_j = __shfl_sync(kFullWarp, p, j);
        for (int i = 0; i < T::kDimsPerLane; ++i) {
          const int d = lane + 32 * i;
          if (d < kHeadDim) accumulator[r][i] += p_j * v_tile[j * kHeadDim + d];
        }
      }
      running_max[r] = new_max;
    }
  }
  const int64_t first_row = first_query + warp * T::kRowsPerWarp;
  StoreRows<kHeadDim>(accumulator, running_sum,
                      out + HeadStart<kHeadDim>(g, g.heads, sequence, head), q_width, first_row,
                      g.seq_len);
  for (int r = 0; r < T::kRowsPerWarp; ++r) {
    if (lane == 0 && first_row + r < g.seq_len) {
      logsumexp[RowValuesStart(g, sequence, head) + first_row + r] =
          running_max[r] + logf(running_sum[r]);
    }
  }
}

// delta[sequence, head, query] = ⟨d_out, out⟩ of the row: the softmax backward's row term.
template <int kHeadDim>
__global__ void RowDotKernel(const float* __restrict__ out, const float* __restrict__ d_out,
                             float* __restrict__ delta, Geometry g, int64_t rows) {
  const int64_t pair = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (pair >= rows * g.heads) return;  // warp-uniform
  const int64_t row = pair / g.heads;
  const int64_t head = pair % g.heads;
  const int64_t at = row * g.heads * kHeadDim + head * kHeadDim;
  float dot = 0.0F;
  for (int d = lane; d < kHeadDim; d += 32) dot += out[at + d] * d_out[at + d];
  dot = WarpSum(dot);
  const int64_t sequence = row / g.seq_len;
  const int64_t query = row % g.seq_len;
  if (lane == 0) delta[RowValuesStart(g, sequence, head) + query] = dot;
}

// grid (key blocks, kv heads, batch). Warp w owns keys w·R .. w·R + R − 1 of the block and
// accumulates their d_k and d_v over every query head of the group and every query block that
// sees them; lanes split a query block for the probabilities and the dimensions for the sums.
template <int kHeadDim>
__global__ void __launch_bounds__(kThreads)
    FlashKeyValueGradientKernel(const float* __restrict__ q, const float* __restrict__ k,
                                const float* __restrict__ v, const float* __restrict__ logsumexp,
                                const float* __restrict__ delta, const float* __restrict__ d_out,
                                float* __restrict__ d_k, float* __restrict__ d_v, Geometry g) {
  using T = Tiling<kHeadDim>;
  __shared__ float k_tile[T::kBlockRows * kHeadDim];
  __shared__ float v_tile[T::kBlockRows * kHeadDim];
  __shared__ float q_tile[kLaneBlock * T::kPadded];
  __shared__ float d_out_tile[kLaneBlock * T::kPadded];
  const int64_t sequence = blockIdx.z;
  const int64_t kv_head = blockIdx.y;
  const int64_t group = g.heads / g.kv_heads;
  const int64_t first_key = static_cast<int64_t>(blockIdx.x) * T::kBlockRows;
  const int64_t q_width = g.heads * kHeadDim;
  const int64_t kv_width = g.kv_heads * kHeadDim;
  const int64_t kv_offset = HeadStart<kHeadDim>(g, g.kv_heads, sequence, kv_head);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;

  LoadTile<kHeadDim>(k_tile, kHeadDim, k + kv_offset, kv_width, first_key, T::kBlockRows,
                     g.seq_len);
  LoadTile<kHeadDim>(v_tile, kHeadDim, v + kv_offset, kv_width, first_key, T::kBlockRows,
                     g.seq_len);
  WarpRows<kHeadDim> d_k_sum;
  WarpRows<kHeadDim> d_v_sum;
  ZeroRows<kHeadDim>(d_k_sum);
  ZeroRows<kHeadDim>(d_v_sum);
  const int64_t last_key = first_key + T::kBlockRows - 1;
  const int64_t last_query = LastSeeingQuery(g, last_key);
  for (int64_t head = kv_head * group; head < (kv_head + 1) * group; ++head) {
    const float* q_base = q + HeadStart<kHeadDim>(g, g.heads, sequence, head);
    const float* d_out_base = d_out + HeadStart<kHeadDim>(g, g.heads, sequence, head);
    const float* row_lse = logsumexp + RowValuesStart(g, sequence, head);
    const float* row_delta = delta + RowValuesStart(g, sequence, head);
    for (int64_t query_block = first_key / kLaneBlock * kLaneBlock; query_block <= last_query;
         query_block += kLaneBlock) {
      __syncthreads();
      LoadTile<kHeadDim>(q_tile, T::kPadded, q_base, q_width, query_block, kLaneBlock, g.seq_len);
      LoadTile<kHeadDim>(d_out_tile, T::kPadded, d_out_base, q_width, query_block, kLaneBlock,
                         g.seq_len);
      __syncthreads();
      const int64_t query = query_block + lane;
      const float lse = query < g.seq_len ? row_lse[query] : 0.0F;
      const float row_term = query < g.seq_len ? row_delta[query] : 0.0F;
      for (int r = 0; r < T::kRowsPerWarp; ++r) {
        const int row = warp * T::kRowsPerWarp + r;
        const int64_t key = first_key + row;
        const bool visible = Visible(g, query, key);
        float p = 0.0F;
        float d_score = 0.0F;
        if (visible) {
          float dot = 0.0F;
          float d_p = 0.0F;
          for (int d = 0; d < kHeadDim; ++d) {
            dot += q_tile[lane * T::kPadded + d] * k_tile[row * kHeadDim + d];
            d_p += d_out_tile[lane * T::kPadded + d] * v_tile[row * kHeadDim + d];
          }
          p = expf(dot * g.scale - lse);
          d_score = p * (d_p - row_term) * g.scale;
        }
        for (int j = 0; j < kLaneBlock; ++j) {
          const float p_j = __shfl_sync(kFullWarp, p, j);
          const float d_score_j = __shfl_sync(kFullWarp, d_score, j);
          for (int i = 0; i < T::kDimsPerLane; ++i) {
            const int d = lane + 32 * i;
            if (d < kHeadDim) {
              d_v_sum[r][i] += p_j * d_out_tile[j * T::kPadded + d];
              d_k_sum[r][i] += d_score_j * q_tile[j * T::kPadded + d];
            }
          }
        }
      }
    }
  }
  const int64_t first_row = first_key + warp * T::kRowsPerWarp;
  StoreRows<kHeadDim>(d_k_sum, nullptr, d_k + kv_offset, kv_width, first_row, g.seq_len);
  StoreRows<kHeadDim>(d_v_sum, nullptr, d_v + kv_offset, kv_width, first_row, g.seq_len);
}

// grid (query blocks, heads, batch): d_q of the block's rows, recomputing each key block's
// probabilities as the forward pass did.
template <int kHeadDim>
__global__ void __launch_bounds__(kThreads)
    FlashQueryGradientKernel(const float* __restrict__ q, const float* __restrict__ k,
                             const float* __restrict__ v, const float* __restrict__ logsumexp,
                             const float* __restrict__ delta, const float* __restrict__ d_out,
                             float* __restrict__ d_q, Geometry g) {
  using T = Tiling<kHeadDim>;
  __shared__ float q_tile[T::kBlockRows * kHeadDim];
  __shared__ float d_out_tile[T::kBlockRows * kHeadDim];
  __shared__ float k_tile[kLaneBlock * T::kPadded];
  __shared__ float v_tile[kLaneBlock * T::kPadded];
  const int64_t sequence = blockIdx.z;
  const int64_t head = blockIdx.y;
  const int64_t kv_head = head / (g.heads / g.kv_heads);
  const int64_t first_query = static_cast<int64_t>(blockIdx.x) * T::kBlockRows;
  const int64_t q_width = g.heads * kHeadDim;
  const int64_t kv_width = g.kv_heads * kHeadDim;
  const int64_t q_offset = HeadStart<kHeadDim>(g, g.heads, sequence, head);
  const float* k_base = k + HeadStart<kHeadDim>(g, g.kv_heads, sequence, kv_head);
  const float* v_base = v + HeadStart<kHeadDim>(g, g.kv_heads, sequence, kv_head);
  const float* row_lse = logsumexp + RowValuesStart(g, sequence, head);
  const float* row_delta = delta + RowValuesStart(g, sequence, head);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;

  LoadTile<kHeadDim>(q_tile, kHeadDim, q + q_offset, q_width, first_query, T::kBlockRows,
                     g.seq_len);
  LoadTile<kHeadDim>(d_out_tile, kHeadDim, d_out + q_offset, q_width, first_query, T::kBlockRows,
                     g.seq_len);
  WarpRows<kHeadDim> d_q_sum;
  ZeroRows<kHeadDim>(d_q_sum);
  const int64_t last_query = first_query + T::kBlockRows - 1;
  const int64_t first_key = FirstVisibleKey(g, first_query) / kLaneBlock * kLaneBlock;
  for (int64_t key_block = first_key; key_block <= last_query && key_block < g.seq_len;
       key_block += kLaneBlock) {
    __syncthreads();
    LoadTile<kHeadDim>(k_tile, T::kPadded, k_base, kv_width, key_block, kLaneBlock, g.seq_len);
    LoadTile<kHeadDim>(v_tile, T::kPadded, v_base, kv_width, key_block, kLaneBlock, g.seq_len);
    __syncthreads();
    const int64_t key = key_block + lane;
    for (int r = 0; r < T::kRowsPerWarp; ++r) {
      const int row = warp * T::kRowsPerWarp + r;
      const int64_t query = first_query + row;
      const bool visible = Visible(g, query, key);
      float d_score = 0.0F;
      if (visible) {
        float dot = 0.0F;
        float d_p = 0.0F;
        for (int d = 0; d < kHeadDim; ++d) {
          dot += q_tile[row * kHeadDim + d] * k_tile[lane * T::kPadded + d];
          d_p += d_out_tile[row * kHeadDim + d] * v_tile[lane * T::kPadded + d];
        }
        const float p = expf(dot * g.scale - row_lse[query]);
        d_score = p * (d_p - row_delta[query]) * g.scale;
      }
      for (int j = 0; j < kLaneBlock; ++j) {
        const float d_score_j = __shfl_sync(kFullWarp, d_score, j);
        for (int i = 0; i < T::kDimsPerLane; ++i) {
          const int d = lane + 32 * i;
          if (d < kHeadDim) d_q_sum[r][i] += d_score_j * k_tile[j * T::kPadded + d];
        }
      }
    }
  }
  StoreRows<kHeadDim>(d_q_sum, nullptr, d_q + q_offset, q_width,
                      first_query + warp * T::kRowsPerWarp, g.seq_len);
}

template <int kHeadDim>
absl::Status Forward(const float* q, const float* k, const float* v, float* out, float* logsumexp,
                     const AttentionShape& shape) {
  using T = Tiling<kHeadDim>;
  return Launch("flash attention forward", FlashForwardKernel<kHeadDim>,
                {dim3(BlocksOf(shape.seq_len, T::kBlockRows), static_cast<unsigned>(shape.heads),
                      static_cast<unsigned>(shape.batch)),
                 dim3(kThreads)},
                q, k, v, out, logsumexp, GeometryOf(shape));
}

template <int kHeadDim>
absl::Status Backward(const float* q, const float* k, const float* v, const float* out,
                      const float* logsumexp, const float* d_out, float* d_q, float* d_k,
                      float* d_v, float* delta, const AttentionShape& shape,
                      AttentionArithmetic arithmetic) {
  using T = Tiling<kHeadDim>;
  const Geometry geometry = GeometryOf(shape);
  const int64_t rows = shape.batch * shape.seq_len;
  if (absl::Status status = Launch("attention row terms", RowDotKernel<kHeadDim>,
                                   {dim3(BlocksOf(rows * shape.heads, kWarps)), dim3(kThreads)},
                                   out, d_out, delta, geometry, rows);
      !status.ok()) {
    return status;
  }
  const auto* row_terms = static_cast<const float*>(delta);
  if (arithmetic == AttentionArithmetic::kTensorFloat32) {
    return attention_internal::TensorCoreBackward(q, k, v, logsumexp, row_terms, d_out, d_q, d_k,
                                                  d_v, shape);
  }
  if (absl::Status status =
          Launch("flash attention key and value gradients", FlashKeyValueGradientKernel<kHeadDim>,
                 {dim3(BlocksOf(shape.seq_len, T::kBlockRows),
                       static_cast<unsigned>(shape.kv_heads), static_cast<unsigned>(shape.batch)),
                  dim3(kThreads)},
                 q, k, v, logsumexp, row_terms, d_out, d_k, d_v, geometry);
      !status.ok()) {
    return status;
  }
  return Launch("flash attention query gradient", FlashQueryGradientKernel<kHeadDim>,
                {dim3(BlocksOf(shape.seq_len, T::kBlockRows), static_cast<unsigned>(shape.heads),
                      static_cast<unsigned>(shape.batch)),
                 dim3(kThreads)},
                q, k, v, logsumexp, row_terms, d_out, d_q, geometry);
}

}  // namespace

absl::Status CheckAttentionShape(const AttentionShape& shape) {
  const int64_t d = shape.head_dim;
  if (d != 16 && d != 32 && d != 64 && d != 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("GPU attention takes head_dim 16, 32, 64 or 128, not ", d));
  }
  if (shape.kv_heads < 1 || shape.heads < 1 || shape.heads % shape.kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("heads ", shape.heads, " must be a multiple of kv_heads ", shape.kv_heads));
  }
  if (shape.batch < 1 || shape.seq_len < 1 || shape.batch > 65535 || shape.heads > 65535 ||
      shape.sliding_window < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GPU attention needs 1 to 65535 sequences and heads and a window ≥ 0; got batch ",
        shape.batch, ", heads ", shape.heads, ", window ", shape.sliding_window));
  }
  return absl::OkStatus();
}

absl::Status CausalAttentionForward(const float* q, const float* k, const float* v, float* out,
                                    float* logsumexp, const AttentionShape& shape,
                                    AttentionArithmetic arithmetic) {
  if (absl::Status status = CheckAttentionShape(shape); !status.ok()) return status;
  if (arithmetic == AttentionArithmetic::kTensorFloat32) {
    return attention_internal::TensorCoreForward(q, k, v, out, logsumexp, shape);
  }
  return WithHeadDim(shape.head_dim, [&]<int kHeadDim>() {
    return Forward<kHeadDim>(q, k, v, out, logsumexp, shape);
  });
}

int64_t CausalAttentionBackwardScratch(const AttentionShape& shape) {
  return shape.batch * shape.heads * shape.seq_len;
}

absl::Status CausalAttentionBackward(const float* q, const float* k, const float* v,
                                     const float* out, const float* logsumexp, const float* d_out,
                                     float* d_q, float* d_k, float* d_v, float* scratch,
                                     const AttentionShape& shape, AttentionArithmetic arithmetic) {
  if (absl::Status status = CheckAttentionShape(shape); !status.ok()) return status;
  return WithHeadDim(shape.head_dim, [&]<int kHeadDim>() {
    return Backward<kHeadDim>(q, k, v, out, logsumexp, d_out, d_q, d_k, d_v, scratch, shape,
                              arithmetic);
  });
}

namespace {

constexpr int kCachedAttentionThreads = 128;

// One block per new row and query head: its scores against the keys its window sees go to
// scratch, then the softmax by block reductions, then each output value as a sum over the keys.
__global__ void CachedAttentionKernel(const float* __restrict__ q,
                                      const float* __restrict__ k_cache,
                                      const float* __restrict__ v_cache, float* __restrict__ out,
                                      float* __restrict__ scratch, int64_t first_position,
                                      int64_t heads, int64_t kv_heads, int64_t head_dim,
                                      int64_t sliding_window, int64_t scores_per_row) {
  const int64_t row = blockIdx.x;
  const int64_t head = blockIdx.y;
  const int64_t position = first_position + row;
  const int64_t first_key =
      sliding_window > 0 && position + 1 > sliding_window ? position - sliding_window + 1 : 0;
  const int64_t keys = position - first_key + 1;
  const int64_t kv_width = kv_heads * head_dim;
  const int64_t kv_offset = (head / (heads / kv_heads)) * head_dim;
  const float* query = q + row * heads * head_dim + head * head_dim;
  float* scores = scratch + (row * heads + head) * scores_per_row;
  const float scale = rsqrtf(static_cast<float>(head_dim));

  float largest = -FLT_MAX;
  for (int64_t j = threadIdx.x; j < keys; j += blockDim.x) {
    const float* key = k_cache + (first_key + j) * kv_width + kv_offset;
    float dot = 0.0F;
    for (int64_t d = 0; d < head_dim; ++d) dot += query[d] * key[d];
    scores[j] = dot * scale;
    largest = fmaxf(largest, scores[j]);
  }
  largest = BlockMax(largest, -FLT_MAX);
  float total = 0.0F;
  for (int64_t j = threadIdx.x; j < keys; j += blockDim.x) {
    scores[j] = expf(scores[j] - largest);
    total += scores[j];
  }
  // The reduction's synchronisation also makes every thread's scores visible to all.
  total = BlockSum(total);
  for (int64_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float sum = 0.0F;
    for (int64_t j = 0; j < keys; ++j)
      sum += scores[j] * v_cache[(first_key + j) * kv_width + kv_offset + d];
    out[row * heads * head_dim + head * head_dim + d] = sum / total;
  }
}

}  // namespace

int64_t CachedAttentionScratch(int64_t rows, int64_t first_position, const AttentionShape& shape) {
  return rows * shape.heads * (first_position + rows);
}

absl::Status CachedAttentionForward(const float* q, const float* k_cache, const float* v_cache,
                                    float* out, int64_t rows, int64_t first_position,
                                    const AttentionShape& shape, float* scratch) {
  if (rows == 0) return absl::OkStatus();
  // The cache's length stands for the sequence's, which the shape need not carry.
  AttentionShape cached = shape;
  cached.batch = 1;
  cached.seq_len = first_position + rows;
  if (absl::Status status = CheckAttentionShape(cached); !status.ok()) return status;
  return Launch("cached attention", CachedAttentionKernel,
                {dim3(static_cast<unsigned>(rows), static_cast<unsigned>(shape.heads)),
                 dim3(kCachedAttentionThreads)},
                q, k_cache, v_cache, out, scratch, first_position, shape.heads, shape.kv_heads,
                shape.head_dim, shape.sliding_window, first_position + rows);
}

}  // namespace fedmoe::kernels::cuda
