// AdamW with decoupled weight decay (Loshchilov & Hutter), the step both devices take: what a
// step is made of, and the update of one value. kernels/cpu/optimizer.h and
// kernels/cuda/optimizer.h apply it over a parameter buffer's trainable ranges.
#ifndef FEDMOE_KERNELS_SHARED_ADAMW_H_
#define FEDMOE_KERNELS_SHARED_ADAMW_H_

#include <cmath>
#include <cstdint>

#include "kernels/shared/host_device.h"

namespace fedmoe::kernels {

struct ParameterRange {
  int64_t offset = 0;
  int64_t size = 0;
  bool decay = true;  // weight decay applies (not to norms)
};

struct AdamWStep {
  float beta1 = 0.9F;
  float beta2 = 0.999F;
  float epsilon = 1e-8F;
  // lr / (1 − β1^t) and √(1 − β2^t): the bias corrections of step t.
  float step_size = 0;
  float root_correction2 = 1;
  // lr · weight decay, for ranges with decay.
  float decay = 0;
  // Gradients are scaled by min(1, max_norm / ‖g‖) when max_norm > 0.
  float max_norm = 0;
};

// Step `t` (1-based) at learning rate `lr`, with the bias corrections computed in double.
inline AdamWStep MakeAdamWStep(double beta1, double beta2, double epsilon, double weight_decay,
                               double lr, int64_t t, double max_norm) {
  const double correction1 = 1.0 - std::pow(beta1, static_cast<double>(t));
  const double correction2 = 1.0 - std::pow(beta2, static_cast<double>(t));
  return AdamWStep{.beta1 = static_cast<float>(beta1),
                   .beta2 = static_cast<float>(beta2),
                   .epsilon = static_cast<float>(epsilon),
                   .step_size = static_cast<float>(lr / correction1),
                   .root_correction2 = static_cast<float>(std::sqrt(correction2)),
                   .decay = static_cast<float>(lr * weight_decay),
                   .max_norm = static_cast<float>(max_norm > 0 ? max_norm : 0.0)};
}

// The factor that brings a gradient of squared norm `norm_squared` down to `max_norm`:
// min(1, max_norm / ‖g‖), or 1 for max_norm ≤ 0.
FEDMOE_HOST_DEVICE inline float ClipFactor(float max_norm, double norm_squared) {
  if (!(max_norm > 0.0F)) return 1.0F;
  const double norm = sqrt(norm_squared);
  return norm > max_norm ? static_cast<float>(max_norm / norm) : 1.0F;
}

// One value's update from its (already clipped) gradient g: m and v move, and
// θ ← θ − decay·θ − step_size·m / (√v / root_correction2 + ε). `decay` is step.decay for a
// range with decay, 0 otherwise. Returns the new θ.
FEDMOE_HOST_DEVICE inline float AdamWValue(float theta, float& m, float& v, float g,
                                           const AdamWStep& step, float decay) {
  m = step.beta1 * m + (1.0F - step.beta1) * g;
  v = step.beta2 * v + (1.0F - step.beta2) * g * g;
  return theta -
         (decay * theta + step.step_size * m / (sqrtf(v) / step.root_correction2 + step.epsilon));
}

}  // namespace fedmoe::kernels

#endif  // FEDMOE_KERNELS_SHARED_ADAMW_H_
