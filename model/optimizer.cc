#include "model/optimizer.h"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <numbers>

namespace fedmoe::model {

AdamW::AdamW(const ModelLayout& layout, const TrainableSet& trainable, AdamWOptions options)
    : options_(options),
      first_moment_(static_cast<size_t>(layout.total_size()), 0.0f),
      second_moment_(static_cast<size_t>(layout.total_size()), 0.0f) {
  for (const TrainedRange& range : TrainedRanges(layout, trainable)) {
    ranges_.push_back({range.offset, range.size, range.decay});
  }
}

void AdamW::Step(std::span<float> parameters, std::span<const float> gradients, double lr,
                 double gradient_scale) {
  ++steps_;
  const double correction1 = 1.0 - std::pow(options_.beta1, static_cast<double>(steps_));
  const double correction2 = 1.0 - std::pow(options_.beta2, static_cast<double>(steps_));
  const auto beta1 = static_cast<float>(options_.beta1);
  const auto beta2 = static_cast<float>(options_.beta2);
  const auto step_size = static_cast<float>(lr / correction1);
  const auto root_correction2 = static_cast<float>(std::sqrt(correction2));
  const auto epsilon = static_cast<float>(options_.epsilon);
  const auto scale = static_cast<float>(gradient_scale);
  for (const Range& range : ranges_) {
    const float decay = range.decay ? static_cast<float>(lr * options_.weight_decay) : 0.0f;
    float* theta = parameters.data() + range.offset;
    const float* g = gradients.data() + range.offset;
    float* m = first_moment_.data() + range.offset;
    float* v = second_moment_.data() + range.offset;
    // Eigen arrays in blocks: a plain loop calling std::sqrt stays scalar, because the compiler
    // must keep sqrt's errno behaviour, and the update was then compute-bound.
    constexpr int64_t kBlock = 16384;
#pragma omp parallel for schedule(static) if (range.size > 4 * kBlock)
    for (int64_t first = 0; first < range.size; first += kBlock) {
      const auto count = static_cast<Eigen::Index>(std::min(kBlock, range.size - first));
      const Eigen::ArrayXf gradient = scale * Eigen::Map<const Eigen::ArrayXf>(g + first, count);
      Eigen::Map<Eigen::ArrayXf> moment1(m + first, count);
      Eigen::Map<Eigen::ArrayXf> moment2(v + first, count);
      Eigen::Map<Eigen::ArrayXf> values(theta + first, count);
      moment1 = beta1 * moment1 + (1.0f - beta1) * gradient;
      moment2 = beta2 * moment2 + (1.0f - beta2) * gradient.square();
      values -=
          decay * values + step_size * moment1 / (moment2.sqrt() / root_correction2 + epsilon);
    }
  }
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
  double squares = 0;
  for (const TrainedRange& spec : TrainedRanges(layout, trainable)) {
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

double ClipScale(double norm, double max_norm) {
  return max_norm > 0 && norm > max_norm ? max_norm / norm : 1.0;
}

}  // namespace fedmoe::model
