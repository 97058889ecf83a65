#include "kernels/device.h"

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "config/enum_names.h"

#ifdef FEDMOE_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace fedmoe::kernels {

constexpr config::EnumName<Device> kDeviceNames[] = {{Device::kCpu, "cpu"},
                                                     {Device::kCuda, "cuda"}};

std::string_view DeviceName(Device device) {
  return config::NameOf(kDeviceNames, device, "unknown");
}

bool CudaCompiledIn() {
#ifdef FEDMOE_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

absl::Status NoCudaKernels() {
  return absl::FailedPreconditionError(
      "this build has no CUDA kernels (nvcc was not found when it was built); use --device cpu");
}

absl::StatusOr<int> CudaDeviceCount() {
#ifdef FEDMOE_HAVE_CUDA
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) {
    // Clears the sticky error so that a later probe starts clean.
    cudaGetLastError();
    return absl::UnavailableError(
        absl::StrCat("no usable CUDA device: ", cudaGetErrorString(error)));
  }
  return count;
#else
  return absl::UnavailableError("this build has no CUDA kernels (configured with FEDMOE_CUDA)");
#endif
}

absl::StatusOr<std::string> CudaDeviceName(int index) {
#ifdef FEDMOE_HAVE_CUDA
  cudaDeviceProp properties{};
  const cudaError_t error = cudaGetDeviceProperties(&properties, index);
  if (error != cudaSuccess) {
    cudaGetLastError();
    return absl::UnavailableError(
        absl::StrCat("no CUDA device ", index, ": ", cudaGetErrorString(error)));
  }
  return std::string(properties.name);
#else
  return absl::UnavailableError(
      absl::StrCat("no CUDA device ", index, ": this build has no CUDA kernels"));
#endif
}

absl::StatusOr<Device> ResolveDevice(std::string_view requested) {
  const std::optional<Device> named = config::ValueOf(kDeviceNames, requested);
  if (named == Device::kCpu) return Device::kCpu;
  if (!named.has_value() && requested != "auto") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown device '", std::string(requested), "': expected cpu, cuda or auto"));
  }
  const absl::StatusOr<int> count = CudaDeviceCount();
  const bool have_gpu = count.ok() && *count > 0;
  if (have_gpu) return Device::kCuda;
  if (requested == "auto") return Device::kCpu;
  if (!count.ok()) return count.status();
  return absl::UnavailableError("no usable CUDA device: the driver reports 0 devices");
}

}  // namespace fedmoe::kernels
