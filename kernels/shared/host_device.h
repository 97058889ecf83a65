// Marks the math that the CPU kernels and the CUDA kernels share: compiled for both the host and
// the device under nvcc, and as plain C++ everywhere else (the CPU build and the CUDA simulator).
#ifndef FEDMOE_KERNELS_SHARED_HOST_DEVICE_H_
#define FEDMOE_KERNELS_SHARED_HOST_DEVICE_H_

#if defined(__CUDACC__)
#define FEDMOE_HOST_DEVICE __host__ __device__
#else
#define FEDMOE_HOST_DEVICE
#endif

#endif  // FEDMOE_KERNELS_SHARED_HOST_DEVICE_H_
