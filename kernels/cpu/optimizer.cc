#include "kernels/cpu/optimizer.h"

#include <cstdint>

namespace fedmoe::kernels::cpu {

void AdamWUpdate(float* parameters, const float* gradients, float* first_moment,
                 float* second_moment, std::span<const ParameterRange> ranges,
                 const AdamWStep& step, double norm_squared) {
  const float scale = ClipFactor(step.max_norm, norm_squared);
  for (const ParameterRange& range : ranges) {
    const float decay = range.decay ? step.decay : 0.0F;
    float* theta = parameters + range.offset;
    const float* g = gradients + range.offset;
    float* m = first_moment + range.offset;
    float* v = second_moment + range.offset;
    // A vector loop: this file is built with -fno-math-errno (kernels/CMakeLists.txt), without
    // which sqrtf must keep errno and the loop stays scalar and compute-bound.
#pragma omp parallel for simd schedule(static) if (range.size > 65536)
    for (int64_t i = 0; i < range.size; ++i) {
      theta[i] = AdamWValue(theta[i], m[i], v[i], scale * g[i], step, decay);
    }
  }
}

}  // namespace fedmoe::kernels::cpu
