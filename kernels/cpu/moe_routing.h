// Mixture-of-experts routing on the host: the router's softmax and top-k, and the permutation
// that lets each expert run once over all of its tokens instead of once per token.
#ifndef FEDMOE_KERNELS_CPU_MOE_ROUTING_H_
#define FEDMOE_KERNELS_CPU_MOE_ROUTING_H_

#include <cstdint>
#include <vector>

namespace fedmoe::kernels::cpu {

// Mixtral's router: probs = softmax(logits) over all experts, then the top_k experts of each
// row by probability, their weights renormalised to sum to 1. logits and probs are
// [rows, experts]; expert_index and expert_weight are [rows, top_k], best first. Equal
// probabilities go to the lower expert index.
void RouterTopKForward(const float* logits, float* probs, int32_t* expert_index,
                       float* expert_weight, int64_t rows, int64_t experts, int64_t top_k);

// Backward of RouterTopKForward. Takes the gradient of the renormalised weights
// (d_expert_weight [rows, top_k]) and, optionally, a gradient on all probabilities from the
// load-balancing loss (d_probs [rows, experts], may be null), and writes (does not add)
// d_logits [rows, experts]. The choice of experts is piecewise constant and passes no gradient.
void RouterTopKBackward(const float* probs, const int32_t* expert_index,
                        const float* d_expert_weight, const float* d_probs, float* d_logits,
                        int64_t rows, int64_t experts, int64_t top_k);

// Where each (token, choice) slot goes when the slots are grouped by expert. Slots of one expert
// are contiguous and in token order, so the grouping is deterministic.
struct ExpertPermutation {
  // Expert e owns permuted slots [offsets[e], offsets[e + 1]); offsets has experts + 1 entries.
  std::vector<int64_t> offsets;
  // The token (row) behind each permuted slot.
  std::vector<int64_t> slot_token;
  // For token t's j-th choice, its permuted slot: permuted_slot[t·top_k + j].
  std::vector<int64_t> permuted_slot;

  int64_t tokens_for(int64_t expert) const { return offsets[expert + 1] - offsets[expert]; }
};

// Builds the permutation from the router's choices (a counting sort by expert).
void BuildExpertPermutation(const int32_t* expert_index, int64_t rows, int64_t top_k,
                            int64_t experts, ExpertPermutation& permutation);

// permuted[slot] = in[slot_token[slot]] for every slot; in is [rows, width], permuted is
// [rows·top_k, width].
void GatherByExpert(const float* in, const ExpertPermutation& permutation, float* permuted,
                    int64_t width);

// d_in[t] += Σ_j d_permuted[permuted_slot[t, j]]: the backward of GatherByExpert, again as a
// gather per token.
void GatherByExpertBackward(const float* d_permuted, const ExpertPermutation& permutation,
                            float* d_in, int64_t rows, int64_t top_k, int64_t width);

// out[t] += Σ_j expert_weight[t, j] · expert_out[permuted_slot[t, j]]: the weighted scatter-add
// back to token order, done as a gather per token so it needs no atomics and sums in a fixed
// order.
void CombineExpertOutputs(const float* expert_out, const float* expert_weight,
                          const ExpertPermutation& permutation, float* out, int64_t rows,
                          int64_t top_k, int64_t width);

// Backward of CombineExpertOutputs: writes d_expert_out[slot] = w·d_out[t] and
// d_expert_weight[t, j] = ⟨expert_out[slot], d_out[t]⟩.
void CombineExpertOutputsBackward(const float* expert_out, const float* expert_weight,
                                  const ExpertPermutation& permutation, const float* d_out,
                                  float* d_expert_out, float* d_expert_weight, int64_t rows,
                                  int64_t top_k, int64_t width);

}  // namespace fedmoe::kernels::cpu

#endif  // FEDMOE_KERNELS_CPU_MOE_ROUTING_H_
