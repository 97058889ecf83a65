// Causal multi-head attention with grouped KV heads (GQA) on the host.
#ifndef FEDMOE_KERNELS_CPU_ATTENTION_H_
#define FEDMOE_KERNELS_CPU_ATTENTION_H_

#include <cstdint>

namespace fedmoe::kernels::cpu {

struct AttentionShape {
  int64_t batch = 0;
  int64_t seq_len = 0;
  int64_t heads = 0;
  // Each KV head serves heads / kv_heads consecutive query heads, as Hugging Face's repeat_kv.
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  // Keys more than this many positions back are masked (Mixtral's sliding window); 0 is none.
  int64_t sliding_window = 0;
};

// q [batch·seq_len, heads·head_dim], k and v [batch·seq_len, kv_heads·head_dim], all after RoPE.
// Writes out [batch·seq_len, heads·head_dim] = softmax(q·kᵀ/√head_dim + causal mask)·v, and the
// attention probabilities probs [batch, heads, seq_len, seq_len] (zero above the diagonal) for
// the backward pass. Parallel over (sequence, head) pairs.
void CausalAttentionForward(const float* q, const float* k, const float* v, float* out,
                            float* probs, const AttentionShape& shape);

// Gradients of q, k and v (after RoPE) from the saved probabilities. Writes (does not add)
// d_q, d_k and d_v. Parallel over (sequence, KV head) pairs, so the query heads that share a KV
// head add into its gradient from one thread.
void CausalAttentionBackward(const float* q, const float* k, const float* v, const float* probs,
                             const float* d_out, float* d_q, float* d_k, float* d_v,
                             const AttentionShape& shape);

// Attention of `rows` new queries of one sequence, at positions first_position …
// first_position + rows − 1, over that sequence's cached keys and values at positions 0 …
// first_position + rows − 1 (k_cache and v_cache [positions, kv_heads·head_dim], after RoPE):
// the rows CausalAttentionForward would compute for those positions, without recomputing the
// ones before. q and out are [rows, heads·head_dim]; shape.batch and shape.seq_len are not
// read. Parallel over heads.
void CachedAttentionForward(const float* q, const float* k_cache, const float* v_cache, float* out,
                            int64_t rows, int64_t first_position, const AttentionShape& shape);

}  // namespace fedmoe::kernels::cpu

#endif  // FEDMOE_KERNELS_CPU_ATTENTION_H_
