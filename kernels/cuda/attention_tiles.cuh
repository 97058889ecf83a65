// What the two flash-attention implementations share (attention.cu's fp32 one and
// attention_tensor_core.cu's TF32 one): the mask, where a head's rows and a row's per-position
// values live, and the tile loads. Device code, for those two files only.
#ifndef FEDMOE_KERNELS_CUDA_ATTENTION_TILES_CUH_
#define FEDMOE_KERNELS_CUDA_ATTENTION_TILES_CUH_

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/cpu/attention.h"

namespace fedmoe::kernels::cuda::attention_internal {

struct Geometry {
  int64_t seq_len;
  int64_t heads;
  int64_t kv_heads;
  int64_t window;  // 0: none
  float scale;
};

inline Geometry GeometryOf(const cpu::AttentionShape& shape) {
  return {shape.seq_len, shape.heads, shape.kv_heads, shape.sliding_window,
          1.0F / std::sqrt(static_cast<float>(shape.head_dim))};
}

// Calls body.template operator()<head_dim>() for the head_dims the kernels are built for (16,
// 32, 64, 128; CheckAttentionShape has refused any other, which goes to 128).
template <typename Body>
auto WithHeadDim(int64_t head_dim, Body&& body) {
  switch (head_dim) {
    case 16:
      return body.template operator()<16>();
    case 32:
      return body.template operator()<32>();
    case 64:
      return body.template operator()<64>();
    default:
      return body.template operator()<128>();
  }
}

inline unsigned BlocksOf(int64_t positions, int64_t per_block) {
  return static_cast<unsigned>((positions + per_block - 1) / per_block);
}

// Whether row `query` attends to `key`: causally, within the window, and only for a row inside
// the sequence, as a tile's padding rows past its end attend to nothing. A key past the end
// is then excluded too, since it comes after every real row.
__device__ __forceinline__ bool Visible(const Geometry& g, int64_t query, int64_t key) {
  return query < g.seq_len && key <= query && (g.window == 0 || key > query - g.window);
}

// Where head `head` of `sequence` starts in a [batch·seq_len, head_count·head_dim] tensor.
template <int kHeadDim>
__device__ __forceinline__ int64_t HeadStart(const Geometry& g, int64_t head_count,
                                             int64_t sequence, int64_t head) {
  return sequence * g.seq_len * head_count * kHeadDim + head * kHeadDim;
}

// Where (sequence, head)'s per-position values start in a [batch, heads, seq_len] array (the
// log-sum-exp and the row terms).
__device__ __forceinline__ int64_t RowValuesStart(const Geometry& g, int64_t sequence,
                                                  int64_t head) {
  return (sequence * g.heads + head) * g.seq_len;
}

// The first key any query of [first_query, ...) sees.
__device__ __forceinline__ int64_t FirstVisibleKey(const Geometry& g, int64_t first_query) {
  if (g.window == 0) return 0;
  const int64_t first = first_query - g.window + 1;
  return first > 0 ? first : 0;
}

// The last query that sees any key up to last_key.
__device__ __forceinline__ int64_t LastSeeingQuery(const Geometry& g, int64_t last_key) {
  if (g.window == 0) return g.seq_len - 1;
  const int64_t last = last_key + g.window - 1;
  return last < g.seq_len - 1 ? last : g.seq_len - 1;
}

// Copies rows [first, first + count) of one head (width floats apart) into a [count, pitch]
// tile, zero past seq_len. Every thread of the block takes part.
template <int kHeadDim>
__device__ __forceinline__ void LoadTile(float* tile, int pitch, const float* base, int64_t width,
                                         int64_t first, int count, int64_t seq_len) {
  for (int index = threadIdx.x; index < count * kHeadDim; index += blockDim.x) {
    const int r = index / kHeadDim;
    const int d = index % kHeadDim;
    tile[r * pitch + d] = first + r < seq_len ? base[(first + r) * width + d] : 0.0F;
  }
}

}  // namespace fedmoe::kernels::cuda::attention_internal

#endif  // FEDMOE_KERNELS_CUDA_ATTENTION_TILES_CUH_
