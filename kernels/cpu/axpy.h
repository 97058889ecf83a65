// y ← α·x + y on the host. The optimizer's parameter updates and the server's merge are built
// from this primitive; its CUDA twin is kernels/cuda/axpy.h.
#ifndef FEDMOE_KERNELS_CPU_AXPY_H_
#define FEDMOE_KERNELS_CPU_AXPY_H_

#include <span>

#include "absl/status/status.h"

namespace fedmoe::kernels::cpu {

// Returns InvalidArgument, and leaves y untouched, when x and y differ in length.
absl::Status Axpy(float alpha, std::span<const float> x, std::span<float> y);

}  // namespace fedmoe::kernels::cpu

#endif  // FEDMOE_KERNELS_CPU_AXPY_H_
