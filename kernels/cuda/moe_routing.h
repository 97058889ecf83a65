// Mixture-of-experts routing on the GPU: the CUDA twins of kernels/cpu/moe_routing.h. The
// permutation lives on the device as int32 arrays (offsets [experts + 1], slot_token [slots],
// permuted_slot [slots]) in the CPU's order: an expert's slots are contiguous and in token
// order. Device pointers; the caller checks sizes. Queued on the default stream.
#ifndef FEDMOE_KERNELS_CUDA_MOE_ROUTING_H_
#define FEDMOE_KERNELS_CUDA_MOE_ROUTING_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/dense.h"

namespace fedmoe::kernels::cuda {

// The most experts a layer may have here (a permutation counts them in shared memory).
inline constexpr int64_t kMaxExperts = 1024;

// softmax over experts, the top_k by probability (ties to the lower index) and their weights
// renormalised, as cpu::RouterTopKForward.
absl::Status RouterTopKForward(const float* logits, float* probs, int32_t* expert_index,
                               float* expert_weight, int64_t rows, int64_t experts, int64_t top_k);

// Writes d_logits from d_expert_weight and, unless null, d_probs; as cpu::RouterTopKBackward.
absl::Status RouterTopKBackward(const float* probs, const int32_t* expert_index,
                                const float* d_expert_weight, const float* d_probs, float* d_logits,
                                int64_t rows, int64_t experts, int64_t top_k);

// The int32 scratch BuildExpertPermutation needs.
int64_t ExpertPermutationScratch(int64_t slots, int64_t experts);
// The counting sort by expert, stable, as cpu::BuildExpertPermutation. InvalidArgument for more
// than kMaxExperts experts or 2^31 slots.
absl::Status BuildExpertPermutation(const int32_t* expert_index, int64_t rows, int64_t top_k,
                                    int64_t experts, int32_t* offsets, int32_t* slot_token,
                                    int32_t* permuted_slot, int32_t* scratch);

// counts[e] += offsets[e + 1] − offsets[e]: a layer's routing histogram, kept on the device
// over local training for the update's per-expert weights.
absl::Status AddExpertCounts(const int32_t* offsets, int64_t experts, int64_t* counts);

// permuted[slot] = in[slot_token[slot]], as fp32 and/or bf16 (either may be null).
absl::Status GatherByExpert(const float* in, const int32_t* slot_token, float* permuted,
                            DeviceBf16* permuted_bf16, int64_t slots, int64_t width);

// d_in[t] += Σ_j d_permuted[permuted_slot[t, j]].
absl::Status GatherByExpertBackward(const float* d_permuted, const int32_t* permuted_slot,
                                    float* d_in, int64_t rows, int64_t top_k, int64_t width);

// out[t] += Σ_j expert_weight[t, j] · expert_out[permuted_slot[t, j]].
absl::Status CombineExpertOutputs(const float* expert_out, const float* expert_weight,
                                  const int32_t* permuted_slot, float* out, int64_t rows,
                                  int64_t top_k, int64_t width);

// Writes d_expert_out[slot] = w·d_out[t] (fp32 and/or bf16) and d_expert_weight[t, j] =
// ⟨expert_out[slot], d_out[t]⟩.
absl::Status CombineExpertOutputsBackward(const float* expert_out, const float* expert_weight,
                                          const int32_t* permuted_slot, const float* d_out,
                                          float* d_expert_out, DeviceBf16* d_expert_out_bf16,
                                          float* d_expert_weight, int64_t rows, int64_t top_k,
                                          int64_t width);

}  // namespace fedmoe::kernels::cuda

#endif  // FEDMOE_KERNELS_CUDA_MOE_ROUTING_H_
