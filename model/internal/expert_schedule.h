// Running every expert of a layer over its tokens. Internal to model/.
#ifndef FEDMOE_MODEL_INTERNAL_EXPERT_SCHEDULE_H_
#define FEDMOE_MODEL_INTERNAL_EXPERT_SCHEDULE_H_

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "kernels/cpu/moe_routing.h"

namespace fedmoe::model::internal {

// Calls run(expert) for every expert with tokens. When the load is spread, experts run
// concurrently, one per thread, largest first, each with single-threaded GEMMs (Eigen does not
// nest its threads inside an OpenMP region): that avoids a fork and join per product and runs
// each core at its single-thread SGEMM rate. When one expert holds most of the tokens, the
// experts run one after another with every thread inside each product instead.
template <typename Run>
void ForEachExpert(const kernels::cpu::ExpertPermutation& permutation, int64_t experts, Run run) {
  std::vector<int64_t> order;
  int64_t total = 0;
  int64_t largest = 0;
  for (int64_t e = 0; e < experts; ++e) {
    const int64_t count = permutation.tokens_for(e);
    if (count == 0) continue;
    order.push_back(e);
    total += count;
    largest = std::max(largest, count);
  }
  if (2 * largest > total) {
    for (const int64_t e : order) run(e);
    return;
  }
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return permutation.tokens_for(a) > permutation.tokens_for(b);
  });
  const auto tasks = static_cast<int64_t>(order.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t task = 0; task < tasks; ++task) run(order[static_cast<size_t>(task)]);
}

}  // namespace fedmoe::model::internal

#endif  // FEDMOE_MODEL_INTERNAL_EXPERT_SCHEDULE_H_
