// Where the compute kernels run. The CPU backend (Eigen) is always built; the CUDA backend is
// built when nvcc is found (FEDMOE_CUDA) and used only when a GPU answers at run time.
#ifndef FEDMOE_KERNELS_DEVICE_H_
#define FEDMOE_KERNELS_DEVICE_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace fedmoe::kernels {

enum class Device { kCpu, kCuda };

std::string_view DeviceName(Device device);

// Whether this binary contains the CUDA kernels.
bool CudaCompiledIn();

// FailedPrecondition for CUDA asked of a build without the CUDA kernels, saying why and what to
// use instead.
absl::Status NoCudaKernels();

// The number of usable CUDA devices. A binary built without CUDA, a machine without a driver,
// and a driver that reports an error are all "no GPU": the error comes back as a status that
// says which, so callers can log why the GPU is not used.
absl::StatusOr<int> CudaDeviceCount();

// The name of CUDA device `index` ("NVIDIA H200"), for reports.
absl::StatusOr<std::string> CudaDeviceName(int index);

// Parses "cpu", "cuda" or "auto" (the --device flag). "auto" picks CUDA when a GPU is present
// and the CPU otherwise; "cuda" without a GPU is an error that says why there is none.
absl::StatusOr<Device> ResolveDevice(std::string_view requested);

}  // namespace fedmoe::kernels

#endif  // FEDMOE_KERNELS_DEVICE_H_
