#include "kernels/cpu/moe_routing.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/eigen_maps.h"
#include "kernels/shared/moe_routing_rows.h"

namespace fedmoe::kernels::cpu {

using internal::View;

void RouterTopKForward(const float* logits, float* probs, int32_t* expert_index,
                       float* expert_weight, int64_t rows, int64_t experts, int64_t top_k) {
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    RouterTopKForwardRow(logits + row * experts, probs + row * experts, expert_index + row * top_k,
                         expert_weight + row * top_k, experts, top_k);
  }
}

void BuildExpertPermutation(const int32_t* expert_index, int64_t rows, int64_t top_k,
                            int64_t experts, ExpertPermutation& permutation) {
  const int64_t slots = rows * top_k;
  permutation.offsets.assign(static_cast<size_t>(experts + 1), 0);
  permutation.slot_token.resize(static_cast<size_t>(slots));
  permutation.permuted_slot.resize(static_cast<size_t>(slots));
  for (int64_t slot = 0; slot < slots; ++slot) ++permutation.offsets[expert_index[slot] + 1];
  for (int64_t e = 0; e < experts; ++e) permutation.offsets[e + 1] += permutation.offsets[e];
  std::vector<int64_t> next(permutation.offsets.begin(), permutation.offsets.end() - 1);
  for (int64_t slot = 0; slot < slots; ++slot) {
    const int64_t permuted = next[expert_index[slot]]++;
    permutation.slot_token[permuted] = slot / top_k;
    permutation.permuted_slot[slot] = permuted;
  }
}

void GatherByExpert(const float* in, const ExpertPermutation& permutation, float* permuted,
                    int64_t width) {
  const auto slots = static_cast<int64_t>(permutation.slot_token.size());
#pragma omp parallel for schedule(static)
  for (int64_t slot = 0; slot < slots; ++slot) {
    std::memcpy(permuted + slot * width, in + permutation.slot_token[slot] * width,
                static_cast<size_t>(width) * sizeof(float));
  }
}

void CombineExpertOutputs(const float* expert_out, const float* expert_weight,
                          const ExpertPermutation& permutation, float* out, int64_t rows,
                          int64_t top_k, int64_t width) {
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    auto destination = View(out + row * width, 1, width);
    for (int64_t j = 0; j < top_k; ++j) {
      const int64_t slot = row * top_k + j;
      destination += expert_weight[slot] *
                     View(expert_out + permutation.permuted_slot[slot] * width, 1, width);
    }
  }
}

void RouterTopKBackward(const float* probs, const int32_t* expert_index,
                        const float* d_expert_weight, const float* d_probs, float* d_logits,
                        int64_t rows, int64_t experts, int64_t top_k) {
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    RouterTopKBackwardRow(probs + row * experts, expert_index + row * top_k,
                          d_expert_weight + row * top_k,
                          d_probs != nullptr ? d_probs + row * experts : nullptr,
                          d_logits + row * experts, experts, top_k);
  }
}

void GatherByExpertBackward(const float* d_permuted, const ExpertPermutation& permutation,
                            float* d_in, int64_t rows, int64_t top_k, int64_t width) {
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    auto destination = View(d_in + row * width, 1, width);
    for (int64_t j = 0; j < top_k; ++j) {
      destination +=
          View(d_permuted + permutation.permuted_slot[row * top_k + j] * width, 1, width);
    }
  }
}

void CombineExpertOutputsBackward(const float* expert_out, const float* expert_weight,
                                  const ExpertPermutation& permutation, const float* d_out,
                                  float* d_expert_out, float* d_expert_weight, int64_t rows,
                                  int64_t top_k, int64_t width) {
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const auto upstream = View(d_out + row * width, 1, width);
    for (int64_t j = 0; j < top_k; ++j) {
      const int64_t slot = row * top_k + j;
      const int64_t permuted = permutation.permuted_slot[slot];
      View(d_expert_out + permuted * width, 1, width) = expert_weight[slot] * upstream;
      d_expert_weight[slot] =
          (upstream.array() * View(expert_out + permuted * width, 1, width).array()).sum();
    }
  }
}

}  // namespace fedmoe::kernels::cpu
