// AdamW over the trainable ranges of one parameter buffer, with global-norm clipping: the twin
// of cuda::AdamWUpdate, taking the same step (kernels/shared/adamw.h) and updating each value
// with the same AdamWValue. The gradient's squared norm is a host value here and a device
// value there, wherever each backend computed it.
#ifndef FEDMOE_KERNELS_CPU_OPTIMIZER_H_
#define FEDMOE_KERNELS_CPU_OPTIMIZER_H_

#include <span>

#include "kernels/shared/adamw.h"

namespace fedmoe::kernels::cpu {

// θ, m and v of every value in `ranges`, from the gradient scaled by
// ClipFactor(step.max_norm, norm_squared). Values outside the ranges are not touched.
void AdamWUpdate(float* parameters, const float* gradients, float* first_moment,
                 float* second_moment, std::span<const ParameterRange> ranges,
                 const AdamWStep& step, double norm_squared);

}  // namespace fedmoe::kernels::cpu

#endif  // FEDMOE_KERNELS_CPU_OPTIMIZER_H_
