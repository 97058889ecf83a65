// The CPU axpy against a plain double-precision loop, and its CUDA twin against the CPU.
#include "kernels/cpu/axpy.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "kernels/device.h"

#ifdef FEDMOE_HAVE_CUDA
#include "kernels/cuda/axpy.h"
#endif

namespace fedmoe::kernels {
namespace {

std::vector<float> RandomVector(size_t n, uint64_t seed) {
  std::mt19937_64 random(seed);
  std::uniform_real_distribution<float> value(-4.0F, 4.0F);
  std::vector<float> out(n);
  for (float& v : out) v = value(random);
  return out;
}

// Sizes that cover empty, scalar, non-multiples of every vector width and a large vector.
const size_t kSizes[] = {0, 1, 7, 16, 33, 1000, 1 << 20};

TEST(CpuAxpyTest, MatchesAPlainDoubleLoop) {
  for (size_t n : kSizes) {
    const float alpha = -1.75F;
    const std::vector<float> x = RandomVector(n, 1);
    std::vector<float> y = RandomVector(n, 2);
    std::vector<double> expected(n);
    for (size_t i = 0; i < n; ++i) expected[i] = double{alpha} * x[i] + y[i];

    ASSERT_TRUE(cpu::Axpy(alpha, x, y).ok());
    for (size_t i = 0; i < n; ++i) {
      // One product and one sum in float: within 2 ulp of the exact result's magnitude.
      ASSERT_NEAR(y[i], expected[i], 2.5e-7 * (std::abs(double{alpha} * x[i]) + std::abs(y[i])))
          << "n=" << n << " i=" << i;
    }
  }
}

TEST(CpuAxpyTest, LengthMismatchIsAnErrorAndLeavesYUntouched) {
  const std::vector<float> x(3, 1.0F);
  std::vector<float> y = {1.0F, 2.0F};
  const absl::Status status = cpu::Axpy(2.0F, x, y);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("3"), std::string::npos);
  EXPECT_EQ(y, (std::vector<float>{1.0F, 2.0F}));
}

#ifdef FEDMOE_HAVE_CUDA

bool HaveGpu() {
  const absl::StatusOr<int> count = CudaDeviceCount();
  return count.ok() && *count > 0;
}

TEST(CudaAxpyTest, MatchesTheCpuKernel) {
  if (!HaveGpu()) GTEST_SKIP() << CudaDeviceCount().status();
  for (size_t n : kSizes) {
    const float alpha = 0.3F;
    const std::vector<float> x = RandomVector(n, 3);
    const std::vector<float> y0 = RandomVector(n, 4);

    std::vector<float> cpu_y = y0;
    ASSERT_TRUE(cpu::Axpy(alpha, x, cpu_y).ok());

    auto device_x = cuda::DeviceArray<float>::Allocate(n);
    auto device_y = cuda::DeviceArray<float>::Allocate(n);
    ASSERT_TRUE(device_x.ok() && device_y.ok());
    ASSERT_TRUE(device_x->CopyFrom(x).ok());
    ASSERT_TRUE(device_y->CopyFrom(y0).ok());
    ASSERT_TRUE(cuda::Axpy(alpha, *device_x, *device_y).ok());
    ASSERT_TRUE(cuda::Synchronize().ok());
    std::vector<float> gpu_y(n);
    ASSERT_TRUE(device_y->CopyTo(gpu_y).ok());

    for (size_t i = 0; i < n; ++i) {
      // The GPU fuses multiply and add; the CPU may not: they differ by at most one rounding.
      ASSERT_NEAR(gpu_y[i], cpu_y[i], 2.5e-7 * (std::abs(alpha * x[i]) + std::abs(y0[i])))
          << "n=" << n << " i=" << i;
    }
  }
}

TEST(CudaAxpyTest, LengthMismatchIsAnError) {
  if (!HaveGpu()) GTEST_SKIP() << CudaDeviceCount().status();
  auto x = cuda::DeviceArray<float>::Allocate(3);
  auto y = cuda::DeviceArray<float>::Allocate(2);
  ASSERT_TRUE(x.ok() && y.ok());
  EXPECT_EQ(cuda::Axpy(1.0F, *x, *y).code(), absl::StatusCode::kInvalidArgument);
}

#endif  // FEDMOE_HAVE_CUDA

}  // namespace
}  // namespace fedmoe::kernels
