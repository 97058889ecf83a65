// The GPU's decoder (model/cuda_generation.h) against the CPU's (generation.h's BatchDecoder),
// which generation_test.cc holds to the full forward pass: batched steps that mix prefill and
// decode rows, caches that grow past their first capacity and past the attention window,
// copied prefixes and the prefix cache, truncation, greedy generation, and the refusals.
//
// Compiled once and linked twice, like the CUDA backends' tests: into cuda_adapter_sim_test on
// the CPU simulator of CUDA (always), and into cuda_adapter_test on a GPU (skipping itself
// without one).
#include <cmath>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/device_decoder.h"
#include "model/generation.h"
#include "model/init.h"
#include "model/prefix_cache.h"
#include "model/tokenizer.h"
#include "tests/kernels/cuda_test_support.h"
#include "tests/model/adapter_testing.h"
#include "tests/model/cuda_backend_testing.h"
#include "tests/testing_tiny_model.h"

namespace fedmoe::model {
namespace {

// Grouped KV heads, a shared expert, a window of 9, a context of 64: the CUDA kernels' shape.
MoeConfig Config() { return testing::SmallCudaConfig(); }

// One model, decoded on both devices. With int8 activations the devices quantize inputs that
// differ in their last bits, which may move a value across a rounding boundary (one level of one
// group): the logits then agree within 3e-3 rather than 2e-4.
struct TwoDecoders {
  TwoDecoders(WeightFormat format, bool adapted, bool int8_activations = false)
      : base(FrozenBase::FromParameters(InitializeModel(Config(), 4), format, 16)),
        adapters(adapted ? *NewAdapters(base, testing::EveryLinearLora()) : BaseOnlyAdapters(base)),
        tolerance(int8_activations ? 3e-3 : 2e-4) {
    if (int8_activations) {
      EXPECT_TRUE(base.QuantizeActivations().ok());
    }
    if (adapted) testing::PerturbAdapters(adapters, 3, 0.2F);
    absl::StatusOr<std::unique_ptr<Decoder>> made = CreateDecoder(base, adapters, Device::kCpu);
    EXPECT_TRUE(made.ok()) << made.status();
    cpu = *std::move(made);
    made = CreateDecoder(base, adapters, Device::kCuda);
    EXPECT_TRUE(made.ok()) << made.status();
    if (made.ok()) cuda = *std::move(made);
  }

  FrozenBase base;
  LoraAdapters adapters;
  double tolerance;
  std::unique_ptr<Decoder> cpu, cuda;
};

// The logits of both devices' steps within float rounding of the products' orders.
void ExpectSameLogits(std::span<const float> cuda, std::span<const float> cpu,
                      const std::string& what, double tolerance = 2e-4) {
  ASSERT_EQ(cuda.size(), cpu.size()) << what;
  for (size_t i = 0; i < cpu.size(); ++i) {
    ASSERT_NEAR(cuda[i], cpu[i], tolerance * (1 + std::abs(cpu[i]))) << what << ", logit " << i;
  }
}

// Runs the same step on both devices, over caches at the same index, and compares.
void StepBoth(TwoDecoders& model, std::vector<KvCache>& cpu_caches,
              std::vector<KvCache>& cuda_caches, const std::vector<size_t>& which,
              const std::vector<std::span<const int32_t>>& tokens, const std::string& what) {
  std::vector<DecodeSegment> on_cpu, on_cuda;
  for (size_t s = 0; s < which.size(); ++s) {
    on_cpu.push_back({.cache = &cpu_caches[which[s]], .tokens = tokens[s]});
    on_cuda.push_back({.cache = &cuda_caches[which[s]], .tokens = tokens[s]});
  }
  absl::StatusOr<std::span<const float>> expected = model.cpu->Step(on_cpu);
  ASSERT_TRUE(expected.ok()) << expected.status();
  const std::vector<float> cpu_logits(expected->begin(), expected->end());
  absl::StatusOr<std::span<const float>> actual = model.cuda->Step(on_cuda);
  ASSERT_TRUE(actual.ok()) << what << ": " << actual.status();
  ExpectSameLogits(*actual, cpu_logits, what, model.tolerance);
  for (const size_t i : which) ASSERT_EQ(cuda_caches[i].length(), cpu_caches[i].length());
}

struct Case {
  const char* name;
  WeightFormat format;
  bool adapted;
  bool int8_activations = false;
};

class CudaDecoderTest : public ::testing::TestWithParam<Case> {};

TEST_P(CudaDecoderTest, BatchedStepsEqualTheCpuDecoder) {
  FEDMOE_REQUIRE_CUDA();
  TwoDecoders model(GetParam().format, GetParam().adapted, GetParam().int8_activations);
  ASSERT_NE(model.cuda, nullptr);
  EXPECT_EQ(model.cuda->device(), "cuda");
  const int64_t vocab = Config().vocab_size;
  std::vector<std::vector<int32_t>> texts;
  std::vector<KvCache> cpu_caches, cuda_caches;
  for (uint32_t i = 0; i < 3; ++i) {
    texts.push_back(testing::RandomTokens(60, vocab, 10 + i));
    cpu_caches.push_back(model.cpu->NewCache());
    cuda_caches.push_back(model.cuda->NewCache());
  }
  // New tokens per sequence and step (0: it sits the step out): a prompt alone; a decode row
  // beside two prompts; decode rows; a prompt's second part that takes its cache past the first
  // capacity (16) and the window (9); then single rows again.
  const std::vector<std::vector<size_t>> steps = {{5, 0, 0},   {1, 4, 8}, {1, 1, 1},
                                                  {1, 14, 10}, {1, 1, 1}, {0, 1, 1}};
  std::vector<size_t> lengths(3, 0);
  for (size_t step = 0; step < steps.size(); ++step) {
    std::vector<size_t> which;
    std::vector<std::span<const int32_t>> tokens;
    for (size_t i = 0; i < 3; ++i) {
      if (steps[step][i] == 0) continue;
      which.push_back(i);
      tokens.push_back(std::span<const int32_t>(texts[i]).subspan(lengths[i], steps[step][i]));
      lengths[i] += steps[step][i];
    }
    StepBoth(model, cpu_caches, cuda_caches, which, tokens, "step " + std::to_string(step));
    if (HasFatalFailure()) return;
  }
  EXPECT_EQ(cuda_caches[1].length(), 21);
  EXPECT_EQ(cuda_caches[1].bytes(), cpu_caches[1].bytes());
}

INSTANTIATE_TEST_SUITE_P(
    Formats, CudaDecoderTest,
    ::testing::Values(Case{"fp32_base_only", WeightFormat::kFloat32, false},
                      Case{"bf16_adapted", WeightFormat::kBfloat16, true},
                      Case{"int8_adapted", WeightFormat::kInt8, true},
                      Case{"int8_activations_adapted", WeightFormat::kInt8, true, true}),
    [](const ::testing::TestParamInfo<Case>& param) { return std::string(param.param.name); });

TEST(CudaDecoderPrefixTest, CopiedPrefixesAndTruncationContinueAsOnTheCpu) {
  FEDMOE_REQUIRE_CUDA();
  TwoDecoders model(WeightFormat::kInt8, true);
  ASSERT_NE(model.cuda, nullptr);
  const int64_t vocab = Config().vocab_size;
  const std::vector<int32_t> shared = testing::RandomTokens(20, vocab, 8);
  std::vector<int32_t> other(shared.begin(), shared.begin() + 12);
  for (const int32_t token : testing::RandomTokens(6, vocab, 9)) other.push_back(token);

  std::vector<KvCache> cpu_caches, cuda_caches;
  cpu_caches.push_back(model.cpu->NewCache());
  cuda_caches.push_back(model.cuda->NewCache());
  StepBoth(model, cpu_caches, cuda_caches, {0}, {shared}, "the first prompt");
  const std::vector<int32_t> next = {7};
  // The second prompt starts from the first one's 12-token prefix, copied on each device.
  for (std::vector<KvCache>* caches : {&cpu_caches, &cuda_caches}) {
    absl::StatusOr<KvCache> prefix = caches->front().Prefix(12);
    ASSERT_TRUE(prefix.ok()) << prefix.status();
    caches->push_back(*std::move(prefix));
  }
  ASSERT_EQ(cuda_caches[1].length(), 12);
  StepBoth(model, cpu_caches, cuda_caches, {1, 0},
           {std::span<const int32_t>(other).subspan(12), std::span<const int32_t>(next)},
           "the rest of the second prompt beside the first's next token");
  // Truncated back to 5 tokens, the second sequence runs its text again from there.
  cpu_caches[1].Truncate(5);
  cuda_caches[1].Truncate(5);
  StepBoth(model, cpu_caches, cuda_caches, {1}, {std::span<const int32_t>(other).subspan(5, 10)},
           "after truncation");

  // The prefix cache holds device caches as it holds host ones.
  PrefixCache cache(size_t{1} << 20, 4);
  cache.Remember(shared, cuda_caches[0]);
  ASSERT_EQ(cache.entries(), 1u);
  cpu_caches.push_back(model.cpu->NewCache());
  cuda_caches.push_back(model.cuda->NewCache());
  ASSERT_EQ(cache.Reuse(other, cuda_caches[2]), 12);
  const DecodeSegment prefill{.cache = &cpu_caches[2],
                              .tokens = std::span<const int32_t>(other).first(12)};
  ASSERT_TRUE(model.cpu->Step({&prefill, 1}).ok());
  StepBoth(model, cpu_caches, cuda_caches, {2}, {std::span<const int32_t>(other).subspan(12)},
           "after the prefix cache");
}

TEST(CudaDecoderGenerationTest, GreedyTextEqualsTheCpuGeneration) {
  FEDMOE_REQUIRE_CUDA();
  TwoDecoders model(WeightFormat::kBfloat16, true);
  ASSERT_NE(model.cuda, nullptr);
  const std::unique_ptr<Tokenizer> tokenizer = MakeByteTokenizer(Config().vocab_size);
  GenerationOptions options;
  options.max_tokens = 10;
  std::vector<GenerationResult> results;
  for (std::unique_ptr<Decoder>* decoder : {&model.cpu, &model.cuda}) {
    Generator generator(std::move(*decoder));
    absl::StatusOr<GenerationResult> result =
        Generate(generator, *tokenizer, "WIRE 4,000 TO ACCOUNT", options, [](std::string_view) {});
    ASSERT_TRUE(result.ok()) << result.status();
    results.push_back(*std::move(result));
  }
  EXPECT_EQ(results[1].tokens, results[0].tokens);
  EXPECT_EQ(results[1].text, results[0].text);
  EXPECT_EQ(results[1].finish_reason, results[0].finish_reason);
}

TEST(CudaDecoderRefusalTest, ForeignCachesAndBadTokensAreRefusedBeforeAnyChange) {
  FEDMOE_REQUIRE_CUDA();
  TwoDecoders model(WeightFormat::kFloat32, false);
  ASSERT_NE(model.cuda, nullptr);
  KvCache host = model.cpu->NewCache();
  KvCache device = model.cuda->NewCache();
  const std::vector<int32_t> tokens = {1, 2, 3};
  const std::vector<int32_t> outside = {4, static_cast<int32_t>(Config().vocab_size)};
  const DecodeSegment on_host{.cache = &host, .tokens = tokens};
  absl::StatusOr<std::span<const float>> refused = model.cuda->Step({&on_host, 1});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("another model or device"), std::string_view::npos)
      << refused.status();
  const DecodeSegment on_device{.cache = &device, .tokens = tokens};
  refused = model.cpu->Step({&on_device, 1});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  const DecodeSegment bad{.cache = &device, .tokens = outside};
  refused = model.cuda->Step({&bad, 1});
  EXPECT_NE(refused.status().message().find("outside the vocabulary"), std::string_view::npos)
      << refused.status();
  const std::vector<int32_t> too_long(65, 1);
  const DecodeSegment past{.cache = &device, .tokens = too_long};
  EXPECT_EQ(model.cuda->Step({&past, 1}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(device.length(), 0);
  EXPECT_EQ(host.length(), 0);
  // The decoder is unharmed.
  EXPECT_TRUE(model.cuda->Step({&on_device, 1}).ok());
  EXPECT_EQ(device.length(), 3);
}

}  // namespace
}  // namespace fedmoe::model
