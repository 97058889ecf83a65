// The CUDA row-wise kernels (axpy, RMSNorm, RoPE, SwiGLU, embeddings, bf16 rounding) against
// their CPU twins on random inputs, and the column sums and row broadcast against plain loops.
// Tolerances allow for a different order of float additions (a few ulp of the largest term) and
// fused multiply-adds, nothing more.
#include <algorithm>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/axpy.h"
#include "kernels/cpu/bf16.h"
#include "kernels/cpu/dense.h"
#include "kernels/cuda/axpy.h"
#include "kernels/cuda/dense.h"
#include "tests/kernels/cuda_test_support.h"
#include "tests/kernels/gradient_check.h"

namespace fedmoe::kernels {
namespace {

using testing::Download;
using testing::ExpectAllNear;
using testing::RandomVector;
using testing::Upload;

// Odd sizes: no row fills a whole number of warps or blocks.
constexpr int64_t kRows = 37;
constexpr int64_t kWidth = 300;

TEST(CudaDenseTest, AxpyMatchesTheCpuKernel) {
  FEDMOE_REQUIRE_CUDA();
  for (const size_t n : {size_t{0}, size_t{1}, size_t{33}, size_t{100'000}}) {
    const float alpha = 0.3F;
    const std::vector<float> x = RandomVector(n, 3);
    const std::vector<float> y0 = RandomVector(n, 4);
    std::vector<float> cpu_y = y0;
    ASSERT_TRUE(cpu::Axpy(alpha, x, cpu_y).ok());
    const cuda::DeviceArray<float> device_x = Upload(x);
    cuda::DeviceArray<float> device_y = Upload(y0);
    ASSERT_TRUE(cuda::Axpy(alpha, device_x, device_y).ok());
    // The GPU fuses multiply and add; the CPU may not: one rounding apart at most.
    ExpectAllNear(Download(device_y), cpu_y, 1e-7, 2.5e-7, "axpy");
  }
}

TEST(CudaDenseTest, AxpyLengthMismatchIsAnError) {
  FEDMOE_REQUIRE_CUDA();
  cuda::DeviceArray<float> x = Upload(std::vector<float>(3, 1.0F));
  cuda::DeviceArray<float> y = Upload(std::vector<float>(2, 1.0F));
  EXPECT_EQ(cuda::Axpy(1.0F, x, y).code(), absl::StatusCode::kInvalidArgument);
}

TEST(CudaDenseTest, RmsNormForwardMatchesTheCpuKernel) {
  FEDMOE_REQUIRE_CUDA();
  const std::vector<float> in = RandomVector(kRows * kWidth, 1);
  const std::vector<float> weight = RandomVector(kWidth, 2);
  std::vector<float> out(in.size()), rstd(kRows);
  cpu::RmsNormForward(in.data(), weight.data(), out.data(), rstd.data(), kRows, kWidth, 1e-5F);

  const auto device_in = Upload(in);
  const auto device_weight = Upload(weight);
  auto device_out = Upload(std::vector<float>(in.size()));
  auto device_out_bf16 = Upload(std::vector<cuda::DeviceBf16>(in.size()));
  auto device_rstd = Upload(std::vector<float>(kRows));
  ASSERT_TRUE(cuda::RmsNormForward(device_in.data(), device_weight.data(), device_out.data(),
                                   device_out_bf16.data(), device_rstd.data(), kRows, kWidth, 1e-5F)
                  .ok());
  ExpectAllNear(Download(device_rstd), rstd, 0, 1e-5, "rstd");
  const std::vector<float> gpu_out = Download(device_out);
  ExpectAllNear(gpu_out, out, 1e-6, 1e-5, "out");
  // The bf16 copy is the fp32 result rounded.
  std::vector<cpu::Bf16> rounded(gpu_out.size());
  cpu::ToBf16(gpu_out.data(), rounded.data(), static_cast<int64_t>(rounded.size()));
  EXPECT_EQ(Download(device_out_bf16), rounded);
}

TEST(CudaDenseTest, RmsNormBackwardMatchesTheCpuKernel) {
  FEDMOE_REQUIRE_CUDA();
  // Enough rows for several weight-gradient partial sums.
  const int64_t rows = 150;
  const std::vector<float> in = RandomVector(rows * kWidth, 1);
  const std::vector<float> weight = RandomVector(kWidth, 2);
  const std::vector<float> d_out = RandomVector(rows * kWidth, 3);
  std::vector<float> out(in.size()), rstd(rows);
  cpu::RmsNormForward(in.data(), weight.data(), out.data(), rstd.data(), rows, kWidth, 1e-5F);
  // Both kernels add into what is there.
  std::vector<float> d_in(in.size(), 0.5F), d_weight(kWidth, -0.25F);
  const std::vector<float> d_in_start = d_in, d_weight_start = d_weight;
  cpu::RmsNormBackward(in.data(), weight.data(), rstd.data(), d_out.data(), d_in.data(),
                       d_weight.data(), rows, kWidth);

  const auto device_in = Upload(in);
  const auto device_weight = Upload(weight);
  const auto device_rstd = Upload(rstd);
  const auto device_d_out = Upload(d_out);
  auto device_d_in = Upload(d_in_start);
  auto device_d_weight = Upload(d_weight_start);
  auto scratch = Upload(std::vector<float>(cuda::RmsNormBackwardScratch(rows, kWidth)));
  ASSERT_TRUE(cuda::RmsNormBackward(device_in.data(), device_weight.data(), device_rstd.data(),
                                    device_d_out.data(), device_d_in.data(), device_d_weight.data(),
                                    scratch.data(), rows, kWidth)
                  .ok());
  ExpectAllNear(Download(device_d_in), d_in, 1e-5, 1e-4, "d_in");
  ExpectAllNear(Download(device_d_weight), d_weight, 1e-4, 1e-4, "d_weight");

  // Without a weight gradient, no scratch is needed and only d_in moves.
  auto again = Upload(d_in_start);
  ASSERT_TRUE(cuda::RmsNormBackward(device_in.data(), device_weight.data(), device_rstd.data(),
                                    device_d_out.data(), again.data(), nullptr, nullptr, rows,
                                    kWidth)
                  .ok());
  ExpectAllNear(Download(again), d_in, 1e-5, 1e-4, "d_in without d_weight");
}

TEST(CudaDenseTest, RopeForwardAndBackwardMatchTheCpuKernels) {
  FEDMOE_REQUIRE_CUDA();
  const int64_t batch = 3, seq_len = 11, heads = 4, head_dim = 16;
  const cpu::RopeTable table(seq_len, head_dim, 10000.0);
  std::vector<float> cos_table, sin_table;
  for (int64_t p = 0; p < seq_len; ++p) {
    cos_table.insert(cos_table.end(), table.cos(p), table.cos(p) + head_dim / 2);
    sin_table.insert(sin_table.end(), table.sin(p), table.sin(p) + head_dim / 2);
  }
  const auto device_cos = Upload(cos_table);
  const auto device_sin = Upload(sin_table);
  const std::vector<float> x = RandomVector(batch * seq_len * heads * head_dim, 5);
  for (const float direction : {1.0F, -1.0F}) {
    std::vector<float> expected = x;
    if (direction > 0) {
      cpu::RopeForward(expected.data(), batch, seq_len, heads, table);
    } else {
      cpu::RopeBackward(expected.data(), batch, seq_len, heads, table);
    }
    auto device_x = Upload(x);
    const cuda::DeviceRopeTable device_table{
        .cos = device_cos.data(), .sin = device_sin.data(), .head_dim = head_dim};
    ASSERT_TRUE((direction > 0
                     ? cuda::RopeForward(device_x.data(), batch, seq_len, heads, device_table)
                     : cuda::RopeBackward(device_x.data(), batch, seq_len, heads, device_table))
                    .ok());
    ExpectAllNear(Download(device_x), expected, 1e-6, 1e-6, "rope");
  }
}

TEST(CudaDenseTest, SwiGluForwardAndBackwardMatchTheCpuKernels) {
  FEDMOE_REQUIRE_CUDA();
  const int64_t n = 5000;
  const std::vector<float> gate = RandomVector(n, 1, 4.0F);
  const std::vector<float> up = RandomVector(n, 2);
  const std::vector<float> d_act = RandomVector(n, 3);
  std::vector<float> act(n), d_gate(n), d_up(n);
  cpu::SwiGluForward(gate.data(), up.data(), act.data(), n);
  cpu::SwiGluBackward(gate.data(), up.data(), d_act.data(), d_gate.data(), d_up.data(), n);

  const auto device_gate = Upload(gate);
  const auto device_up = Upload(up);
  const auto device_d_act = Upload(d_act);
  auto device_act = Upload(std::vector<float>(n));
  auto device_act_bf16 = Upload(std::vector<cuda::DeviceBf16>(n));
  ASSERT_TRUE(cuda::SwiGluForward(device_gate.data(), device_up.data(), device_act.data(),
                                  device_act_bf16.data(), n)
                  .ok());
  const std::vector<float> gpu_act = Download(device_act);
  ExpectAllNear(gpu_act, act, 1e-6, 1e-5, "act");
  std::vector<cpu::Bf16> rounded(n);
  cpu::ToBf16(gpu_act.data(), rounded.data(), n);
  EXPECT_EQ(Download(device_act_bf16), rounded);

  auto device_d_gate = Upload(std::vector<float>(n));
  auto device_d_up = Upload(std::vector<float>(n));
  auto device_d_gate_bf16 = Upload(std::vector<cuda::DeviceBf16>(n));
  ASSERT_TRUE(cuda::SwiGluBackward(device_gate.data(), device_up.data(), device_d_act.data(),
                                   device_d_gate.data(), device_d_gate_bf16.data(),
                                   device_d_up.data(), nullptr, n)
                  .ok());
  const std::vector<float> gpu_d_gate = Download(device_d_gate);
  ExpectAllNear(gpu_d_gate, d_gate, 1e-6, 1e-5, "d_gate");
  ExpectAllNear(Download(device_d_up), d_up, 1e-6, 1e-5, "d_up");
  cpu::ToBf16(gpu_d_gate.data(), rounded.data(), n);
  EXPECT_EQ(Download(device_d_gate_bf16), rounded);
}

TEST(CudaDenseTest, EmbeddingLookupAndItsGradient) {
  FEDMOE_REQUIRE_CUDA();
  const int64_t vocab = 9, width = 70;
  const std::vector<int32_t> tokens = {3, 0, 8, 3, 3, 5};
  const auto rows = static_cast<int64_t>(tokens.size());
  const std::vector<float> table = RandomVector(vocab * width, 1);
  const std::vector<float> d_out = RandomVector(rows * width, 2);
  const auto device_tokens = Upload(tokens);
  const auto device_table = Upload(table);
  auto device_out = Upload(std::vector<float>(rows * width));
  ASSERT_TRUE(cuda::EmbeddingForward(device_tokens.data(), device_table.data(), device_out.data(),
                                     rows, width)
                  .ok());
  const std::vector<float> out = Download(device_out);
  for (int64_t row = 0; row < rows; ++row) {
    ASSERT_TRUE(std::equal(out.begin() + row * width, out.begin() + (row + 1) * width,
                           table.begin() + tokens[row] * width));
  }
  std::vector<float> d_table(table.size(), 1.0F);
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t h = 0; h < width; ++h) d_table[tokens[row] * width + h] += d_out[row * width + h];
  }
  auto device_d_table = Upload(std::vector<float>(table.size(), 1.0F));
  const auto device_d_out = Upload(d_out);
  ASSERT_TRUE(cuda::EmbeddingBackward(device_tokens.data(), device_d_out.data(),
                                      device_d_table.data(), rows, width)
                  .ok());
  ExpectAllNear(Download(device_d_table), d_table, 1e-6, 1e-6, "d_table");
}

TEST(CudaDenseTest, RoundToBf16MatchesTheCpuRounding) {
  FEDMOE_REQUIRE_CUDA();
  std::vector<float> values = RandomVector(4096, 7, 1e3F);
  // Ties, infinities and NaN.
  values.push_back(std::bit_cast<float>(0x3f808000U));
  values.push_back(std::bit_cast<float>(0x3f818000U));
  values.push_back(INFINITY);
  values.push_back(-INFINITY);
  values.push_back(std::bit_cast<float>(0x7fc00001U));
  std::vector<cpu::Bf16> expected(values.size());
  cpu::ToBf16(values.data(), expected.data(), static_cast<int64_t>(values.size()));
  const auto device_values = Upload(values);
  auto device_rounded = Upload(std::vector<cuda::DeviceBf16>(values.size()));
  ASSERT_TRUE(cuda::RoundToBf16(device_values.data(), device_rounded.data(),
                                static_cast<int64_t>(values.size()))
                  .ok());
  const std::vector<cuda::DeviceBf16> rounded = Download(device_rounded);
  for (size_t i = 0; i < values.size(); ++i) {
    if (std::isnan(values[i])) {
      EXPECT_TRUE(std::isnan(cpu::FromBf16(rounded[i])));
    } else {
      EXPECT_EQ(rounded[i], expected[i]) << "value " << values[i];
    }
  }
}

TEST(CudaDenseTest, AddInto) {
  FEDMOE_REQUIRE_CUDA();
  const std::vector<float> a = RandomVector(1000, 1);
  const std::vector<float> b = RandomVector(1000, 2);
  auto device_a = Upload(a);
  const auto device_b = Upload(b);
  ASSERT_TRUE(cuda::AddInto(device_a.data(), device_b.data(), 1000).ok());
  std::vector<float> sum(1000);
  for (size_t i = 0; i < sum.size(); ++i) sum[i] = a[i] + b[i];
  ExpectAllNear(Download(device_a), sum, 0, 0, "sum");
}

TEST(CudaDenseTest, SumColumnsIsTheDoubleSumAndRepeatsBitForBit) {
  FEDMOE_REQUIRE_CUDA();
  // A narrow matrix like a router's probabilities, with a last chunk of rows that is not full,
  // and a wide one whose columns span several blocks.
  for (const auto& [rows, width] : {std::pair<int64_t, int64_t>{1000, 5}, {130, 300}}) {
    const std::vector<float> values = RandomVector(rows * width, 7);
    std::vector<double> expected(width, 0.0);
    for (int64_t row = 0; row < rows; ++row) {
      for (int64_t j = 0; j < width; ++j) expected[j] += values[row * width + j];
    }
    const auto device_values = Upload(values);
    auto scratch = Upload(std::vector<double>(cuda::SumColumnsScratch(rows, width), 0.0));
    auto sums = Upload(std::vector<double>(width, -1.0));
    ASSERT_TRUE(
        cuda::SumColumns(device_values.data(), rows, width, scratch.data(), sums.data()).ok());
    const std::vector<double> first = Download(sums);
    for (int64_t j = 0; j < width; ++j) {
      // Only the order of the double additions differs from the reference.
      EXPECT_NEAR(first[j], expected[j], 1e-12 * static_cast<double>(rows)) << "column " << j;
    }
    ASSERT_TRUE(
        cuda::SumColumns(device_values.data(), rows, width, scratch.data(), sums.data()).ok());
    const std::vector<double> second = Download(sums);
    EXPECT_EQ(std::memcmp(first.data(), second.data(), first.size() * sizeof(double)), 0);
  }
}

TEST(CudaDenseTest, BroadcastRowFillsEveryRow) {
  FEDMOE_REQUIRE_CUDA();
  const std::vector<float> row = RandomVector(kWidth, 8);
  const auto device_row = Upload(row);
  auto out = Upload(std::vector<float>(kRows * kWidth, 0.0F));
  ASSERT_TRUE(cuda::BroadcastRow(device_row.data(), out.data(), kRows, kWidth).ok());
  const std::vector<float> broadcast = Download(out);
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t j = 0; j < kWidth; ++j) {
      ASSERT_EQ(broadcast[r * kWidth + j], row[j]) << "row " << r << " column " << j;
    }
  }
}

}  // namespace
}  // namespace fedmoe::kernels
