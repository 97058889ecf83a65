// The local optimizer: AdamW with decoupled weight decay over the trainable tensors, a
// learning-rate schedule (linear warmup, then cosine decay or constant), and global-norm
// gradient clipping.
#ifndef FEDMOE_MODEL_OPTIMIZER_H_
#define FEDMOE_MODEL_OPTIMIZER_H_

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/shared/adamw.h"
#include "model/backward.h"
#include "model/parameters.h"

namespace fedmoe::model {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double epsilon = 1e-8;
  // Decoupled (Loshchilov & Hutter): θ ← θ − lr·(m̂/(√v̂ + ε) + λ·θ). Not applied to norms.
  double weight_decay = 0.01;
};

// The moments are kept for the trained ranges only, packed one after another: a frozen tensor (an
// adapter's A, a base's attention) costs the optimizer nothing.
class AdamW {
 public:
  AdamW(const ModelLayout& layout, const TrainableSet& trainable, AdamWOptions options);
  // Over `ranges` of any buffer (an adapter buffer's, adapted_model.h).
  AdamW(std::span<const TrainedRange> ranges, AdamWOptions options);

  // One update of the trainable tensors at learning rate `lr`, with the gradients scaled down to
  // max_norm when their joint norm, `gradient_norm` (GradientNorm), is above it (clipping inside
  // the update, without another pass over the gradients). max_norm ≤ 0: no clipping.
  void Step(std::span<float> parameters, std::span<const float> gradients, double lr,
            double gradient_norm = 0, double max_norm = 0);
  int64_t steps() const { return steps_; }

 private:
  // Each trained range of the parameters, and where its moments start in the packed buffers.
  struct MomentRange {
    kernels::ParameterRange parameters;
    int64_t moments = 0;
  };
  std::vector<MomentRange> ranges_;
  AdamWOptions options_;
  kernels::cpu::AlignedFloats first_moment_;
  kernels::cpu::AlignedFloats second_moment_;
  int64_t steps_ = 0;
};

enum class Schedule { kCosine, kConstant };

// The learning rate at optimizer step `step` (0-based) of `total`: a linear warmup from
// peak/warmup to peak over `warmup` steps, then cosine decay to peak·min_ratio at the last
// step, or constant.
double LearningRate(int64_t step, int64_t total, int64_t warmup, double peak, Schedule schedule,
                    double min_ratio);

// The joint L2 norm of the trainable gradients.
double GradientNorm(const ModelLayout& layout, const TrainableSet& trainable,
                    std::span<const float> gradients);
// The joint L2 norm of the gradients in `ranges`.
double GradientNorm(std::span<const TrainedRange> ranges, std::span<const float> gradients);

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_OPTIMIZER_H_
