// Where and how widely the model computes: the device (CPU or CUDA) and the CPU threads, for the
// programs that train and evaluate it. The model's own names for the kernels' settings, so that
// the parts above model/ (the client) never reach into kernels/ (DESIGN §1).
#ifndef FEDMOE_MODEL_COMPUTE_H_
#define FEDMOE_MODEL_COMPUTE_H_

#include "kernels/device.h"

namespace fedmoe::model {

using kernels::Device;
using kernels::DeviceName;
using kernels::ResolveDevice;

// The CPU threads the kernels use; below 1, every core the process may run on. One thread fixes
// every summation order, for bit-reproducible runs.
void SetCpuThreads(int threads);
int CpuThreads();

// Keeps freed large blocks for reuse instead of returning them to the system: the kernels'
// per-product buffers would otherwise pay page faults every step. Process-wide, once at start.
void RetainFreedMemory();

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_COMPUTE_H_
