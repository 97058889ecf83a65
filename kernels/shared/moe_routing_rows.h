// One token's router math, forward and backward, shared by cpu::RouterTopK* and
// cuda::RouterTopK* (one call per row on either device), so that both choose the same experts
// with the same weights and the same ties.
#ifndef FEDMOE_KERNELS_SHARED_MOE_ROUTING_ROWS_H_
#define FEDMOE_KERNELS_SHARED_MOE_ROUTING_ROWS_H_

#include <cmath>
#include <cstdint>

#include "kernels/shared/host_device.h"

namespace fedmoe::kernels {

// p = softmax(z) over `experts`; chosen = the top_k experts by probability (ties to the lower
// index), weight = their probabilities renormalised to sum to 1. Selection by repeated scans:
// top_k is small (1–8) and experts a few hundred at most.
FEDMOE_HOST_DEVICE inline void RouterTopKForwardRow(const float* z, float* p, int32_t* chosen,
                                                    float* weight, int64_t experts, int64_t top_k) {
  float max_logit = z[0];
  for (int64_t e = 1; e < experts; ++e) max_logit = z[e] > max_logit ? z[e] : max_logit;
  float total = 0.0F;
  for (int64_t e = 0; e < experts; ++e) {
    p[e] = expf(z[e] - max_logit);
    total += p[e];
  }
  for (int64_t e = 0; e < experts; ++e) p[e] /= total;
  float chosen_total = 0.0F;
  for (int64_t j = 0; j < top_k; ++j) {
    int64_t best = -1;
    for (int64_t e = 0; e < experts; ++e) {
      bool taken = false;
      for (int64_t i = 0; i < j; ++i) taken = taken || chosen[i] == e;
      if (!taken && (best < 0 || p[e] > p[best])) best = e;
    }
    chosen[j] = static_cast<int32_t>(best);
    weight[j] = p[best];
    chosen_total += p[best];
  }
  for (int64_t j = 0; j < top_k; ++j) weight[j] /= chosen_total;
}

// d_z from the gradient of the renormalised weights (d_weight [top_k]) and, unless null, a
// gradient on all probabilities (d_p [experts], from the balance loss).
FEDMOE_HOST_DEVICE inline void RouterTopKBackwardRow(const float* p, const int32_t* chosen,
                                                     const float* d_weight, const float* d_p,
                                                     float* d_z, int64_t experts, int64_t top_k) {
  for (int64_t e = 0; e < experts; ++e) d_z[e] = d_p != nullptr ? d_p[e] : 0.0F;
  // w_j = p_j / S with S = Σ_chosen p: dp_e = (dw_e − Σ_j dw_j·w_j) / S for chosen e.
  float total = 0.0F;
  for (int64_t j = 0; j < top_k; ++j) total += p[chosen[j]];
  float weighted = 0.0F;
  for (int64_t j = 0; j < top_k; ++j) weighted += d_weight[j] * p[chosen[j]] / total;
  for (int64_t j = 0; j < top_k; ++j) d_z[chosen[j]] += (d_weight[j] - weighted) / total;
  // Softmax backward: dz = p ⊙ (dp − ⟨p, dp⟩).
  float dot = 0.0F;
  for (int64_t e = 0; e < experts; ++e) dot += p[e] * d_z[e];
  for (int64_t e = 0; e < experts; ++e) d_z[e] = p[e] * (d_z[e] - dot);
}

}  // namespace fedmoe::kernels

#endif  // FEDMOE_KERNELS_SHARED_MOE_ROUTING_ROWS_H_
