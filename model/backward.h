// The training loss and its gradient: next-token cross-entropy plus the expert load-balancing
// loss, back-propagated through every layer the trainable tensors need.
//
// The balance loss is the Switch Transformer / DeepSeekMoE form, per MoE layer
//   L_bal = Σ_e f_e · P_e,  f_e = E/(k·N) · (token slots routed to e),  P_e = mean_t p_t,e,
// which is 1 when routing is uniform; the model's balance term is coefficient × the mean of
// L_bal over layers. f_e is a count and passes no gradient; P_e does, through the router's
// softmax.
//
// A personal model's private experts (model/personal.h) are balanced as a group of their own:
// f_e is then e's share of the slots routed into its group, times the group's size. Routing
// uniform within each group gives L_bal = 1 and no gradient whatever the split between the
// groups, so the router is pushed to spread load over the global experts and over the private
// ones, and left free to learn, token by token, how much to rely on each.
#ifndef FEDMOE_MODEL_BACKWARD_H_
#define FEDMOE_MODEL_BACKWARD_H_

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cpu/aligned.h"
#include "model/forward.h"
#include "model/parameters.h"
#include "model/per_record_clipping.h"
#include "model/trainable_set.h"

namespace fedmoe::model {

using kernels::cpu::AlignedFloats;

struct LossBreakdown {
  // Σ cross-entropy / normaliser, so micro-batches of one step add up to the step's mean.
  double cross_entropy = 0;
  int64_t predictions = 0;
  // coefficient × mean over layers of L_bal, times the micro-batch's share of the step.
  double balance = 0;
  // The unweighted mean over layers of L_bal (1 is perfectly balanced), for progress lines.
  double balance_per_layer = 0;
  double total() const { return cross_entropy + balance; }
};

struct BackwardOptions {
  double balance_coefficient = 0;
  // The number of predictions in the whole optimizer step (all micro-batches): the
  // cross-entropy mean's denominator.
  double predictions_in_step = 1;
  // This micro-batch's share of the step, weighting its balance term (1 / micro-batches).
  double step_share = 1;
  // DP-SGD: the loss is a sum over the records that per_record->records() lays out, each
  // record's loss being the mean cross-entropy over its own predictions plus the balance term
  // of its own rows (so that no record's gradient depends on another's data), and every
  // trainable weight's gradient goes to per_record to be clipped record by record instead of
  // into `gradients` (Finish adds the clipped sum there). predictions_in_step and step_share
  // then only scale the reported loss. fp32 products only; embeddings cannot be trained.
  PerRecordClipping* per_record = nullptr;
  // The last this many experts of each layer are a site's private experts, balanced as their
  // own group (above); 0: one group.
  int64_t private_experts = 0;
};

// Reusable buffers, so a training loop allocates once.
struct BackwardScratch {
  AlignedFloats losses, d_logits, d_stream, d_norm, d_residual, d_attention, d_q, d_k, d_v;
  AlignedFloats d_expert_out, d_expert_in, d_expert_weight, d_router_probs, d_router_logits;
  AlignedFloats d_gate, d_up, d_act;
  // The bf16 operands of the weight products, with MatMulPrecision::kBfloat16.
  AlignedBf16 d_out_bf16, d_gate_bf16, d_up_bf16, d_q_bf16, d_k_bf16, d_v_bf16;
};

// Adds the gradient of the loss of `pass` (targets as in CrossEntropy) into `gradients`, which
// has the parameters' layout; only tensors in `trainable` are written. Returns the loss.
absl::StatusOr<LossBreakdown> Backward(const ModelParameters& parameters, const ForwardPass& pass,
                                       std::span<const int32_t> targets,
                                       const TrainableSet& trainable,
                                       const BackwardOptions& options, std::span<float> gradients,
                                       BackwardScratch& scratch);

// L_bal of one layer (above) from its routed token slots per expert and the column sums of its
// router probabilities over its `rows` tokens, and, unless per_expert_gradient is empty,
// ∂(scale·L_bal)/∂p[t, e] for each expert e, which is the same for every row t. Each backend
// gathers the counts and sums its own way; this is the formula both share.
// `private_experts` is BackwardOptions::private_experts.
double BalanceLoss(std::span<const int64_t> slots, std::span<const double> probability_sums,
                   int64_t rows, int64_t top_k, double scale, std::span<float> per_expert_gradient,
                   int64_t private_experts = 0);

// L_bal of rows [first_row, first_row + rows) of one layer of a pass and, when `d_probs` is
// given (those rows' block), its gradient scaled by `scale` with respect to the router
// probabilities (the same for every row).
double LayerBalance(const LayerActivations& layer, int64_t first_row, int64_t rows, int64_t experts,
                    int64_t top_k, int64_t private_experts, double scale, float* d_probs);

// The loss of a pass whose cross-entropies sum to `sum`: the cross-entropy mean and the balance
// term, as Backward reports them.
LossBreakdown LossOf(const MoeConfig& config, const ForwardPass& pass, const LossSum& sum,
                     const BackwardOptions& options);

// The loss head of a backward pass: writes d_logits [rows, vocab] of the cross-entropy, scaled
// as the loss is (the step's mean, or under options.per_record each record's own mean), and
// each row's loss into losses [rows]; returns their sum.
LossSum CrossEntropyGradient(const ForwardPass& pass, std::span<const int32_t> targets,
                             int64_t vocab_size, const BackwardOptions& options, float* d_logits,
                             float* losses);

// The balance term's gradient with respect to one layer's router probabilities, scaled by
// `scale`, into d_probs (sized here): the pass's term, or under options.per_record each
// record's own over its rows. Null when options.balance_coefficient is 0.
float* BalanceGradient(const LayerActivations& layer, int64_t experts, int64_t top_k,
                       const BackwardOptions& options, double scale, AlignedFloats& d_probs);

// The lowest layer holding a tensor that is trained (0 with trainable embeddings, the number of
// layers when none is): the backward walk stops there.
int64_t LowestLayerNeedingGradient(const ModelLayout& layout, const MoeConfig& config,
                                   const TrainableSet& trainable);

// The loss alone (no gradient), as Backward computes it: for finite-difference checks and
// validation.
LossBreakdown ComputeLoss(const ModelParameters& parameters, const ForwardPass& pass,
                          std::span<const int32_t> targets, const BackwardOptions& options);

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_BACKWARD_H_
