// y ← α·x + y on the GPU: the CUDA twin of kernels/cpu/axpy.h.
#ifndef FEDMOE_KERNELS_CUDA_AXPY_H_
#define FEDMOE_KERNELS_CUDA_AXPY_H_

#include "absl/status/status.h"
#include "kernels/cuda/device_memory.h"

namespace fedmoe::kernels::cuda {

// Queues the kernel on the default stream; a launch error comes back at once, an execution
// error at the next synchronizing call. InvalidArgument, with nothing queued, when x and y
// differ in length.
absl::Status Axpy(float alpha, const DeviceArray<float>& x, DeviceArray<float>& y);

}  // namespace fedmoe::kernels::cuda

#endif  // FEDMOE_KERNELS_CUDA_AXPY_H_
