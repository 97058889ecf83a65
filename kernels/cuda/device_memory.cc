#include "kernels/cuda/device_memory.h"

#include <cuda_runtime_api.h>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/profile.h"

namespace fedmoe::kernels::cuda {
namespace {

absl::Status FromCuda(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(error)));
}

}  // namespace

absl::StatusOr<void*> AllocateDeviceBytes(size_t bytes) {
  void* pointer = nullptr;
  if (bytes == 0) return pointer;
  const cudaError_t error = cudaMalloc(&pointer, bytes);
  if (error == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    return absl::ResourceExhaustedError(absl::StrCat("cudaMalloc of ", bytes, " bytes failed"));
  }
  if (absl::Status status = FromCuda(error, "cudaMalloc"); !status.ok()) return status;
  return pointer;
}

void FreeDeviceBytes(void* device_pointer) {
  if (device_pointer != nullptr) cudaFree(device_pointer);
}

absl::Status CopyHostToDevice(void* device_destination, const void* host_source, size_t bytes) {
  const ProfiledScope profiled("copy to device");
  return FromCuda(cudaMemcpy(device_destination, host_source, bytes, cudaMemcpyHostToDevice),
                  "copy to device");
}

absl::Status QueueCopyHostToDevice(void* device_destination, const void* host_source,
                                   size_t bytes) {
  const ProfiledScope profiled("queued copy to device");
  return FromCuda(
      cudaMemcpyAsync(device_destination, host_source, bytes, cudaMemcpyHostToDevice, nullptr),
      "queued copy to device");
}

absl::Status CopyDeviceToHost(void* host_destination, const void* device_source, size_t bytes) {
  const ProfiledScope profiled("copy to host");
  return FromCuda(cudaMemcpy(host_destination, device_source, bytes, cudaMemcpyDeviceToHost),
                  "copy to host");
}

absl::Status CopyDeviceToDevice(void* device_destination, const void* device_source, size_t bytes) {
  const ProfiledScope profiled("copy on device");
  return FromCuda(cudaMemcpy(device_destination, device_source, bytes, cudaMemcpyDeviceToDevice),
                  "copy on device");
}

absl::Status ZeroDeviceBytes(void* device_destination, size_t bytes) {
  const ProfiledScope profiled("zeroing device memory");
  return FromCuda(cudaMemset(device_destination, 0, bytes), "zeroing device memory");
}

absl::Status SetDevice(int device) {
  return FromCuda(cudaSetDevice(device), "selecting a CUDA device");
}

absl::Status Synchronize() { return FromCuda(cudaDeviceSynchronize(), "device synchronize"); }

bool IsSimulator() {
#ifdef FEDMOE_CUDA_SIM
  return true;
#else
  return false;
#endif
}

}  // namespace fedmoe::kernels::cuda
