// The CUDA simulator's own promises, where the kernel tests would not notice them broken: warp
// matrix products against a double reference, CUDA's rules for their operands enforced, a
// store not visible to other lanes before the warp synchronises, dynamic shared memory (NaN at
// each block's start, refused past the hardware's limit), and work on a created stream held back
// until something waits for it.
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/launch.h"
#include "tests/kernels/cuda_test_support.h"
#include "tests/kernels/gradient_check.h"

namespace fedmoe::kernels {
namespace {

namespace wmma = nvcuda::wmma;
using cuda::DynamicSharedMemory;
using cuda::Launch;
using testing::Download;
using testing::DownloadInStreamOrder;
using testing::RandomVector;
using testing::Upload;

// Elements of a 16 × 8 operand and of a 16 × 16 product.
constexpr size_t kOperandSize = size_t{16} * 8;
constexpr size_t kProductSize = size_t{16} * 16;

using Accumulator = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;
using OperandA = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
using OperandB = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major>;

// c [16, 16] = a [16, 8] · bᵀ, b given as [16, 8] row-major (so column-major as the k × n
// operand), rounded to TF32 first.
void ProductKernel(const float* a, const float* b, float* c) {
  OperandA a_part;
  OperandB b_part;
  Accumulator product;
  wmma::fill_fragment(product, 0.0F);
  wmma::load_matrix_sync(a_part, a, 8);
  wmma::load_matrix_sync(b_part, b, 8);
  for (float& x : a_part.x) x = wmma::__float_to_tf32(x);
  for (float& x : b_part.x) x = wmma::__float_to_tf32(x);
  wmma::mma_sync(product, a_part, b_part, product);
  wmma::store_matrix_sync(c, product, 16, wmma::mem_row_major);
}

float RoundToTf32(float value) {
  uint32_t bits = 0;
  std::memcpy(&bits, &value, sizeof(bits));
  bits = (bits + 0x1000U) & 0xFFFFE000U;  // nearest, ties away from zero
  std::memcpy(&value, &bits, sizeof(bits));
  return value;
}

TEST(CudaSimulatorTest, WarpMatrixProductIsTheProductOfTf32Operands) {
  const std::vector<float> a = RandomVector(kOperandSize, 1);
  const std::vector<float> b = RandomVector(kOperandSize, 2);
  const auto device_a = Upload(a);
  const auto device_b = Upload(b);
  auto device_c = Upload(std::vector<float>(kProductSize, NAN));
  ASSERT_TRUE(Launch("product", ProductKernel, {dim3(1), dim3(32)}, device_a.data(),
                     device_b.data(), device_c.data())
                  .ok());
  const std::vector<float> c = Download(device_c);
  double largest_rounding = 0;
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 16; ++j) {
      double exact = 0;
      double rounded = 0;
      for (int k = 0; k < 8; ++k) {
        exact += double{a[i * 8 + k]} * b[j * 8 + k];
        rounded += double{RoundToTf32(a[i * 8 + k])} * RoundToTf32(b[j * 8 + k]);
      }
      EXPECT_NEAR(c[i * 16 + j], rounded, 1e-6 * (1 + std::abs(rounded))) << i << ", " << j;
      largest_rounding = std::max(largest_rounding, std::abs(exact - rounded));
    }
  }
  // Not fp32 in disguise: TF32 rounding shows.
  EXPECT_GT(largest_rounding, 1e-5);
}

void OffsetProductKernel(const float* a, const float* b, float* c) {
  ProductKernel(a + 1, b, c);  // 4 bytes past a 256-bit boundary
}

TEST(CudaSimulatorDeathTest, MisalignedOperandsAbortAsTheGpuWouldFault) {
  const auto device_a = Upload(std::vector<float>(kOperandSize + 1, 1.0F));
  const auto device_b = Upload(std::vector<float>(kOperandSize, 1.0F));
  auto device_c = Upload(std::vector<float>(kProductSize));
  EXPECT_DEATH(
      {
        (void)Launch("misaligned", OffsetProductKernel, {dim3(1), dim3(32)}, device_a.data(),
                     device_b.data(), device_c.data());
      },
      "not 256-bit aligned");
}

// Lane 0 reads the whole stored tile: after __syncwarp it sees every lane's elements; without
// it, some are still the NaN the tile started as, as other lanes have not written theirs.
template <bool kSynchronise>
void StoreThenReadKernel(float* seen_by_lane_zero) {
  auto* tile = DynamicSharedMemory<float>();
  Accumulator ones;
  wmma::fill_fragment(ones, 1.0F);
  wmma::store_matrix_sync(tile, ones, 16, wmma::mem_row_major);
  if constexpr (kSynchronise) __syncwarp();
  if (threadIdx.x == 0) {
    for (size_t i = 0; i < kProductSize; ++i) seen_by_lane_zero[i] = tile[i];
  }
}

TEST(CudaSimulatorTest, AStoreIsSeenByOtherLanesOnlyAfterTheWarpSynchronises) {
  const auto count_ones = [](const std::vector<float>& values) {
    size_t ones = 0;
    for (float value : values) ones += value == 1.0F ? 1 : 0;
    return ones;
  };
  auto seen = Upload(std::vector<float>(kProductSize, 0.0F));
  ASSERT_TRUE(Launch("synchronised", StoreThenReadKernel<true>,
                     {dim3(1), dim3(32), kProductSize * sizeof(float)}, seen.data())
                  .ok());
  EXPECT_EQ(count_ones(Download(seen)), kProductSize);
  ASSERT_TRUE(Launch("unsynchronised", StoreThenReadKernel<false>,
                     {dim3(1), dim3(32), kProductSize * sizeof(float)}, seen.data())
                  .ok());
  const std::vector<float> unsynchronised = Download(seen);
  EXPECT_LT(count_ones(unsynchronised), kProductSize);
  EXPECT_TRUE(std::isnan(unsynchronised[kProductSize - 1]) || std::isnan(unsynchronised[0]));
}

void TouchSharedKernel(float* first) {
  if (threadIdx.x == 0) *first = DynamicSharedMemory<float>()[0];
}

TEST(CudaSimulatorTest, DynamicSharedMemoryStartsAsNanAndHasTheHardwareLimit) {
  auto first = Upload(std::vector<float>(1, 0.0F));
  ASSERT_TRUE(
      Launch("touch", TouchSharedKernel, {dim3(2), dim3(32), size_t{200} << 10}, first.data())
          .ok());
  EXPECT_TRUE(std::isnan(Download(first)[0]));
  const absl::Status refused =
      Launch("too much", TouchSharedKernel, {dim3(1), dim3(32), size_t{228} << 10}, first.data());
  EXPECT_EQ(refused.code(), absl::StatusCode::kInternal);
  EXPECT_NE(refused.message().find("too much"), std::string::npos) << refused;
}

TEST(CudaSimulatorTest, WorkOnAStreamIsSeenOnlyOnceSomethingWaitsForIt) {
  const std::vector<float> before(64, 1.0F);
  const std::vector<float> after(64, 2.0F);
  auto device = Upload(before);
  cudaStream_t stream = nullptr;
  cudaEvent_t done = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), cudaSuccess);

  ASSERT_EQ(cudaMemcpyAsync(device.data(), after.data(), after.size() * sizeof(float),
                            cudaMemcpyHostToDevice, stream),
            cudaSuccess);
  ASSERT_EQ(cudaEventRecord(done, stream), cudaSuccess);
  // A synchronous copy does not wait for a non-blocking stream: a consumer that forgot the
  // join reads the old values.
  EXPECT_EQ(DownloadInStreamOrder(device), before);
  ASSERT_EQ(cudaStreamWaitEvent(nullptr, done, 0), cudaSuccess);
  EXPECT_EQ(DownloadInStreamOrder(device), after);

  // The device's synchronisation runs what is still queued, and so does the stream's end.
  ASSERT_EQ(cudaMemcpyAsync(device.data(), before.data(), before.size() * sizeof(float),
                            cudaMemcpyHostToDevice, stream),
            cudaSuccess);
  EXPECT_EQ(DownloadInStreamOrder(device), after);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(DownloadInStreamOrder(device), before);
  ASSERT_EQ(cudaMemcpyAsync(device.data(), after.data(), after.size() * sizeof(float),
                            cudaMemcpyHostToDevice, stream),
            cudaSuccess);
  ASSERT_EQ(cudaStreamDestroy(stream), cudaSuccess);
  EXPECT_EQ(DownloadInStreamOrder(device), after);
  ASSERT_EQ(cudaEventDestroy(done), cudaSuccess);
}

}  // namespace
}  // namespace fedmoe::kernels
