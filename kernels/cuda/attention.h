// Causal attention with grouped KV heads on the GPU, fused in the flash-attention style: the
// scores of a query block against a key block live in shared memory and registers only, the
// softmax is computed online, and the backward pass recomputes the probabilities from the
// saved log-sum-exp instead of storing the [seq_len, seq_len] matrix the CPU kernel keeps.
// Same layouts and shape as kernels/cpu/attention.h; inputs and outputs are fp32.
#ifndef FEDMOE_KERNELS_CUDA_ATTENTION_H_
#define FEDMOE_KERNELS_CUDA_ATTENTION_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cpu/attention.h"

namespace fedmoe::kernels::cuda {

using cpu::AttentionShape;

// How the products are computed.
// - kFloat32: fp32 on the CUDA cores; agrees with the CPU kernels to float rounding.
// - kTensorFloat32: on the tensor cores, operands rounded to TF32 (a 10-bit mantissa: 2^-11
//   relative error each) and fp32 accumulation. An order of magnitude faster; what bf16
//   training uses, whose weights carry coarser rounding than that already.
enum class AttentionArithmetic { kFloat32, kTensorFloat32 };

// OK when the kernels take this shape: head_dim 16, 32, 64 or 128, heads a multiple of
// kv_heads, and sizes that fit a CUDA grid.
absl::Status CheckAttentionShape(const AttentionShape& shape);

// out [batch·seq_len, heads·head_dim] = softmax(q·kᵀ/√head_dim + mask)·v, and
// logsumexp [batch, heads, seq_len] of each row's scaled scores, for the backward pass: the twin
// of cpu::CausalAttentionForward, by the flash algorithm. The CPU twin keeps the probabilities
// (seq_len² per head fits its caches at the lengths it trains); this one keeps one value per row
// and recomputes them tile by tile in the backward pass, which is why their saved state differs.
absl::Status CausalAttentionForward(const float* q, const float* k, const float* v, float* out,
                                    float* logsumexp, const AttentionShape& shape,
                                    AttentionArithmetic arithmetic);

// The floats of scratch CausalAttentionBackward needs.
int64_t CausalAttentionBackwardScratch(const AttentionShape& shape);
// Writes (does not add) d_q, d_k and d_v from the forward pass's out and logsumexp, which
// must come from a forward pass of the same arithmetic. The query heads that share a KV head
// add into its gradient inside one block, in a fixed order, so the result repeats bit for bit.
absl::Status CausalAttentionBackward(const float* q, const float* k, const float* v,
                                     const float* out, const float* logsumexp, const float* d_out,
                                     float* d_q, float* d_k, float* d_v, float* scratch,
                                     const AttentionShape& shape, AttentionArithmetic arithmetic);

// The floats of scratch CachedAttentionForward needs for `rows` new rows from first_position.
int64_t CachedAttentionScratch(int64_t rows, int64_t first_position, const AttentionShape& shape);

// cpu::CachedAttentionForward's twin: `rows` new queries of one sequence at positions
// first_position … against its cached keys and values (after RoPE), one block per row and head.
// The scores go through `scratch` (CachedAttentionScratch floats) rather than shared memory, so
// that a long context does not run out of it.
absl::Status CachedAttentionForward(const float* q, const float* k_cache, const float* v_cache,
                                    float* out, int64_t rows, int64_t first_position,
                                    const AttentionShape& shape, float* scratch);

}  // namespace fedmoe::kernels::cuda

#endif  // FEDMOE_KERNELS_CUDA_ATTENTION_H_
