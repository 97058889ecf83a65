// The simulator's runtime API is the same header as its runtime (see cuda_runtime.h).
#ifndef FEDMOE_KERNELS_CUDA_SIM_CUDA_RUNTIME_API_H_
#define FEDMOE_KERNELS_CUDA_SIM_CUDA_RUNTIME_API_H_
#include "cuda_runtime.h"
#endif  // FEDMOE_KERNELS_CUDA_SIM_CUDA_RUNTIME_API_H_
