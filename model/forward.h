// The batched forward pass of the Mixtral architecture on the CPU kernels, keeping every
// activation the backward pass and the routing views need.
//
// Per layer, on rows = batch·seq_len tokens:
//   h = x + o_proj(attention(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1))), n1 = rmsnorm(x)
//   y = h + Σ_{e ∈ topk} w_e·expert_e(n2) + shared(n2),                       n2 = rmsnorm(h)
// where the router takes softmax over all experts, keeps the top k and renormalises their
// weights, and each expert runs once over the tokens routed to it (gather, run, scatter-add).
#ifndef FEDMOE_MODEL_FORWARD_H_
#define FEDMOE_MODEL_FORWARD_H_

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cpu/aligned.h"
#include "kernels/cpu/bf16.h"
#include "kernels/cpu/moe_routing.h"
#include "kernels/device.h"
#include "model/matmul_precision.h"
#include "model/parameters.h"

namespace fedmoe::model {

using kernels::cpu::AlignedBf16;
using kernels::cpu::AlignedFloats;

// One layer's saved activations. Widths: H hidden, Q = heads·head_dim, K = kv_heads·head_dim,
// E experts, k experts per token, I expert inner, S shared inner.
struct LayerActivations {
  AlignedFloats input;                // [rows, H] the residual stream entering the layer
  AlignedFloats attention_norm;       // [rows, H]
  AlignedFloats attention_rstd;       // [rows]
  AlignedFloats q;                    // [rows, Q] after RoPE
  AlignedFloats k;                    // [rows, K] after RoPE
  AlignedFloats v;                    // [rows, K]
  AlignedFloats attention_probs;      // [batch, heads, seq_len, seq_len]
  AlignedFloats attention_output;     // [rows, Q] before o_proj
  AlignedFloats residual;             // [rows, H] after the attention block
  AlignedFloats moe_norm;             // [rows, H]
  AlignedFloats moe_rstd;             // [rows]
  AlignedFloats router_logits;        // [rows, E]
  AlignedFloats router_probs;         // [rows, E]
  std::vector<int32_t> expert_index;  // [rows, k]
  AlignedFloats expert_weight;        // [rows, k], renormalised
  kernels::cpu::ExpertPermutation permutation;
  AlignedFloats expert_input;   // [rows·k, H] grouped by expert
  AlignedFloats expert_gate;    // [rows·k, I]
  AlignedFloats expert_up;      // [rows·k, I]
  AlignedFloats expert_act;     // [rows·k, I]
  AlignedFloats expert_output;  // [rows·k, H]
  AlignedFloats shared_gate;    // [rows, S]
  AlignedFloats shared_up;      // [rows, S]
  AlignedFloats shared_act;     // [rows, S]
  // With MatMulPrecision::kBfloat16, the weight products' bf16 operands (expert_act and
  // shared_act are then not kept in fp32).
  AlignedBf16 attention_norm_bf16;     // [rows, H]
  AlignedBf16 attention_output_bf16;   // [rows, Q]
  AlignedBf16 attention_weights_bf16;  // q, k, v and o_proj (internal::AttentionWeightsBf16)
  AlignedBf16 expert_input_bf16;       // [rows·k, H]
  AlignedBf16 expert_act_bf16;         // [rows·k, I]
  AlignedBf16 expert_weights_bf16;     // [E, 3, I·H]: each expert's w1, w3, w2
  AlignedBf16 shared_input_bf16;       // [rows, H]
  AlignedBf16 shared_act_bf16;         // [rows, S]
  AlignedBf16 shared_weights_bf16;     // [3, S·H]
};

// Everything one pass computed. Reusing one ForwardPass across calls reuses its buffers.
struct ForwardPass {
  // Chosen by the caller before Forward; Backward follows what the pass used.
  MatMulPrecision matmul_precision = MatMulPrecision::kFloat32;
  int64_t batch = 0;
  int64_t seq_len = 0;
  std::vector<int32_t> tokens;  // [rows]
  std::vector<LayerActivations> layers;
  AlignedFloats final_input;  // [rows, H] the residual stream after the last layer
  AlignedFloats final_norm;   // [rows, H]
  AlignedFloats final_rstd;   // [rows]
  AlignedFloats logits;       // [rows, vocab]

  int64_t rows() const { return batch * seq_len; }
};

// OK when `tokens` are batch × seq_len ids inside the vocabulary, with seq_len within
// max_position_embeddings; otherwise an InvalidArgument that names the first fault.
absl::Status CheckTokens(const MoeConfig& config, std::span<const int32_t> tokens, int64_t batch,
                         int64_t seq_len);

// Runs the model over `batch` sequences of `seq_len` tokens each (tokens is [batch, seq_len],
// row-major), in pass.matmul_precision. InvalidArgument for a token id outside the vocabulary,
// a length that does not match, or seq_len beyond max_position_embeddings; Unimplemented for
// bf16 on a CPU where oneDNN has no bf16 product.
absl::Status Forward(const ModelParameters& parameters, std::span<const int32_t> tokens,
                     int64_t batch, int64_t seq_len, ForwardPass& pass);

// The sum of next-token cross-entropies (nats) over the pass: position t of each sequence
// predicts token t + 1, and targets[row] < 0 excludes a row. targets is [rows], usually the
// tokens shifted left by one with −1 at each sequence's end. Returns {sum, counted rows}.
struct LossSum {
  double total = 0;
  int64_t predictions = 0;
};
LossSum CrossEntropy(const ForwardPass& pass, std::span<const int32_t> targets, int64_t vocab_size);

// The targets for plain next-token prediction over pass.tokens: each row's next token inside
// its sequence, and −1 for the last position of each sequence.
std::vector<int32_t> NextTokenTargets(std::span<const int32_t> tokens, int64_t batch,
                                      int64_t seq_len);

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_FORWARD_H_
