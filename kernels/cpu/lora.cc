#include "kernels/cpu/lora.h"

#include "kernels/cpu/eigen_maps.h"

namespace fedmoe::kernels::cpu {

using internal::View;

void LoraForward(const float* in, const float* a, const float* b, float* low, float* out,
                 const LoraShape& shape) {
  auto kept = View(low, shape.rows, shape.rank);
  kept.noalias() = shape.scale * (View(in, shape.rows, shape.in_features) *
                                  View(a, shape.rank, shape.in_features).transpose());
  View(out, shape.rows, shape.out_features).noalias() +=
      kept * View(b, shape.out_features, shape.rank).transpose();
}

void LoraBackward(const float* in, const float* a, const float* b, const float* low,
                  const float* d_out, float* d_in, float* d_a, float* d_b, float* d_low,
                  const LoraShape& shape) {
  const auto gradient = View(d_out, shape.rows, shape.out_features);
  if (d_b != nullptr) {
    View(d_b, shape.out_features, shape.rank).noalias() +=
        gradient.transpose() * View(low, shape.rows, shape.rank);
  }
  auto low_gradient = View(d_low, shape.rows, shape.rank);
  low_gradient.noalias() = shape.scale * (gradient * View(b, shape.out_features, shape.rank));
  if (d_a != nullptr) {
    View(d_a, shape.rank, shape.in_features).noalias() +=
        low_gradient.transpose() * View(in, shape.rows, shape.in_features);
  }
  if (d_in != nullptr) {
    View(d_in, shape.rows, shape.in_features).noalias() +=
        low_gradient * View(a, shape.rank, shape.in_features);
  }
}

}  // namespace fedmoe::kernels::cpu
