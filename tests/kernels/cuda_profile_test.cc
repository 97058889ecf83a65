// The kernel profile: what it times, under which names, and that collecting forgets.
#include <algorithm>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/dense.h"
#include "kernels/cuda/profile.h"
#include "tests/kernels/cuda_test_support.h"
#include "tests/kernels/gradient_check.h"

namespace fedmoe::kernels {
namespace {

using testing::RandomVector;
using testing::Upload;

const cuda::KernelTime* Find(const std::vector<cuda::KernelTime>& times, const std::string& name) {
  const auto found = std::find_if(times.begin(), times.end(),
                                  [&](const cuda::KernelTime& time) { return time.name == name; });
  return found == times.end() ? nullptr : &*found;
}

TEST(CudaProfileTest, TimesEachNamedCallWhileOnAndForgetsWhatItReported) {
  FEDMOE_REQUIRE_CUDA();
  const int64_t n = 1 << 16;
  auto a = Upload(RandomVector(n, 1));
  const auto b = Upload(RandomVector(n, 2));
  auto bf16 = Upload(std::vector<cuda::DeviceBf16>(n));
  ASSERT_TRUE(cuda::CollectKernelProfile().ok());  // whatever an earlier test left

  // Off: nothing is recorded.
  ASSERT_TRUE(cuda::AddInto(a.data(), b.data(), n).ok());
  absl::StatusOr<std::vector<cuda::KernelTime>> times = cuda::CollectKernelProfile();
  ASSERT_TRUE(times.ok()) << times.status();
  EXPECT_TRUE(times->empty());

  cuda::SetKernelProfiling(true);
  ASSERT_TRUE(cuda::AddInto(a.data(), b.data(), n).ok());
  ASSERT_TRUE(cuda::AddInto(a.data(), b.data(), n).ok());
  ASSERT_TRUE(cuda::RoundToBf16(a.data(), bf16.data(), n).ok());
  ASSERT_TRUE(a.Zero().ok());
  cuda::SetKernelProfiling(false);
  ASSERT_TRUE(cuda::AddInto(a.data(), b.data(), n).ok());  // after: not counted

  times = cuda::CollectKernelProfile();
  ASSERT_TRUE(times.ok()) << times.status();
  ASSERT_EQ(times->size(), 3U);
  const cuda::KernelTime* add = Find(*times, "add");
  const cuda::KernelTime* round = Find(*times, "round to bf16");
  const cuda::KernelTime* zero = Find(*times, "zeroing device memory");
  ASSERT_NE(add, nullptr);
  ASSERT_NE(round, nullptr);
  ASSERT_NE(zero, nullptr);
  EXPECT_EQ(add->calls, 2);
  EXPECT_EQ(round->calls, 1);
  EXPECT_EQ(zero->calls, 1);
  for (const cuda::KernelTime& time : *times) EXPECT_GE(time.seconds, 0.0) << time.name;
  EXPECT_TRUE(std::is_sorted(
      times->begin(), times->end(),
      [](const cuda::KernelTime& x, const cuda::KernelTime& y) { return x.seconds > y.seconds; }));

  times = cuda::CollectKernelProfile();
  ASSERT_TRUE(times.ok()) << times.status();
  EXPECT_TRUE(times->empty());
}

}  // namespace
}  // namespace fedmoe::kernels
