// What the CUDA kernel tests share: whether a device (or the simulator) is there, and copies
// to and from it that fail the test on error.
//
// Each CUDA test source is compiled once and linked twice: into cuda_sim_test against the CPU
// simulator, which always runs, and, where nvcc is found, into cuda_kernels_test against the
// GPU, which skips itself without one. So the sources ask which at run time
// (kernels::cuda::IsSimulator), not with the simulator's macro.
#ifndef FEDMOE_TESTS_KERNELS_CUDA_TEST_SUPPORT_H_
#define FEDMOE_TESTS_KERNELS_CUDA_TEST_SUPPORT_H_

#include <cmath>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/cuda/device_memory.h"
#include "kernels/device.h"

namespace fedmoe::testing {

// OK when the kernels can run here; else why not (the GPU build on a machine without a GPU).
inline absl::Status CudaAvailability() {
  if (kernels::cuda::IsSimulator()) return absl::OkStatus();
  const absl::StatusOr<int> count = kernels::CudaDeviceCount();
  if (!count.ok()) return count.status();
  if (*count == 0) return absl::UnavailableError("no CUDA device");
  return absl::OkStatus();
}

#define FEDMOE_REQUIRE_CUDA()                                                                    \
  do {                                                                                           \
    if (const absl::Status available = ::fedmoe::testing::CudaAvailability(); !available.ok()) { \
      GTEST_SKIP() << available;                                                                 \
    }                                                                                            \
  } while (false)

template <typename T>
kernels::cuda::DeviceArray<T> Upload(const std::vector<T>& host) {
  absl::StatusOr<kernels::cuda::DeviceArray<T>> device =
      kernels::cuda::DeviceArray<T>::Allocate(host.size());
  EXPECT_TRUE(device.ok()) << device.status();
  EXPECT_TRUE(device->CopyFrom(host).ok());
  return std::move(*device);
}

template <typename T>
std::vector<T> Download(const kernels::cuda::DeviceArray<T>& device) {
  std::vector<T> host(device.size());
  EXPECT_TRUE(kernels::cuda::Synchronize().ok());
  EXPECT_TRUE(device.CopyTo(host).ok());
  return host;
}

// A copy ordered after the default stream's work only, as a kernel's consumer would be: what
// other streams did shows only if it was joined into the default stream.
template <typename T>
std::vector<T> DownloadInStreamOrder(const kernels::cuda::DeviceArray<T>& device) {
  std::vector<T> host(device.size());
  EXPECT_TRUE(device.CopyTo(host).ok());
  return host;
}

// Every |actual - expected| ≤ absolute + relative·|expected|, reporting the first miss.
inline void ExpectAllNear(const std::vector<float>& actual, const std::vector<float>& expected,
                          double absolute, double relative, const std::string& name) {
  ASSERT_EQ(actual.size(), expected.size()) << name;
  for (size_t i = 0; i < actual.size(); ++i) {
    ASSERT_NEAR(actual[i], expected[i], absolute + relative * std::abs(expected[i]))
        << name << " at " << i;
  }
}

}  // namespace fedmoe::testing

#endif  // FEDMOE_TESTS_KERNELS_CUDA_TEST_SUPPORT_H_
