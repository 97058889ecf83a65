// Flash attention on the tensor cores: every product of a query, key, value or output-gradient
// tile is a warp matrix multiply (WMMA m16n16k8) with TF32 operands and fp32 accumulators.
//
// A warp owns 16 rows (queries, or keys in the key/value gradient) and steps over 16 columns at
// a time. WMMA leaves unspecified which lane holds which element of an accumulator, so the
// softmax cannot rescale an accumulated output row in registers, as the fp32 kernel's online
// softmax does. The forward pass therefore takes two passes over the keys: the first finds each
// row's log-sum-exp, the second accumulates the already normalised probabilities times the
// values. That costs one more query-key product than an online softmax (three products where
// it takes two; the backward pass's seven are unchanged), and keeps the output in accumulators
// throughout. The products a lane
// must see element by element (scores, probabilities) go through a small per-warp scratch
// tile in shared memory, where the layout is ours.
//
// Tiles live in dynamic shared memory (up to about 93 KiB for head_dim 128, so two blocks fit
// an H100/H200 SM); rows are padded by 4 floats, which keeps WMMA's 16-byte leading-dimension
// rule and staggers rows across banks.
#include <cuda_runtime.h>
#include <mma.h>

#include <cfloat>
#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/attention_tensor_core.h"
#include "kernels/cuda/attention_tiles.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/reduce.cuh"

namespace fedmoe::kernels::cuda::attention_internal {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
// A warp's rows, and the columns of one step: WMMA's 16 × 16 output.
constexpr int kTile = 16;
constexpr int kBlockRows = kWarps * kTile;
// Each lane sees one row of a 16 × 16 scratch tile, half of its columns.
constexpr int kLaneColumns = kTile / 2;
constexpr int kScratchPitch = kTile + 4;
constexpr int kScratchFloats = kTile * kScratchPitch;

using Accumulator = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;

template <int kHeadDim>
__host__ __device__ constexpr int PitchOf() {
  return kHeadDim + 4;
}

template <typename Layout>
using OperandA = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, Layout>;
template <typename Layout>
using OperandB = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, Layout>;

// Loads an operand fragment and rounds it to TF32.
template <typename Fragment>
__device__ __forceinline__ void LoadTf32(Fragment& fragment, const float* at, unsigned ld) {
  wmma::load_matrix_sync(fragment, at, ld);
  for (int i = 0; i < fragment.num_elements; ++i) {
    fragment.x[i] = wmma::__float_to_tf32(fragment.x[i]);
  }
}

// 16 rows of a tile (kHeadDim wide, at the tiles' pitch) as the left operand of a product over
// the head's dimensions, one fragment per 8 of them: loaded once and kept in registers where a
// block multiplies the same rows by every step's tile.
template <int kHeadDim>
struct RowOperands {
  OperandA<wmma::row_major> parts[kHeadDim / 8];
};

template <int kHeadDim>
__device__ __forceinline__ void LoadRowOperands(RowOperands<kHeadDim>& operands,
                                                const float* rows) {
  for (ptrdiff_t k = 0; k < kHeadDim / 8; ++k)
    LoadTf32(operands.parts[k], rows + k * 8, PitchOf<kHeadDim>());
}

// The lane's row of a 16 × 16 scratch tile, and the first of its columns.
__device__ __forceinline__ int LaneRow() { return static_cast<int>(threadIdx.x % 32) / 2; }
__device__ __forceinline__ int LaneFirstColumn() {
  return static_cast<int>(threadIdx.x % 2) * kLaneColumns;
}

// Hands each lane its row's columns of `product`, through the warp's scratch tile, which is
// free again on return.
__device__ __forceinline__ void LaneValuesOf(const Accumulator& product, float* scratch,
                                             float (&values)[kLaneColumns]) {
  wmma::store_matrix_sync(scratch, product, kScratchPitch, wmma::mem_row_major);
  __syncwarp();
  const float* mine =
      scratch + static_cast<ptrdiff_t>(LaneRow()) * kScratchPitch + LaneFirstColumn();
  for (int j = 0; j < kLaneColumns; ++j) values[j] = mine[j];
  __syncwarp();  // read before the scratch is written again
}

// a·bᵀ for 16 rows a (in registers) and 16 rows b of a tile, each kHeadDim wide; the lane gets
// its row's columns.
template <int kHeadDim>
__device__ __forceinline__ void ProductsOfRows(const RowOperands<kHeadDim>& a, const float* b_rows,
                                               float* scratch, float (&values)[kLaneColumns]) {
  Accumulator product;
  wmma::fill_fragment(product, 0.0F);
  for (ptrdiff_t k = 0; k < kHeadDim / 8; ++k) {
    // Column-major Bᵀ: b's rows, read across.
    OperandB<wmma::col_major> b;
    LoadTf32(b, b_rows + k * 8, PitchOf<kHeadDim>());
    wmma::mma_sync(product, a.parts[k], b, product);
  }
  LaneValuesOf(product, scratch, values);
}

// The same with a's rows in shared memory, loaded step by step (for kernels that cannot spare
// the registers to keep them).
template <int kHeadDim>
__device__ __forceinline__ void ProductsOfRows(const float* a_rows, const float* b_rows,
                                               float* scratch, float (&values)[kLaneColumns]) {
  Accumulator product;
  wmma::fill_fragment(product, 0.0F);
  for (ptrdiff_t k = 0; k < kHeadDim / 8; ++k) {
    OperandA<wmma::row_major> a;
    OperandB<wmma::col_major> b;
    LoadTf32(a, a_rows + k * 8, PitchOf<kHeadDim>());
    LoadTf32(b, b_rows + k * 8, PitchOf<kHeadDim>());
    wmma::mma_sync(product, a, b, product);
  }
  LaneValuesOf(product, scratch, values);
}

// Writes the lane's values into its place in the scratch tile, for a product to read.
__device__ __forceinline__ void WriteLaneValues(float* scratch,
                                                const float (&values)[kLaneColumns]) {
  float* mine = scratch + static_cast<ptrdiff_t>(LaneRow()) * kScratchPitch + LaneFirstColumn();
  for (int j = 0; j < kLaneColumns; ++j) mine[j] = values[j];
  __syncwarp();
}

// parts += the scratch tile (16 × 16) times 16 rows of a tile (kHeadDim wide, at the tiles'
// pitch), one accumulator per 16 of the head's columns: P·V, dS·K, Pᵀ·dO and dSᵀ·Q. The
// scratch tile's two operand fragments load once for all of them.
template <int kHeadDim>
__device__ __forceinline__ void AddScratchTimesRows(Accumulator (&parts)[kHeadDim / kTile],
                                                    const float* scratch, const float* rows) {
  constexpr int kPitch = PitchOf<kHeadDim>();
  OperandA<wmma::row_major> left[2];
  LoadTf32(left[0], scratch, kScratchPitch);
  LoadTf32(left[1], scratch + 8, kScratchPitch);
  for (ptrdiff_t n = 0; n < kHeadDim / kTile; ++n) {
    for (ptrdiff_t k = 0; k < 2; ++k) {
      OperandB<wmma::row_major> right;
      LoadTf32(right, rows + k * 8 * kPitch + n * kTile, kPitch);
      wmma::mma_sync(parts[n], left[k], right, parts[n]);
    }
  }
}

// Whether any of 16 queries from first_query sees any of 16 keys from first_key. May say yes
// where none does (the mask then zeroes them); never no where one does.
__device__ __forceinline__ bool TilesMeet(const Geometry& g, int64_t first_query,
                                          int64_t first_key) {
  return first_key <= first_query + kTile - 1 &&
         (g.window == 0 || first_key + kTile - 1 > first_query - g.window);
}

// Writes a warp's 16 × kHeadDim result (one accumulator per 16 columns) to rows first.. of one
// head (base, width floats apart), leaving out rows past seq_len, through `staged`, 16 rows of
// shared memory at the tiles' pitch that no other warp touches.
template <int kHeadDim>
__device__ __forceinline__ void StoreWarpRows(const Accumulator (&parts)[kHeadDim / kTile],
                                              float* staged, float* base, int64_t width,
                                              int64_t first, int64_t seq_len) {
  constexpr int kPitch = PitchOf<kHeadDim>();
  __syncwarp();  // the warp's last reads of `staged` (as an operand) are done
  for (ptrdiff_t n = 0; n < kHeadDim / kTile; ++n) {
    wmma::store_matrix_sync(staged + n * kTile, parts[n], kPitch, wmma::mem_row_major);
  }
  __syncwarp();
  for (int index = static_cast<int>(threadIdx.x % 32); index < kTile * kHeadDim; index += 32) {
    const int r = index / kHeadDim;
    const int d = index % kHeadDim;
    if (first + r < seq_len) base[(first + r) * width + d] = staged[r * kPitch + d];
  }
}

template <int kHeadDim>
__device__ __forceinline__ void ZeroParts(Accumulator (&parts)[kHeadDim / kTile]) {
  for (Accumulator& part : parts) wmma::fill_fragment(part, 0.0F);
}

// Where a block of the forward or query-gradient kernel works (grid: query blocks, heads,
// batch): its head's offsets, its first query, and the key steps [key_begin, key_end) it walks.
struct QueryBlock {
  int64_t sequence;
  int64_t head;
  int64_t first_query;
  int64_t q_width;
  int64_t kv_width;
  int64_t q_offset;
  int64_t kv_offset;
  int64_t key_begin;
  int64_t key_end;
};

template <int kHeadDim>
__device__ __forceinline__ QueryBlock QueryBlockOf(const Geometry& g) {
  const int64_t sequence = blockIdx.z;
  const int64_t head = blockIdx.y;
  const int64_t first_query = static_cast<int64_t>(blockIdx.x) * kBlockRows;
  const int64_t end = first_query + kBlockRows;
  return {.sequence = sequence,
          .head = head,
          .first_query = first_query,
          .q_width = g.heads * kHeadDim,
          .kv_width = g.kv_heads * kHeadDim,
          .q_offset = HeadStart<kHeadDim>(g, g.heads, sequence, head),
          .kv_offset = HeadStart<kHeadDim>(g, g.kv_heads, sequence, head / (g.heads / g.kv_heads)),
          .key_begin = FirstVisibleKey(g, first_query) / kTile * kTile,
          .key_end = end < g.seq_len ? end : g.seq_len};
}

// Dynamic shared memory of the forward kernel, in floats: the block's queries, one step's keys
// and values, and a scratch tile per warp.
template <int kHeadDim>
struct ForwardLayout {
  static constexpr int kPitch = PitchOf<kHeadDim>();
  static constexpr int kQueries = 0;
  static constexpr int kKeys = kQueries + kBlockRows * kPitch;
  static constexpr int kValues = kKeys + kTile * kPitch;
  static constexpr int kScratch = kValues + kTile * kPitch;
  static constexpr int kFloats = kScratch + kWarps * kScratchFloats;
};

// grid (query blocks, heads, batch).
template <int kHeadDim>
__global__ void __launch_bounds__(kThreads)
    TensorCoreForwardKernel(const float* __restrict__ q, const float* __restrict__ k,
                            const float* __restrict__ v, float* __restrict__ out,
                            float* __restrict__ logsumexp, Geometry g) {
  using L = ForwardLayout<kHeadDim>;
  auto* shared = DynamicSharedMemory<float>();
  const int warp = static_cast<int>(threadIdx.x / 32);
  float* q_tile = shared + L::kQueries;
  float* k_tile = shared + L::kKeys;
  float* v_tile = shared + L::kValues;
  float* scratch = shared + L::kScratch + warp * kScratchFloats;
  const QueryBlock block = QueryBlockOf<kHeadDim>(g);
  const float* k_base = k + block.kv_offset;
  const float* v_base = v + block.kv_offset;

  LoadTile<kHeadDim>(q_tile, L::kPitch, q + block.q_offset, block.q_width, block.first_query,
                     kBlockRows, g.seq_len);
  float* warp_queries = q_tile + warp * kTile * L::kPitch;
  __syncthreads();
  // Every key step multiplies the same queries: they stay in registers.
  RowOperands<kHeadDim> queries;
  LoadRowOperands<kHeadDim>(queries, warp_queries);
  const int64_t warp_first_query = block.first_query + int64_t{warp} * kTile;
  const int64_t query = warp_first_query + LaneRow();

  // Pass 1: each row's running maximum and sum of exponentials, so its log-sum-exp. The two
  // lanes of a row combine their halves with one shuffle.
  float row_max = -FLT_MAX;
  float row_sum = 0.0F;
  for (int64_t first_key = block.key_begin; first_key < block.key_end; first_key += kTile) {
    __syncthreads();  // the previous step's tile is read
    LoadTile<kHeadDim>(k_tile, L::kPitch, k_base, block.kv_width, first_key, kTile, g.seq_len);
    __syncthreads();
    if (!TilesMeet(g, warp_first_query, first_key)) continue;  // warp-uniform
    float scores[kLaneColumns];
    ProductsOfRows<kHeadDim>(queries, k_tile, scratch, scores);
    const int64_t lane_first_key = first_key + LaneFirstColumn();
    float step_max = -FLT_MAX;
    for (int j = 0; j < kLaneColumns; ++j) {
      scores[j] = Visible(g, query, lane_first_key + j) ? scores[j] * g.scale : -FLT_MAX;
      step_max = fmaxf(step_max, scores[j]);
    }
    step_max = fmaxf(step_max, __shfl_xor_sync(kFullWarp, step_max, 1));
    const float new_max = fmaxf(row_max, step_max);
    float step_sum = 0.0F;
    for (const float score : scores) {
      if (score != -FLT_MAX) step_sum += expf(score - new_max);
    }
    step_sum += __shfl_xor_sync(kFullWarp, step_sum, 1);
    if (new_max != -FLT_MAX) {
      row_sum = row_sum * expf(row_max - new_max) + step_sum;
      row_max = new_max;
    }
  }
  const float row_logsumexp = row_max + logf(row_sum);
  if (threadIdx.x % 2 == 0 && query < g.seq_len) {
    logsumexp[RowValuesStart(g, block.sequence, block.head) + query] = row_logsumexp;
  }

  // Pass 2: out = Σ over key steps of P·V, P already normalised.
  Accumulator output[kHeadDim / kTile];
  ZeroParts<kHeadDim>(output);
  for (int64_t first_key = block.key_begin; first_key < block.key_end; first_key += kTile) {
    __syncthreads();
    LoadTile<kHeadDim>(k_tile, L::kPitch, k_base, block.kv_width, first_key, kTile, g.seq_len);
    LoadTile<kHeadDim>(v_tile, L::kPitch, v_base, block.kv_width, first_key, kTile, g.seq_len);
    __syncthreads();
    if (!TilesMeet(g, warp_first_query, first_key)) continue;
    float probabilities[kLaneColumns];
    ProductsOfRows<kHeadDim>(queries, k_tile, scratch, probabilities);
    const int64_t lane_first_key = first_key + LaneFirstColumn();
    for (int j = 0; j < kLaneColumns; ++j) {
      probabilities[j] = Visible(g, query, lane_first_key + j)
                             ? expf(probabilities[j] * g.scale - row_logsumexp)
                             : 0.0F;
    }
    WriteLaneValues(scratch, probabilities);
    AddScratchTimesRows<kHeadDim>(output, scratch, v_tile);
  }
  StoreWarpRows<kHeadDim>(output, warp_queries, out + block.q_offset, block.q_width,
                          warp_first_query, g.seq_len);
}

// The query-gradient kernel's shared memory: the block's queries and output gradients, one
// step's keys and values, a scratch tile per warp.
template <int kHeadDim>
struct QueryGradientLayout {
  static constexpr int kPitch = PitchOf<kHeadDim>();
  static constexpr int kQueries = 0;
  static constexpr int kOutputGradients = kQueries + kBlockRows * kPitch;
  static constexpr int kKeys = kOutputGradients + kBlockRows * kPitch;
  static constexpr int kValues = kKeys + kTile * kPitch;
  static constexpr int kScratch = kValues + kTile * kPitch;
  static constexpr int kFloats = kScratch + kWarps * kScratchFloats;
};

// grid (query blocks, heads, batch): d_q = Σ over keys of dS·K, with dS = P ⊙ (dO·Vᵀ − row
// term)·scale and P recomputed from the saved log-sum-exp.
template <int kHeadDim>
__global__ void __launch_bounds__(kThreads)
    TensorCoreQueryGradientKernel(const float* __restrict__ q, const float* __restrict__ k,
                                  const float* __restrict__ v, const float* __restrict__ logsumexp,
                                  const float* __restrict__ row_terms,
                                  const float* __restrict__ d_out, float* __restrict__ d_q,
                                  Geometry g) {
  using L = QueryGradientLayout<kHeadDim>;
  auto* shared = DynamicSharedMemory<float>();
  const int warp = static_cast<int>(threadIdx.x / 32);
  float* q_tile = shared + L::kQueries;
  float* d_out_tile = shared + L::kOutputGradients;
  float* k_tile = shared + L::kKeys;
  float* v_tile = shared + L::kValues;
  float* scratch = shared + L::kScratch + warp * kScratchFloats;
  const QueryBlock block = QueryBlockOf<kHeadDim>(g);
  const float* k_base = k + block.kv_offset;
  const float* v_base = v + block.kv_offset;

  LoadTile<kHeadDim>(q_tile, L::kPitch, q + block.q_offset, block.q_width, block.first_query,
                     kBlockRows, g.seq_len);
  LoadTile<kHeadDim>(d_out_tile, L::kPitch, d_out + block.q_offset, block.q_width,
                     block.first_query, kBlockRows, g.seq_len);
  float* warp_queries = q_tile + warp * kTile * L::kPitch;
  const float* warp_d_out = d_out_tile + warp * kTile * L::kPitch;
  __syncthreads();
  // The queries in registers, as in the forward pass; the output gradients stay in shared
  // memory, as both would not fit the registers without spilling.
  RowOperands<kHeadDim> queries;
  LoadRowOperands<kHeadDim>(queries, warp_queries);
  const int64_t warp_first_query = block.first_query + int64_t{warp} * kTile;
  const int64_t query = warp_first_query + LaneRow();
  const bool real_row = query < g.seq_len;
  const int64_t row_values = RowValuesStart(g, block.sequence, block.head);
  const float row_logsumexp = real_row ? logsumexp[row_values + query] : 0;
  const float row_term = real_row ? row_terms[row_values + query] : 0;

  Accumulator d_query[kHeadDim / kTile];
  ZeroParts<kHeadDim>(d_query);
  for (int64_t first_key = block.key_begin; first_key < block.key_end; first_key += kTile) {
    __syncthreads();
    LoadTile<kHeadDim>(k_tile, L::kPitch, k_base, block.kv_width, first_key, kTile, g.seq_len);
    LoadTile<kHeadDim>(v_tile, L::kPitch, v_base, block.kv_width, first_key, kTile, g.seq_len);
    __syncthreads();
    if (!TilesMeet(g, warp_first_query, first_key)) continue;
    float scores[kLaneColumns];
    float d_scores[kLaneColumns];
    ProductsOfRows<kHeadDim>(queries, k_tile, scratch, scores);
    ProductsOfRows<kHeadDim>(warp_d_out, v_tile, scratch, d_scores);
    const int64_t lane_first_key = first_key + LaneFirstColumn();
    for (int j = 0; j < kLaneColumns; ++j) {
      const float p =
          Visible(g, query, lane_first_key + j) ? expf(scores[j] * g.scale - row_logsumexp) : 0.0F;
      d_scores[j] = p * (d_scores[j] - row_term) * g.scale;
    }
    WriteLaneValues(scratch, d_scores);
    AddScratchTimesRows<kHeadDim>(d_query, scratch, k_tile);
  }
  StoreWarpRows<kHeadDim>(d_query, warp_queries, d_q + block.q_offset, block.q_width,
                          warp_first_query, g.seq_len);
}

// The key/value-gradient kernel's shared memory: the block's keys and values, one step's
// queries and output gradients with their log-sum-exps and row terms, and two scratch tiles
// per warp (Pᵀ and dSᵀ).
template <int kHeadDim>
struct KeyValueGradientLayout {
  static constexpr int kPitch = PitchOf<kHeadDim>();
  static constexpr int kKeys = 0;
  static constexpr int kValues = kKeys + kBlockRows * kPitch;
  static constexpr int kQueries = kValues + kBlockRows * kPitch;
  static constexpr int kOutputGradients = kQueries + kTile * kPitch;
  static constexpr int kLogSumExps = kOutputGradients + kTile * kPitch;
  static constexpr int kRowTerms = kLogSumExps + kTile;
  static constexpr int kScratch = kRowTerms + kTile;
  static constexpr int kFloats = kScratch + kWarps * 2 * kScratchFloats;
};

// grid (key blocks, kv heads, batch): a warp's 16 keys gather d_v = Σ Pᵀ·dO and
// d_k = Σ dSᵀ·Q over every query head of the group and every query step that sees them, in a
// fixed order and without atomics.
template <int kHeadDim>
__global__ void __launch_bounds__(kThreads)
    TensorCoreKeyValueGradientKernel(const float* __restrict__ q, const float* __restrict__ k,
                                     const float* __restrict__ v,
                                     const float* __restrict__ logsumexp,
                                     const float* __restrict__ row_terms,
                                     const float* __restrict__ d_out, float* __restrict__ d_k,
                                     float* __restrict__ d_v, Geometry g) {
  using L = KeyValueGradientLayout<kHeadDim>;
  auto* shared = DynamicSharedMemory<float>();
  const int warp = static_cast<int>(threadIdx.x / 32);
  float* k_tile = shared + L::kKeys;
  float* v_tile = shared + L::kValues;
  float* q_tile = shared + L::kQueries;
  float* d_out_tile = shared + L::kOutputGradients;
  float* step_logsumexp = shared + L::kLogSumExps;
  float* step_row_terms = shared + L::kRowTerms;
  float* probability_scratch = shared + L::kScratch + warp * 2 * kScratchFloats;
  float* d_score_scratch = probability_scratch + kScratchFloats;
  const int64_t sequence = blockIdx.z;
  const int64_t kv_head = blockIdx.y;
  const int64_t group = g.heads / g.kv_heads;
  const int64_t first_key = static_cast<int64_t>(blockIdx.x) * kBlockRows;
  const int64_t q_width = g.heads * kHeadDim;
  const int64_t kv_width = g.kv_heads * kHeadDim;
  const int64_t kv_offset = HeadStart<kHeadDim>(g, g.kv_heads, sequence, kv_head);

  LoadTile<kHeadDim>(k_tile, L::kPitch, k + kv_offset, kv_width, first_key, kBlockRows, g.seq_len);
  LoadTile<kHeadDim>(v_tile, L::kPitch, v + kv_offset, kv_width, first_key, kBlockRows, g.seq_len);
  float* warp_keys = k_tile + warp * kTile * L::kPitch;
  float* warp_values = v_tile + warp * kTile * L::kPitch;
  const int64_t warp_first_key = first_key + int64_t{warp} * kTile;
  const int64_t key = warp_first_key + LaneRow();
  const int64_t last_query = LastSeeingQuery(g, first_key + kBlockRows - 1);

  Accumulator d_key[kHeadDim / kTile];
  Accumulator d_value[kHeadDim / kTile];
  ZeroParts<kHeadDim>(d_key);
  ZeroParts<kHeadDim>(d_value);
  for (int64_t head = kv_head * group; head < (kv_head + 1) * group; ++head) {
    const int64_t q_offset = HeadStart<kHeadDim>(g, g.heads, sequence, head);
    const float* head_logsumexp = logsumexp + RowValuesStart(g, sequence, head);
    const float* head_row_terms = row_terms + RowValuesStart(g, sequence, head);
    // Queries before the block's first key see none of its keys.
    for (int64_t first_query = first_key; first_query <= last_query; first_query += kTile) {
      __syncthreads();
      LoadTile<kHeadDim>(q_tile, L::kPitch, q + q_offset, q_width, first_query, kTile, g.seq_len);
      LoadTile<kHeadDim>(d_out_tile, L::kPitch, d_out + q_offset, q_width, first_query, kTile,
                         g.seq_len);
      if (threadIdx.x < kTile) {
        const int64_t step_query = first_query + threadIdx.x;
        const bool real = step_query < g.seq_len;
        step_logsumexp[threadIdx.x] = real ? head_logsumexp[step_query] : 0.0F;
        step_row_terms[threadIdx.x] = real ? head_row_terms[step_query] : 0.0F;
      }
      __syncthreads();
      if (!TilesMeet(g, first_query, warp_first_key)) continue;
      // Rows are keys and columns queries: Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ.
      float probabilities[kLaneColumns];
      float d_scores[kLaneColumns];
      ProductsOfRows<kHeadDim>(warp_keys, q_tile, probability_scratch, probabilities);
      ProductsOfRows<kHeadDim>(warp_values, d_out_tile, probability_scratch, d_scores);
      for (int j = 0; j < kLaneColumns; ++j) {
        const int column = LaneFirstColumn() + j;
        const int64_t step_query = first_query + column;
        probabilities[j] = Visible(g, step_query, key)
                               ? expf(probabilities[j] * g.scale - step_logsumexp[column])
                               : 0.0F;
        d_scores[j] = probabilities[j] * (d_scores[j] - step_row_terms[column]) * g.scale;
      }
      WriteLaneValues(probability_scratch, probabilities);
      WriteLaneValues(d_score_scratch, d_scores);
      AddScratchTimesRows<kHeadDim>(d_value, probability_scratch, d_out_tile);
      AddScratchTimesRows<kHeadDim>(d_key, d_score_scratch, q_tile);
    }
  }
  StoreWarpRows<kHeadDim>(d_key, warp_keys, d_k + kv_offset, kv_width, warp_first_key, g.seq_len);
  StoreWarpRows<kHeadDim>(d_value, warp_values, d_v + kv_offset, kv_width, warp_first_key,
                          g.seq_len);
}

template <typename Layout>
constexpr size_t SharedBytes() {
  return static_cast<size_t>(Layout::kFloats) * sizeof(float);
}

template <int kHeadDim>
absl::Status Forward(const float* q, const float* k, const float* v, float* out, float* logsumexp,
                     const cpu::AttentionShape& shape) {
  return Launch("tensor-core attention forward", TensorCoreForwardKernel<kHeadDim>,
                {dim3(BlocksOf(shape.seq_len, kBlockRows), static_cast<unsigned>(shape.heads),
                      static_cast<unsigned>(shape.batch)),
                 dim3(kThreads), SharedBytes<ForwardLayout<kHeadDim>>()},
                q, k, v, out, logsumexp, GeometryOf(shape));
}

template <int kHeadDim>
absl::Status Backward(const float* q, const float* k, const float* v, const float* logsumexp,
                      const float* row_terms, const float* d_out, float* d_q, float* d_k,
                      float* d_v, const cpu::AttentionShape& shape) {
  const Geometry geometry = GeometryOf(shape);
  const auto blocks = BlocksOf(shape.seq_len, kBlockRows);
  const auto batch = static_cast<unsigned>(shape.batch);
  if (absl::Status status =
          Launch("tensor-core attention key and value gradients",
                 TensorCoreKeyValueGradientKernel<kHeadDim>,
                 {dim3(blocks, static_cast<unsigned>(shape.kv_heads), batch), dim3(kThreads),
                  SharedBytes<KeyValueGradientLayout<kHeadDim>>()},
                 q, k, v, logsumexp, row_terms, d_out, d_k, d_v, geometry);
      !status.ok()) {
    return status;
  }
  return Launch("tensor-core attention query gradient", TensorCoreQueryGradientKernel<kHeadDim>,
                {dim3(blocks, static_cast<unsigned>(shape.heads), batch), dim3(kThreads),
                 SharedBytes<QueryGradientLayout<kHeadDim>>()},
                q, k, v, logsumexp, row_terms, d_out, d_q, geometry);
}

}  // namespace

absl::Status TensorCoreForward(const float* q, const float* k, const float* v, float* out,
                               float* logsumexp, const cpu::AttentionShape& shape) {
  return WithHeadDim(shape.head_dim, [&]<int kHeadDim>() {
    return Forward<kHeadDim>(q, k, v, out, logsumexp, shape);
  });
}

absl::Status TensorCoreBackward(const float* q, const float* k, const float* v,
                                const float* logsumexp, const float* row_terms, const float* d_out,
                                float* d_q, float* d_k, float* d_v,
                                const cpu::AttentionShape& shape) {
  return WithHeadDim(shape.head_dim, [&]<int kHeadDim>() {
    return Backward<kHeadDim>(q, k, v, logsumexp, row_terms, d_out, d_q, d_k, d_v, shape);
  });
}

}  // namespace fedmoe::kernels::cuda::attention_internal
