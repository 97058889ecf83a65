#include "kernels/cpu/moe_routing.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/eigen_maps.h"

namespace fedmoe::kernels::cpu {

using internal::View;

void RouterTopKForward(const float* logits, float* probs, int32_t* expert_index,
                       float* expert_weight, int64_t rows, int64_t experts, int64_t top_k) {
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const float* z = logits + row * experts;
    float* p = probs + row * experts;
    const float max_logit = *std::max_element(z, z + experts);
    float total = 0.0f;
    for (int64_t e = 0; e < experts; ++e) {
      p[e] = std::exp(z[e] - max_logit);
      total += p[e];
    }
    for (int64_t e = 0; e < experts; ++e) p[e] /= total;

    int32_t* chosen = expert_index + row * top_k;
    float* weight = expert_weight + row * top_k;
    // Selection by repeated scans: top_k is small (1–8) and experts at most a few hundred.
    float chosen_total = 0.0f;
    for (int64_t j = 0; j < top_k; ++j) {
      int64_t best = -1;
      for (int64_t e = 0; e < experts; ++e) {
        if (std::find(chosen, chosen + j, static_cast<int32_t>(e)) != chosen + j) continue;
        if (best < 0 || p[e] > p[best]) best = e;
      }
      chosen[j] = static_cast<int32_t>(best);
      weight[j] = p[best];
      chosen_total += p[best];
    }
    for (int64_t j = 0; j < top_k; ++j) weight[j] /= chosen_total;
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
    const float* p = probs + row * experts;
    const int32_t* chosen = expert_index + row * top_k;
    const float* d_weight = d_expert_weight + row * top_k;
    float* d_z = d_logits + row * experts;
    // Gradient on the probabilities, first from the balance loss, then through
    // w_j = p_j / S with S = Σ_chosen p: dp_e = (dw_e − Σ_j dw_j·w_j) / S for chosen e.
    for (int64_t e = 0; e < experts; ++e)
      d_z[e] = d_probs != nullptr ? d_probs[row * experts + e] : 0.0f;
    float total = 0.0f;
    for (int64_t j = 0; j < top_k; ++j) total += p[chosen[j]];
    float weighted = 0.0f;
    for (int64_t j = 0; j < top_k; ++j) weighted += d_weight[j] * p[chosen[j]] / total;
    for (int64_t j = 0; j < top_k; ++j) d_z[chosen[j]] += (d_weight[j] - weighted) / total;
    // Softmax backward: dz = p ⊙ (dp − ⟨p, dp⟩).
    float dot = 0.0f;
    for (int64_t e = 0; e < experts; ++e) dot += p[e] * d_z[e];
    for (int64_t e = 0; e < experts; ++e) d_z[e] = p[e] * (d_z[e] - dot);
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
