#include "kernels/device.h"

#include <gtest/gtest.h>

namespace fedmoe::kernels {
namespace {

TEST(DeviceTest, CpuIsAlwaysAvailable) {
  auto device = ResolveDevice("cpu");
  ASSERT_TRUE(device.ok()) << device.status();
  EXPECT_EQ(*device, Device::kCpu);
  EXPECT_EQ(DeviceName(*device), "cpu");
}

TEST(DeviceTest, UnknownDeviceNameIsRefused) {
  auto device = ResolveDevice("tpu");
  EXPECT_EQ(device.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(device.status().message().find("tpu"), std::string::npos);
}

TEST(DeviceTest, AutoAndCudaFollowWhatTheDriverReports) {
  const absl::StatusOr<int> count = CudaDeviceCount();
  const bool have_gpu = count.ok() && *count > 0;
  if (!CudaCompiledIn()) {
    EXPECT_FALSE(count.ok());
  }

  auto automatic = ResolveDevice("auto");
  ASSERT_TRUE(automatic.ok()) << automatic.status();
  EXPECT_EQ(*automatic, have_gpu ? Device::kCuda : Device::kCpu);

  auto cuda = ResolveDevice("cuda");
  if (have_gpu) {
    ASSERT_TRUE(cuda.ok()) << cuda.status();
    EXPECT_EQ(*cuda, Device::kCuda);
  } else {
    EXPECT_EQ(cuda.status().code(), absl::StatusCode::kUnavailable);
    EXPECT_FALSE(cuda.status().message().empty());
  }
}

}  // namespace
}  // namespace fedmoe::kernels
