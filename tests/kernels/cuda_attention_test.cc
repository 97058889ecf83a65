// The fused GPU attention against the CPU kernels (which keep the full probability matrix), over
// shapes that span several query and key blocks, end in a partial block, group query heads,
// and cut a sliding window across block edges.
#include <cmath>
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

struct Case {
  int64_t head_dim;
  int64_t window;
};

class CudaAttentionTest : public ::testing::TestWithParam<Case> {};

TEST_P(CudaAttentionTest, ForwardAndBackwardMatchTheCpuKernels) {
  FEDMOE_REQUIRE_CUDA();
  const cpu::AttentionShape shape{.batch = 2,
                                  .seq_len = 45,
                                  .heads = 4,
                                  .kv_heads = 2,
                                  .head_dim = GetParam().head_dim,
                                  .sliding_window = GetParam().window};
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
  ASSERT_TRUE(cuda::FlashAttentionForward(device_q.data(), device_k.data(), device_v.data(),
                                          device_out.data(), lse.data(), shape)
                  .ok());
  ExpectAllNear(Download(device_out), out, 1e-5, 1e-4, "out");

  // The log-sum-exp of each row's scaled, visible scores, in double.
  const std::vector<float> gpu_lse = Download(lse);
  const double scale = 1.0 / std::sqrt(static_cast<double>(shape.head_dim));
  const int64_t group = shape.heads / shape.kv_heads;
  for (int64_t b = 0; b < shape.batch; ++b) {
    for (int64_t h = 0; h < shape.heads; ++h) {
      for (int64_t i = 0; i < shape.seq_len; ++i) {
        double total = 0;
        for (int64_t j = 0; j <= i; ++j) {
          if (shape.sliding_window > 0 && j <= i - shape.sliding_window) continue;
          double dot = 0;
          for (int64_t d = 0; d < shape.head_dim; ++d) {
            dot +=
                static_cast<double>(q[(b * shape.seq_len + i) * q_width + h * shape.head_dim + d]) *
                k[(b * shape.seq_len + j) * kv_width + (h / group) * shape.head_dim + d];
          }
          total += std::exp(dot * scale);
        }
        ASSERT_NEAR(gpu_lse[(b * shape.heads + h) * shape.seq_len + i], std::log(total), 1e-4)
            << "sequence " << b << " head " << h << " row " << i;
      }
    }
  }

  auto device_d_q = Upload(std::vector<float>(q.size(), NAN));
  auto device_d_k = Upload(std::vector<float>(k.size(), NAN));
  auto device_d_v = Upload(std::vector<float>(v.size(), NAN));
  auto scratch = Upload(std::vector<float>(cuda::FlashAttentionBackwardScratch(shape)));
  ASSERT_TRUE(cuda::FlashAttentionBackward(device_q.data(), device_k.data(), device_v.data(),
                                           device_out.data(), lse.data(), device_d_out.data(),
                                           device_d_q.data(), device_d_k.data(), device_d_v.data(),
                                           scratch.data(), shape)
                  .ok());
  ExpectAllNear(Download(device_d_q), d_q, 1e-5, 1e-4, "d_q");
  ExpectAllNear(Download(device_d_k), d_k, 1e-5, 1e-4, "d_k");
  ExpectAllNear(Download(device_d_v), d_v, 1e-5, 1e-4, "d_v");
}

INSTANTIATE_TEST_SUITE_P(HeadDimsAndWindows, CudaAttentionTest,
                         ::testing::Values(Case{16, 0}, Case{32, 20}, Case{64, 0}, Case{128, 0},
                                           Case{128, 33}),
                         [](const ::testing::TestParamInfo<Case>& param_info) {
                           return "HeadDim" + std::to_string(param_info.param.head_dim) + "Window" +
                                  std::to_string(param_info.param.window);
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
