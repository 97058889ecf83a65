#include "model/optimizer.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "kernels/cpu/optimizer.h"

namespace fedmoe::model {

AdamW::AdamW(const ModelLayout& layout, const TrainableSet& trainable, AdamWOptions options)
    : AdamW(layout.total_size(), TrainedRanges(layout, trainable), options) {}

AdamW::AdamW(int64_t total_size, std::span<const TrainedRange> ranges, AdamWOptions options)
    : options_(options),
      first_moment_(static_cast<size_t>(total_size), 0.0f),
      second_moment_(static_cast<size_t>(total_size), 0.0f) {
  for (const TrainedRange& range : ranges) {
    ranges_.push_back({range.offset, range.size, range.decay});
  }
}

void AdamW::Step(std::span<float> parameters, std::span<const float> gradients, double lr,
                 double gradient_norm, double max_norm) {
  ++steps_;
  const kernels::AdamWStep step =
      kernels::MakeAdamWStep(options_.beta1, options_.beta2, options_.epsilon,
                             options_.weight_decay, lr, steps_, max_norm);
  kernels::cpu::AdamWUpdate(parameters.data(), gradients.data(), first_moment_.data(),
                            second_moment_.data(), ranges_, step, gradient_norm * gradient_norm);
}

double LearningRate(int64_t step, int64_t total, int64_t warmup, double peak, Schedule schedule,
                    double min_ratio) {
  if (step < warmup) return peak * static_cast<double>(step + 1) / static_cast<double>(warmup);
  if (schedule == Schedule::kConstant || total <= warmup + 1) return peak;
  const double progress =
      static_cast<double>(step - warmup) / static_cast<double>(total - warmup - 1);
  const double minimum = peak * min_ratio;
  return minimum +
         (peak - minimum) * 0.5 * (1.0 + std::cos(std::numbers::pi * std::min(progress, 1.0)));
}

double GradientNorm(const ModelLayout& layout, const TrainableSet& trainable,
                    std::span<const float> gradients) {
  return GradientNorm(TrainedRanges(layout, trainable), gradients);
}

double GradientNorm(std::span<const TrainedRange> ranges, std::span<const float> gradients) {
  double squares = 0;
  for (const TrainedRange& spec : ranges) {
    const float* g = gradients.data() + spec.offset;
    // In double: a float sum over a tensor of a million squares was off by 0.3%. `simd` lets
    // each thread keep vector partial sums; without it the loop was one dependent addition per
    // value, 4x slower (46 ms for the small model's 69M trainable values, now 16 ms).
    double tensor_squares = 0;
#pragma omp parallel for simd schedule(static) reduction(+ : tensor_squares) if (spec.size > 65536)
    for (int64_t i = 0; i < spec.size; ++i) tensor_squares += static_cast<double>(g[i]) * g[i];
    squares += tensor_squares;
  }
  return std::sqrt(squares);
}

}  // namespace fedmoe::model
