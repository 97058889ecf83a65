#include "kernels/cpu/cross_entropy.h"

#include <cmath>

#include "kernels/cpu/eigen_maps.h"

namespace fedmoe::kernels::cpu {

using internal::View;

int64_t CrossEntropyForward(const float* logits, const int32_t* targets, float* losses,
                            int64_t rows, int64_t vocab) {
  int64_t counted = 0;
#pragma omp parallel for schedule(static) reduction(+ : counted)
  for (int64_t row = 0; row < rows; ++row) {
    if (targets[row] < 0) {
      losses[row] = 0.0f;
      continue;
    }
    const auto z = View(logits + row * vocab, 1, vocab).array();
    const float max_logit = z.maxCoeff();
    const float log_sum = max_logit + std::log((z - max_logit).exp().sum());
    losses[row] = log_sum - z(targets[row]);
    ++counted;
  }
  return counted;
}

int64_t CrossEntropyBackward(const float* logits, const int32_t* targets, float* d_logits,
                             float* losses, int64_t rows, int64_t vocab, float scale) {
  int64_t counted = 0;
#pragma omp parallel for schedule(static) reduction(+ : counted)
  for (int64_t row = 0; row < rows; ++row) {
    auto d = View(d_logits + row * vocab, 1, vocab).array();
    if (targets[row] < 0) {
      d.setZero();
      losses[row] = 0.0f;
      continue;
    }
    const auto z = View(logits + row * vocab, 1, vocab).array();
    const float max_logit = z.maxCoeff();
    d = (z - max_logit).exp();
    const float total = d.sum();
    losses[row] = max_logit + std::log(total) - z(targets[row]);
    d *= scale / total;
    d(targets[row]) -= scale;
    ++counted;
  }
  return counted;
}

}  // namespace fedmoe::kernels::cpu
