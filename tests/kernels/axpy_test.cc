// The CPU axpy against a plain double-precision loop (its CUDA twin: cuda_kernels_test.cc).
#include "kernels/cpu/axpy.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

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

}  // namespace
}  // namespace fedmoe::kernels
