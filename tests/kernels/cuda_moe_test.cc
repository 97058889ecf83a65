// The CUDA routing, cross-entropy, optimizer and GEMM kernels against their CPU twins or a
// plain double-precision reference, on random inputs.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/bf16.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/moe_routing.h"
#include "kernels/cuda/cross_entropy.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/moe_routing.h"
#include "kernels/cuda/optimizer.h"
#include "tests/kernels/cuda_test_support.h"
#include "tests/kernels/gradient_check.h"

namespace fedmoe::kernels {
namespace {

using testing::Download;
using testing::DownloadInStreamOrder;
using testing::ExpectAllNear;
using testing::RandomVector;
using testing::Upload;

std::vector<int32_t> ToInt32(const std::vector<int64_t>& values) {
  return {values.begin(), values.end()};
}

// 300 tokens (more than one 256-slot chunk per expert choice), 12 experts, top 3.
constexpr int64_t kTokens = 300;
constexpr int64_t kExperts = 12;
constexpr int64_t kTopK = 3;

TEST(CudaRoutingTest, RouterChoosesAndDifferentiatesAsTheCpuKernel) {
  FEDMOE_REQUIRE_CUDA();
  const std::vector<float> logits = RandomVector(kTokens * kExperts, 1, 3.0F);
  std::vector<float> probs(logits.size()), weight(kTokens * kTopK);
  std::vector<int32_t> index(kTokens * kTopK);
  cpu::RouterTopKForward(logits.data(), probs.data(), index.data(), weight.data(), kTokens,
                         kExperts, kTopK);
  const auto device_logits = Upload(logits);
  auto device_probs = Upload(std::vector<float>(probs.size()));
  auto device_weight = Upload(std::vector<float>(weight.size()));
  auto device_index = Upload(std::vector<int32_t>(index.size()));
  ASSERT_TRUE(cuda::RouterTopKForward(device_logits.data(), device_probs.data(),
                                      device_index.data(), device_weight.data(), kTokens, kExperts,
                                      kTopK)
                  .ok());
  ExpectAllNear(Download(device_probs), probs, 1e-7, 1e-5, "probs");
  EXPECT_EQ(Download(device_index), index);
  ExpectAllNear(Download(device_weight), weight, 1e-7, 1e-5, "weights");

  const std::vector<float> d_weight = RandomVector(weight.size(), 2);
  const std::vector<float> d_probs = RandomVector(probs.size(), 3);
  for (const bool with_balance : {false, true}) {
    std::vector<float> d_logits(logits.size());
    cpu::RouterTopKBackward(probs.data(), index.data(), d_weight.data(),
                            with_balance ? d_probs.data() : nullptr, d_logits.data(), kTokens,
                            kExperts, kTopK);
    const auto device_d_weight = Upload(d_weight);
    const auto device_d_probs = Upload(d_probs);
    auto device_d_logits = Upload(std::vector<float>(logits.size()));
    ASSERT_TRUE(cuda::RouterTopKBackward(device_probs.data(), device_index.data(),
                                         device_d_weight.data(),
                                         with_balance ? device_d_probs.data() : nullptr,
                                         device_d_logits.data(), kTokens, kExperts, kTopK)
                    .ok());
    ExpectAllNear(Download(device_d_logits), d_logits, 1e-6, 1e-4, "d_logits");
  }
}

TEST(CudaRoutingTest, PermutationGatherAndCombineMatchTheCpuKernels) {
  FEDMOE_REQUIRE_CUDA();
  // Skewed choices, and one expert (11) nobody picks.
  std::mt19937 generator(5);
  std::vector<int32_t> index(kTokens * kTopK);
  for (int64_t t = 0; t < kTokens; ++t) {
    std::vector<int32_t> experts(kExperts - 1);
    std::iota(experts.begin(), experts.end(), 0);
    std::shuffle(experts.begin(), experts.begin() + 4, generator);
    std::copy_n(experts.begin(), kTopK, index.begin() + t * kTopK);
  }
  cpu::ExpertPermutation expected;
  cpu::BuildExpertPermutation(index.data(), kTokens, kTopK, kExperts, expected);

  const auto device_index = Upload(index);
  const int64_t slots = kTokens * kTopK;
  auto offsets = Upload(std::vector<int32_t>(kExperts + 1));
  auto slot_token = Upload(std::vector<int32_t>(slots));
  auto permuted_slot = Upload(std::vector<int32_t>(slots));
  auto scratch = Upload(std::vector<int32_t>(cuda::ExpertPermutationScratch(slots, kExperts)));
  ASSERT_TRUE(cuda::BuildExpertPermutation(device_index.data(), kTokens, kTopK, kExperts,
                                           offsets.data(), slot_token.data(), permuted_slot.data(),
                                           scratch.data())
                  .ok());
  EXPECT_EQ(Download(offsets), ToInt32(expected.offsets));
  EXPECT_EQ(Download(slot_token), ToInt32(expected.slot_token));
  EXPECT_EQ(Download(permuted_slot), ToInt32(expected.permuted_slot));

  auto counts = Upload(std::vector<int64_t>(kExperts, 5));
  ASSERT_TRUE(cuda::AddExpertCounts(offsets.data(), kExperts, counts.data()).ok());
  std::vector<int64_t> expected_counts(kExperts);
  for (int64_t e = 0; e < kExperts; ++e) expected_counts[e] = 5 + expected.tokens_for(e);
  EXPECT_EQ(Download(counts), expected_counts);

  const int64_t width = 70;
  const std::vector<float> in = RandomVector(kTokens * width, 6);
  std::vector<float> permuted(slots * width);
  cpu::GatherByExpert(in.data(), expected, permuted.data(), width);
  const auto device_in = Upload(in);
  auto device_permuted = Upload(std::vector<float>(permuted.size()));
  auto device_permuted_bf16 = Upload(std::vector<cuda::DeviceBf16>(permuted.size()));
  ASSERT_TRUE(cuda::GatherByExpert(device_in.data(), slot_token.data(), device_permuted.data(),
                                   device_permuted_bf16.data(), slots, width)
                  .ok());
  EXPECT_EQ(Download(device_permuted), permuted);
  std::vector<cpu::Bf16> rounded(permuted.size());
  cpu::ToBf16(permuted.data(), rounded.data(), static_cast<int64_t>(rounded.size()));
  EXPECT_EQ(Download(device_permuted_bf16), rounded);

  const std::vector<float> d_permuted = RandomVector(slots * width, 7);
  std::vector<float> d_in(in.size(), 0.5F);
  cpu::GatherByExpertBackward(d_permuted.data(), expected, d_in.data(), kTokens, kTopK, width);
  const auto device_d_permuted = Upload(d_permuted);
  auto device_d_in = Upload(std::vector<float>(in.size(), 0.5F));
  ASSERT_TRUE(cuda::GatherByExpertBackward(device_d_permuted.data(), permuted_slot.data(),
                                           device_d_in.data(), kTokens, kTopK, width)
                  .ok());
  ExpectAllNear(Download(device_d_in), d_in, 1e-6, 1e-6, "gather backward");

  const std::vector<float> expert_out = RandomVector(slots * width, 8);
  const std::vector<float> weight = RandomVector(slots, 9);
  std::vector<float> out(kTokens * width, -1.0F);
  cpu::CombineExpertOutputs(expert_out.data(), weight.data(), expected, out.data(), kTokens, kTopK,
                            width);
  const auto device_expert_out = Upload(expert_out);
  const auto device_weight = Upload(weight);
  auto device_out = Upload(std::vector<float>(kTokens * width, -1.0F));
  ASSERT_TRUE(cuda::CombineExpertOutputs(device_expert_out.data(), device_weight.data(),
                                         permuted_slot.data(), device_out.data(), kTokens, kTopK,
                                         width)
                  .ok());
  ExpectAllNear(Download(device_out), out, 1e-6, 1e-6, "combine");

  const std::vector<float> d_out = RandomVector(kTokens * width, 10);
  std::vector<float> d_expert_out(slots * width), d_weight(slots);
  cpu::CombineExpertOutputsBackward(expert_out.data(), weight.data(), expected, d_out.data(),
                                    d_expert_out.data(), d_weight.data(), kTokens, kTopK, width);
  const auto device_d_out = Upload(d_out);
  auto device_d_expert_out = Upload(std::vector<float>(slots * width));
  auto device_d_weight = Upload(std::vector<float>(slots));
  ASSERT_TRUE(cuda::CombineExpertOutputsBackward(device_expert_out.data(), device_weight.data(),
                                                 permuted_slot.data(), device_d_out.data(),
                                                 device_d_expert_out.data(), nullptr,
                                                 device_d_weight.data(), kTokens, kTopK, width)
                  .ok());
  ExpectAllNear(Download(device_d_expert_out), d_expert_out, 0, 1e-6, "d_expert_out");
  ExpectAllNear(Download(device_d_weight), d_weight, 1e-5, 1e-5, "d_expert_weight");
}

TEST(CudaRoutingTest, TooManyExpertsIsAnError) {
  FEDMOE_REQUIRE_CUDA();
  const absl::Status status = cuda::BuildExpertPermutation(nullptr, 1, 1, cuda::kMaxExperts + 1,
                                                           nullptr, nullptr, nullptr, nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
}

TEST(CudaCrossEntropyTest, LossesAndGradientMatchTheCpuKernel) {
  FEDMOE_REQUIRE_CUDA();
  const int64_t rows = 9, vocab = 1000;
  const std::vector<float> logits = RandomVector(rows * vocab, 1, 8.0F);
  const std::vector<int32_t> targets = {5, -1, 999, 0, 17, -1, 400, 3, 998};
  std::vector<float> losses(rows), d_logits(rows * vocab);
  cpu::CrossEntropyBackward(logits.data(), targets.data(), d_logits.data(), losses.data(), rows,
                            vocab, 0.25F);
  const auto device_logits = Upload(logits);
  const auto device_targets = Upload(targets);
  auto device_losses = Upload(std::vector<float>(rows, 7.0F));
  ASSERT_TRUE(cuda::CrossEntropyForward(device_logits.data(), device_targets.data(),
                                        device_losses.data(), rows, vocab)
                  .ok());
  ExpectAllNear(Download(device_losses), losses, 1e-5, 1e-5, "forward losses");
  auto device_d_logits = Upload(std::vector<float>(rows * vocab, 7.0F));
  auto again = Upload(std::vector<float>(rows, 7.0F));
  ASSERT_TRUE(cuda::CrossEntropyBackward(device_logits.data(), device_targets.data(),
                                         device_d_logits.data(), again.data(), rows, vocab, 0.25F)
                  .ok());
  ExpectAllNear(Download(again), losses, 1e-5, 1e-5, "backward losses");
  ExpectAllNear(Download(device_d_logits), d_logits, 1e-8, 1e-5, "d_logits");
}

TEST(CudaOptimizerTest, NormAndAdamWMatchADoubleReference) {
  FEDMOE_REQUIRE_CUDA();
  // Three ranges, two adjacent (merged), one without decay, and gaps left alone. The kernels
  // walk tiles of 1024 and 4096 values: most lie inside a range, one spans the boundary at
  // 12000 and the last is partly past the end.
  const std::vector<kernels::ParameterRange> ranges = {
      {.offset = 0, .size = 9000, .decay = true},
      {.offset = 9000, .size = 3000, .decay = true},
      {.offset = 12500, .size = 5000, .decay = false}};
  const int64_t size = 18000;
  const std::vector<float> parameters = RandomVector(size, 1);
  const std::vector<float> gradients = RandomVector(size, 2, 0.1F);
  const std::vector<float> m0 = RandomVector(size, 3, 0.01F);
  std::vector<float> v0 = RandomVector(size, 4, 0.01F);
  for (float& v : v0) v = std::abs(v);

  double squares = 0;
  for (const auto& range : ranges) {
    for (int64_t i = range.offset; i < range.offset + range.size; ++i) {
      squares += static_cast<double>(gradients[i]) * gradients[i];
    }
  }
  absl::StatusOr<cuda::DeviceRanges> device_ranges = cuda::DeviceRanges::Create(ranges);
  ASSERT_TRUE(device_ranges.ok()) << device_ranges.status();
  EXPECT_EQ(device_ranges->count(), 2);
  EXPECT_EQ(device_ranges->total(), 17000);
  const auto device_gradients = Upload(gradients);
  auto partials = Upload(std::vector<double>(cuda::kSumOfSquaresPartials));
  auto norm_squared = Upload(std::vector<double>(1));
  ASSERT_TRUE(cuda::SumOfSquares(device_gradients.data(), *device_ranges, partials.data(),
                                 norm_squared.data())
                  .ok());
  EXPECT_NEAR(Download(norm_squared)[0], squares, 1e-12 * squares);

  // Clipping at half the norm, step 3 of lr 1e-2.
  const double lr = 1e-2, beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8, weight_decay = 0.1;
  const int step_number = 3;
  const double correction1 = 1 - std::pow(beta1, step_number);
  const double correction2 = 1 - std::pow(beta2, step_number);
  const double max_norm = 0.5 * std::sqrt(squares);
  const kernels::AdamWStep step{.beta1 = static_cast<float>(beta1),
                                .beta2 = static_cast<float>(beta2),
                                .epsilon = static_cast<float>(epsilon),
                                .step_size = static_cast<float>(lr / correction1),
                                .root_correction2 = static_cast<float>(std::sqrt(correction2)),
                                .decay = static_cast<float>(lr * weight_decay),
                                .max_norm = static_cast<float>(max_norm)};
  // The reference takes the step's constants as the kernel gets them, in float (1 − 0.9F is
  // 2.4e-7 away from 0.1), so what remains between the two is the kernel's float rounding.
  const double beta1_as_passed = step.beta1;
  const double beta2_as_passed = step.beta2;
  std::vector<float> expected = parameters, expected_m = m0, expected_v = v0;
  for (const auto& range : ranges) {
    for (int64_t i = range.offset; i < range.offset + range.size; ++i) {
      const double g = 0.5 * gradients[i];
      expected_m[i] = static_cast<float>(beta1_as_passed * m0[i] + (1 - beta1_as_passed) * g);
      expected_v[i] = static_cast<float>(beta2_as_passed * v0[i] + (1 - beta2_as_passed) * g * g);
      const double update = lr / correction1 * expected_m[i] /
                            (std::sqrt(expected_v[i]) / std::sqrt(correction2) + epsilon);
      expected[i] = static_cast<float>(
          parameters[i] - (range.decay ? lr * weight_decay * parameters[i] : 0.0) - update);
    }
  }
  auto device_parameters = Upload(parameters);
  auto device_bf16 = Upload(std::vector<cuda::DeviceBf16>(size));
  auto device_m = Upload(m0);
  auto device_v = Upload(v0);
  ASSERT_TRUE(cuda::AdamWUpdate(device_parameters.data(), device_bf16.data(),
                                device_gradients.data(), device_m.data(), device_v.data(),
                                *device_ranges, step, norm_squared.data())
                  .ok());
  const std::vector<float> updated = Download(device_parameters);
  ExpectAllNear(updated, expected, 1e-6, 1e-5, "parameters");
  ExpectAllNear(Download(device_m), expected_m, 1e-9, 1e-5, "first moment");
  ExpectAllNear(Download(device_v), expected_v, 1e-12, 1e-5, "second moment");
  // Outside the ranges nothing moved; inside, the bf16 copy is the update rounded.
  for (int64_t i = 12000; i < 12500; ++i) ASSERT_EQ(updated[i], parameters[i]);
  for (int64_t i = 17500; i < size; ++i) ASSERT_EQ(updated[i], parameters[i]);
  const std::vector<cuda::DeviceBf16> bf16 = Download(device_bf16);
  for (int64_t i : {int64_t{0}, int64_t{8191}, int64_t{11999}, int64_t{12500}, int64_t{17499}}) {
    cpu::Bf16 rounded = 0;
    cpu::ToBf16(&updated[i], &rounded, 1);
    EXPECT_EQ(bf16[i], rounded) << i;
  }
}

TEST(CudaOptimizerTest, OverlappingRangesAreRefused) {
  FEDMOE_REQUIRE_CUDA();
  const std::vector<kernels::ParameterRange> ranges = {{.offset = 0, .size = 10},
                                                       {.offset = 5, .size = 10}};
  EXPECT_EQ(cuda::DeviceRanges::Create(ranges).status().code(), absl::StatusCode::kInvalidArgument);
}

// c = a·b in double from the operands as stored, rounded to bf16 where they are bf16.
std::vector<float> ReferenceProduct(const std::vector<float>& a, bool a_transposed,
                                    const std::vector<float>& b, bool b_transposed, int64_t m,
                                    int64_t n, int64_t k) {
  std::vector<float> c(m * n);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double sum = 0;
      for (int64_t l = 0; l < k; ++l) {
        sum += static_cast<double>(a_transposed ? a[l * m + i] : a[i * k + l]) *
               (b_transposed ? b[j * k + l] : b[l * n + j]);
      }
      c[i * n + j] = static_cast<float>(sum);
    }
  }
  return c;
}

std::vector<float> RoundedToBf16(const std::vector<float>& values, std::vector<cpu::Bf16>& bits) {
  bits.resize(values.size());
  cpu::ToBf16(values.data(), bits.data(), static_cast<int64_t>(values.size()));
  std::vector<float> rounded(values.size());
  for (size_t i = 0; i < values.size(); ++i) rounded[i] = cpu::FromBf16(bits[i]);
  return rounded;
}

TEST(CudaGemmTest, EveryStorageAndTypeMatchesADoubleProduct) {
  FEDMOE_REQUIRE_CUDA();
  absl::StatusOr<cuda::Blas> blas = cuda::Blas::Create();
  ASSERT_TRUE(blas.ok()) << blas.status();
  const int64_t m = 13, n = 7, k = 33;
  for (const bool bf16 : {false, true}) {
    for (const bool a_transposed : {false, true}) {
      for (const bool b_transposed : {false, true}) {
        std::vector<cpu::Bf16> a_bits, b_bits;
        std::vector<float> a = RandomVector(m * k, 1), b = RandomVector(k * n, 2);
        if (bf16) {
          a = RoundedToBf16(a, a_bits);
          b = RoundedToBf16(b, b_bits);
        }
        const std::vector<float> product =
            ReferenceProduct(a, a_transposed, b, b_transposed, m, n, k);
        const auto device_a = Upload(a);
        const auto device_b = Upload(b);
        const auto device_a_bits = Upload(bf16 ? a_bits : std::vector<cpu::Bf16>(1));
        const auto device_b_bits = Upload(bf16 ? b_bits : std::vector<cpu::Bf16>(1));
        const cuda::ElementType type =
            bf16 ? cuda::ElementType::kBfloat16 : cuda::ElementType::kFloat32;
        const cuda::MatrixOperand operand_a{
            bf16 ? static_cast<const void*>(device_a_bits.data()) : device_a.data(), type,
            a_transposed};
        const cuda::MatrixOperand operand_b{
            bf16 ? static_cast<const void*>(device_b_bits.data()) : device_b.data(), type,
            b_transposed};
        auto c = Upload(std::vector<float>(m * n, 1.0F));
        ASSERT_TRUE(blas->MatMul({operand_a, operand_b, c.data(), m, n, k}, true).ok());
        std::vector<float> expected = product;
        for (float& v : expected) v += 1.0F;
        ExpectAllNear(Download(c), expected, 1e-4, 1e-5, "accumulated product");
        ASSERT_TRUE(blas->MatMul({operand_a, operand_b, c.data(), m, n, k}, false).ok());
        ExpectAllNear(Download(c), product, 1e-4, 1e-5, "product");
      }
    }
  }
}

// cuBLAS is loaded at run time (gemm.cu): the build's library path or soname resolves and has
// every entry point. Runs without a GPU too, where only the handle's creation can fail.
TEST(CudaGemmTest, CublasLoadsWithEveryEntryPoint) {
  if (cuda::IsSimulator()) GTEST_SKIP() << "the simulator links its cuBLAS: nothing to load";
  absl::StatusOr<cuda::Blas> blas = cuda::Blas::Create();
  if (!blas.ok()) {
    EXPECT_EQ(blas.status().message().find("cannot load cuBLAS"), std::string::npos)
        << blas.status();
    EXPECT_EQ(blas.status().message().find("lacks a function"), std::string::npos) << blas.status();
    EXPECT_NE(blas.status().message().find("cublasCreate"), std::string::npos) << blas.status();
  }
}

class CudaGroupedGemmTest : public ::testing::TestWithParam<cuda::GroupedProducts> {};

TEST_P(CudaGroupedGemmTest, ProductsOfDifferentSizes) {
  FEDMOE_REQUIRE_CUDA();
  absl::StatusOr<cuda::Blas> blas = cuda::Blas::Create(GetParam());
  ASSERT_TRUE(blas.ok()) << blas.status();
  // Expert-like: the token count varies, an expert with no tokens zeroes or keeps its output;
  // more problems than the scratch first holds.
  const int64_t n = 6, k = 10;
  std::vector<int64_t> rows = {5, 0, 17, 1};
  for (int i = 0; i < 70; ++i) rows.push_back(i % 4);
  std::vector<std::vector<float>> a_host, c_expected;
  std::vector<cuda::DeviceArray<cpu::Bf16>> a_device;
  std::vector<cuda::DeviceArray<float>> c_device;
  std::vector<cpu::Bf16> b_bits;
  const std::vector<float> b = RoundedToBf16(RandomVector(n * k, 3), b_bits);
  const auto device_b = Upload(b_bits);
  std::vector<cuda::GemmProblem> problems;
  for (size_t p = 0; p < rows.size(); ++p) {
    std::vector<cpu::Bf16> bits;
    const std::vector<float> a =
        RoundedToBf16(RandomVector(std::max<int64_t>(rows[p], 1) * k, 10 + p), bits);
    a_device.push_back(Upload(bits));
    c_device.push_back(Upload(std::vector<float>(std::max<int64_t>(rows[p], 1) * n, 2.0F)));
    std::vector<float> expected = ReferenceProduct(a, false, b, true, rows[p], n, k);
    for (float& v : expected) v += 2.0F;
    c_expected.push_back(expected);
    problems.push_back({{a_device.back().data(), cuda::ElementType::kBfloat16, false},
                        {device_b.data(), cuda::ElementType::kBfloat16, true},
                        c_device.back().data(),
                        rows[p],
                        n,
                        k});
  }
  ASSERT_TRUE(blas->GroupedMatMul(problems, true).ok());
  for (size_t p = 0; p < rows.size(); ++p) {
    std::vector<float> c = DownloadInStreamOrder(c_device[p]);
    c.resize(static_cast<size_t>(rows[p] * n));
    ExpectAllNear(c, c_expected[p], 1e-4, 1e-5, "grouped problem " + std::to_string(p));
  }
  // Again, overwriting: the products replace c, and an expert without rows keeps its c.
  ASSERT_TRUE(blas->GroupedMatMul(problems, false).ok());
  for (size_t p = 0; p < rows.size(); ++p) {
    std::vector<float> c = DownloadInStreamOrder(c_device[p]);
    c.resize(static_cast<size_t>(rows[p] * n));
    std::vector<float> expected = c_expected[p];
    for (float& v : expected) v -= 2.0F;
    ExpectAllNear(c, expected, 1e-4, 1e-5, "overwriting problem " + std::to_string(p));
  }
  // Mixed storage in one group is refused.
  problems[1].a.transposed = true;
  EXPECT_EQ(blas->GroupedMatMul(problems, true).code(), absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(GroupedCallAndConcurrentStreams, CudaGroupedGemmTest,
                         ::testing::Values(cuda::GroupedProducts::kGroupedCall,
                                           cuda::GroupedProducts::kConcurrentStreams),
                         [](const ::testing::TestParamInfo<cuda::GroupedProducts>& param_info) {
                           return param_info.param == cuda::GroupedProducts::kGroupedCall
                                      ? "GroupedCall"
                                      : "ConcurrentStreams";
                         });

}  // namespace
}  // namespace fedmoe::kernels
