// The whole model's gradient (cross-entropy plus the balance loss, through the router's top-k
// and renormalisation) against central finite differences of the loss.
#include "model/backward.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/bf16.h"
#include "model/init.h"
#include "tests/kernels/gradient_check.h"
#include "tests/testing_tiny_model.h"

namespace fedmoe::model {
namespace {

struct Case {
  const char* name;
  bool shared;
  bool tied;
  int64_t kv_heads;
  const char* trainable = "all";
};

class ModelGradientTest : public ::testing::TestWithParam<Case> {};

TEST_P(ModelGradientTest, EveryTensorMatchesFiniteDifferences) {
  const Case c = GetParam();
  ModelParameters parameters =
      InitializeModel(testing::GradientCheckConfig(c.shared, c.tied, c.kv_heads), 21);
  const MoeConfig& config = parameters.config();
  constexpr int64_t kBatch = 2;
  constexpr int64_t kSeqLen = 6;
  const std::vector<int32_t> tokens = testing::RandomTokens(kBatch * kSeqLen, config.vocab_size, 4);
  std::vector<int32_t> targets = NextTokenTargets(tokens, kBatch, kSeqLen);
  targets[2] = -1;  // a masked position, as in SFT
  BackwardOptions options;
  options.balance_coefficient = 0.5;
  options.predictions_in_step = 9;

  ForwardPass pass;
  ASSERT_TRUE(Forward(parameters, tokens, kBatch, kSeqLen, pass).ok());
  std::vector<float> gradients(parameters.values().size(), 0.0f);
  BackwardScratch scratch;
  const TrainableSet trainable = *TrainableSet::Parse(c.trainable);
  absl::StatusOr<LossBreakdown> loss =
      Backward(parameters, pass, targets, trainable, options, gradients, scratch);
  ASSERT_TRUE(loss.ok()) << loss.status();
  EXPECT_EQ(loss->predictions, 9);
  EXPECT_GT(loss->balance, 0.4) << "balance term near its uniform value of 0.5";

  // Loss at perturbed parameters; also reports whether any routing choice changed, since the
  // top-k choice is piecewise constant and a finite difference across a switch means nothing.
  auto evaluate = [&](std::vector<int32_t>* routing) {
    ForwardPass perturbed;
    EXPECT_TRUE(Forward(parameters, tokens, kBatch, kSeqLen, perturbed).ok());
    routing->clear();
    for (const LayerActivations& layer : perturbed.layers) {
      routing->insert(routing->end(), layer.expert_index.begin(), layer.expert_index.end());
    }
    return ComputeLoss(parameters, perturbed, targets, options).total();
  };

  std::mt19937 generator(99);
  int checked = 0;
  int skipped = 0;
  int tensors = 0;
  for (const TensorSpec& spec : parameters.layout().tensors()) {
    if (!trainable.Includes(spec.role)) continue;
    ++tensors;
    for (int sample = 0; sample < 3; ++sample) {
      const int64_t index = spec.offset + static_cast<int64_t>(generator() % spec.size);
      const float saved = parameters.values()[index];
      constexpr float kStep = 2e-3f;
      std::vector<int32_t> routing_plus;
      std::vector<int32_t> routing_minus;
      parameters.values()[index] = saved + kStep;
      const double plus = evaluate(&routing_plus);
      parameters.values()[index] = saved - kStep;
      const double minus = evaluate(&routing_minus);
      parameters.values()[index] = saved;
      if (routing_plus != routing_minus) {
        ++skipped;
        continue;
      }
      const double numeric = (plus - minus) / (2.0 * kStep);
      EXPECT_NEAR(gradients[index], numeric, 1e-3 + 3e-2 * std::abs(numeric))
          << spec.name << " [" << index - spec.offset << "]";
      ++checked;
    }
  }
  EXPECT_GT(checked, 3 * tensors - 6) << skipped;
}

INSTANTIATE_TEST_SUITE_P(
    Configurations, ModelGradientTest,
    ::testing::Values(Case{"gqa_shared", true, false, 2}, Case{"mha_tied", false, true, 4},
                      // The product default, where the walk stops early.
                      Case{"default_trainable", true, false, 2, "experts,router"}),
    [](const ::testing::TestParamInfo<Case>& test) { return test.param.name; });

TEST(BackwardTest, FrozenTensorsGetNoGradientAndAccumulationAddsUp) {
  const ModelParameters parameters =
      InitializeModel(testing::GradientCheckConfig(true, false, 2), 3);
  const std::vector<int32_t> tokens = testing::RandomTokens(int64_t{4} * 6, 23, 8);
  const std::vector<int32_t> targets = NextTokenTargets(tokens, 4, 6);
  const TrainableSet default_set;
  BackwardScratch scratch;

  // One batch of 4 sequences...
  ForwardPass whole;
  ASSERT_TRUE(Forward(parameters, tokens, 4, 6, whole).ok());
  std::vector<float> one_step(parameters.values().size(), 0.0f);
  BackwardOptions options{.balance_coefficient = 0.0, .predictions_in_step = 20};
  ASSERT_TRUE(Backward(parameters, whole, targets, default_set, options, one_step, scratch).ok());

  // ... equals two micro-batches of 2 accumulated into one gradient.
  std::vector<float> accumulated(parameters.values().size(), 0.0f);
  for (int half = 0; half < 2; ++half) {
    const std::span<const int32_t> part =
        std::span(tokens).subspan(static_cast<size_t>(half) * 12, 12);
    const std::span<const int32_t> part_targets =
        std::span(targets).subspan(static_cast<size_t>(half) * 12, 12);
    ForwardPass pass;
    ASSERT_TRUE(Forward(parameters, part, 2, 6, pass).ok());
    options.step_share = 0.5;
    ASSERT_TRUE(
        Backward(parameters, pass, part_targets, default_set, options, accumulated, scratch).ok());
  }
  for (const TensorSpec& spec : parameters.layout().tensors()) {
    double magnitude = 0;
    for (int64_t i = spec.offset; i < spec.offset + spec.size; ++i) {
      magnitude += std::abs(one_step[i]);
      ASSERT_NEAR(one_step[i], accumulated[i], 1e-5) << spec.name;
    }
    if (default_set.Includes(spec.role)) {
      EXPECT_GT(magnitude, 0) << spec.name;
    } else {
      EXPECT_EQ(magnitude, 0) << spec.name << " is frozen";
    }
  }
}

// Mixed precision against fp32 on the same model and batch: the logits and every trainable
// tensor's gradient agree to bf16 precision (a few 2^-8 in relative L2 norm). Routed and
// shared experts both run their products in bf16; the router, attention and norms do not, but
// their gradients flow through the experts. A misrouted or misread operand would be off by
// order 1.
TEST(BackwardTest, Bf16ExpertProductsAgreeWithFp32ToBf16Precision) {
  if (absl::Status status = kernels::cpu::CheckBf16MatMul(); !status.ok()) {
    GTEST_SKIP() << status.message();
  }
  MoeConfig config = testing::GradientCheckConfig(true, false, 2);
  config.hidden_size = 32;
  config.intermediate_size = 48;
  config.shared_expert_intermediate_size = 40;
  config.head_dim = 8;
  config.initializer_range = 0.1;
  const ModelParameters parameters = InitializeModel(config, 5);
  const std::vector<int32_t> tokens = testing::RandomTokens(int64_t{4} * 16, config.vocab_size, 9);
  const std::vector<int32_t> targets = NextTokenTargets(tokens, 4, 16);
  const TrainableSet all = *TrainableSet::Parse("all");
  const BackwardOptions options{.balance_coefficient = 0.02, .predictions_in_step = 60};

  std::vector<std::vector<float>> logits;
  std::vector<std::vector<float>> gradients;
  for (const MatMulPrecision precision : {MatMulPrecision::kFloat32, MatMulPrecision::kBfloat16}) {
    ForwardPass pass;
    pass.matmul_precision = precision;
    ASSERT_TRUE(Forward(parameters, tokens, 4, 16, pass).ok());
    logits.emplace_back(pass.logits.begin(), pass.logits.end());
    BackwardScratch scratch;
    std::vector<float> gradient(parameters.values().size(), 0.0f);
    ASSERT_TRUE(Backward(parameters, pass, targets, all, options, gradient, scratch).ok());
    gradients.push_back(std::move(gradient));
  }
  constexpr double kBound = 8 * 0x1.0p-8;
  EXPECT_LT(testing::RelativeDifference(logits[1], logits[0]), kBound);
  EXPECT_GT(testing::RelativeDifference(logits[1], logits[0]), 0) << "bf16 must round something";
  for (const TensorSpec& spec : parameters.layout().tensors()) {
    const auto part = [&spec](const std::vector<float>& values) {
      return std::span(values).subspan(static_cast<size_t>(spec.offset),
                                       static_cast<size_t>(spec.size));
    };
    EXPECT_LT(testing::RelativeDifference(part(gradients[1]), part(gradients[0])), kBound)
        << spec.name;
  }
}

TEST(BackwardTest, TrainableSetParsing) {
  absl::StatusOr<TrainableSet> set = TrainableSet::Parse("experts,attention");
  ASSERT_TRUE(set.ok());
  EXPECT_TRUE(set->routed_experts && set->shared_experts && set->attention);
  EXPECT_FALSE(set->router || set->embeddings);
  EXPECT_EQ(TrainableSet::Parse("experts,brains").status().message(),
            "unknown trainable part 'brains' (routed_experts, shared_experts, experts, router, "
            "attention, norms, embeddings, output, all)");
}

}  // namespace
}  // namespace fedmoe::model
