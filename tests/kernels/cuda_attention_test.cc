// The fused GPU attention, in both arithmetics, against the CPU kernels (which keep the full
// probability matrix), over shapes that span several query and key blocks, end in a partial
// block, group query heads, and cut a sliding window across block edges.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"
#include "kernels/cuda/attention.h"
#include "tests/kernels/cuda_test_support.h"
#include "tests/kernels/gradient_check.h"

namespace fedmoe::kernels {
namespace {

using testing::Download;
using testing::ExpectAllNear;
using testing::RandomVector;
using testing::Upload;

using cuda::AttentionArithmetic;

struct Case {
  int64_t head_dim;
  int64_t window;
  AttentionArithmetic arithmetic = AttentionArithmetic::kFloat32;
  // 45 spans several of the fp32 kernels' 32-position blocks; the tensor-core kernels' blocks
  // are 64 rows, so their multi-block cases are longer.
  int64_t seq_len = 45;
};

// Every element within `fraction` of the largest magnitude in `expected`: TF32 rounds each
// operand to 2^-11 relative, so its errors scale with the tensor, not with each element.
void ExpectNearAtScale(const std::vector<float>& actual, const std::vector<float>& expected,
                       double fraction, const std::string& name) {
  ASSERT_EQ(actual.size(), expected.size()) << name;
  double largest = 0;
  for (float value : expected) largest = std::max(largest, std::abs(static_cast<double>(value)));
  double worst = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    worst = std::max(worst, std::abs(static_cast<double>(actual[i]) - expected[i]));
  }
  EXPECT_LE(worst, fraction * largest) << name << ": worst error " << worst << " of largest "
                                       << largest << " (" << worst / largest << ")";
}

// Of each tensor's largest magnitude. The simulator's TF32 arithmetic measured at most 1.8e-3 on
// these cases; a mask off by one position, or a lost key step, is off by several percent.
constexpr double kTensorFloat32Tolerance = 4e-3;

class CudaAttentionTest : public ::testing::TestWithParam<Case> {};

TEST_P(CudaAttentionTest, ForwardAndBackwardMatchTheCpuKernels) {
  FEDMOE_REQUIRE_CUDA();
  const Case& test_case = GetParam();
  const bool tensor_cores = test_case.arithmetic == AttentionArithmetic::kTensorFloat32;
  const cpu::AttentionShape shape{.batch = 2,
                                  .seq_len = test_case.seq_len,
                                  .heads = 4,
                                  .kv_heads = 2,
                                  .head_dim = test_case.head_dim,
                                  .sliding_window = test_case.window};
  const int64_t rows = shape.batch * shape.seq_len;
  const int64_t q_width = shape.heads * shape.head_dim;
  const int64_t kv_width = shape.kv_heads * shape.head_dim;
  const std::vector<float> q = RandomVector(rows * q_width, 1, 2.0F);
  const std::vector<float> k = RandomVector(rows * kv_width, 2, 2.0F);
  const std::vector<float> v = RandomVector(rows * kv_width, 3);
  const std::vector<float> d_out = RandomVector(rows * q_width, 4);
  std::vector<float> out(rows * q_width);
  std::vector<float> probs(shape.batch * shape.heads * shape.seq_len * shape.seq_len);
  cpu::CausalAttentionForward(q.data(), k.data(), v.data(), out.data(), probs.data(), shape);
  std::vector<float> d_q(q.size()), d_k(k.size()), d_v(v.size());
  cpu::CausalAttentionBackward(q.data(), k.data(), v.data(), probs.data(), d_out.data(), d_q.data(),
                               d_k.data(), d_v.data(), shape);

  const auto device_q = Upload(q);
  const auto device_k = Upload(k);
  const auto device_v = Upload(v);
  const auto device_d_out = Upload(d_out);
  auto device_out = Upload(std::vector<float>(out.size(), NAN));
  auto lse = Upload(std::vector<float>(shape.batch * shape.heads * shape.seq_len, NAN));
  ASSERT_TRUE(cuda::CausalAttentionForward(device_q.data(), device_k.data(), device_v.data(),
                                           device_out.data(), lse.data(), shape,
                                           test_case.arithmetic)
                  .ok());
  const auto expect_near = [&](const std::vector<float>& actual, const std::vector<float>& expected,
                               const std::string& name) {
    if (tensor_cores) {
      ExpectNearAtScale(actual, expected, kTensorFloat32Tolerance, name);
    } else {
      ExpectAllNear(actual, expected, 1e-5, 1e-4, name);
    }
  };
  expect_near(Download(device_out), out, "out");

  // The log-sum-exp of each row's scaled, visible scores, in double. It moves by no more than
  // the largest change of a score; TF32 rounds each product's two operands by up to 2^-11 of
  // themselves, so a score by up to 2^-10·scale·Σ|q_d·k_d|, which bounds the row's error.
  const std::vector<float> gpu_lse = Download(lse);
  const double scale = 1.0 / std::sqrt(static_cast<double>(shape.head_dim));
  const int64_t group = shape.heads / shape.kv_heads;
  for (int64_t b = 0; b < shape.batch; ++b) {
    for (int64_t h = 0; h < shape.heads; ++h) {
      for (int64_t i = 0; i < shape.seq_len; ++i) {
        double total = 0;
        double largest_rounding = 0;
        for (int64_t j = 0; j <= i; ++j) {
          if (shape.sliding_window > 0 && j <= i - shape.sliding_window) continue;
          double dot = 0;
          double magnitude = 0;
          for (int64_t d = 0; d < shape.head_dim; ++d) {
            const double term =
                static_cast<double>(q[(b * shape.seq_len + i) * q_width + h * shape.head_dim + d]) *
                k[(b * shape.seq_len + j) * kv_width + (h / group) * shape.head_dim + d];
            dot += term;
            magnitude += std::abs(term);
          }
          total += std::exp(dot * scale);
          largest_rounding = std::max(largest_rounding, std::ldexp(scale * magnitude, -10));
        }
        ASSERT_NEAR(gpu_lse[(b * shape.heads + h) * shape.seq_len + i], std::log(total),
                    tensor_cores ? 1e-5 + 1.01 * largest_rounding : 1e-4)
            << "sequence " << b << " head " << h << " row " << i;
      }
    }
  }

  auto device_d_q = Upload(std::vector<float>(q.size(), NAN));
  auto device_d_k = Upload(std::vector<float>(k.size(), NAN));
  auto device_d_v = Upload(std::vector<float>(v.size(), NAN));
  auto scratch = Upload(std::vector<float>(cuda::CausalAttentionBackwardScratch(shape)));
  ASSERT_TRUE(cuda::CausalAttentionBackward(device_q.data(), device_k.data(), device_v.data(),
                                            device_out.data(), lse.data(), device_d_out.data(),
                                            device_d_q.data(), device_d_k.data(), device_d_v.data(),
                                            scratch.data(), shape, test_case.arithmetic)
                  .ok());
  expect_near(Download(device_d_q), d_q, "d_q");
  expect_near(Download(device_d_k), d_k, "d_k");
  expect_near(Download(device_d_v), d_v, "d_v");
}

constexpr auto kTf32 = AttentionArithmetic::kTensorFloat32;
INSTANTIATE_TEST_SUITE_P(HeadDimsAndWindows, CudaAttentionTest,
                         ::testing::Values(Case{16, 0}, Case{32, 20}, Case{64, 0}, Case{128, 0},
                                           Case{128, 33}, Case{16, 0, kTf32}, Case{64, 20, kTf32},
                                           Case{128, 0, kTf32}, Case{32, 0, kTf32, 150},
                                           Case{32, 40, kTf32, 150}),
                         [](const ::testing::TestParamInfo<Case>& param_info) {
                           const Case& c = param_info.param;
                           return std::string(c.arithmetic == kTf32 ? "TensorFloat32" : "Float32") +
                                  "HeadDim" + std::to_string(c.head_dim) + "Window" +
                                  std::to_string(c.window) + "Length" + std::to_string(c.seq_len);
                         });

TEST(CudaAttentionShapeTest, UnsupportedShapesAreRefused) {
  cpu::AttentionShape shape{.batch = 1, .seq_len = 4, .heads = 4, .kv_heads = 2, .head_dim = 48};
  EXPECT_EQ(cuda::CheckAttentionShape(shape).code(), absl::StatusCode::kInvalidArgument);
  shape.head_dim = 64;
  EXPECT_TRUE(cuda::CheckAttentionShape(shape).ok());
  shape.kv_heads = 3;
  EXPECT_EQ(cuda::CheckAttentionShape(shape).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedmoe::kernels
