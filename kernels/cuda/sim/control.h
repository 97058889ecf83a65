// What tests may change about the CUDA simulator (kernels/cuda/sim), from code that includes no
// CUDA header. Only binaries linked with fedmoe_kernels_cuda_sim define these.
#ifndef FEDMOE_KERNELS_CUDA_SIM_CONTROL_H_
#define FEDMOE_KERNELS_CUDA_SIM_CONTROL_H_

#include <cstddef>

namespace fedmoe::cuda_sim {

// Gives every simulated device `bytes` of memory (0, the default: as much as the host has), so
// that a test can run a device out of memory.
void SetDeviceMemoryCapacity(size_t bytes);

}  // namespace fedmoe::cuda_sim

#endif  // FEDMOE_KERNELS_CUDA_SIM_CONTROL_H_
