#include "model/forward.h"

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/threads.h"
#include "model/evaluation.h"
#include "model/init.h"
#include "tests/model/naive_reference.h"

namespace fedmoe::model {
namespace {

struct TinyCase {
  std::string name;
  int64_t heads;
  int64_t kv_heads;
  int64_t top_k;
  int64_t shared_experts;
  int64_t sliding_window = 0;
  bool tied = false;
  int64_t head_dim = 0;  // 0: hidden / heads
};

void PrintTo(const TinyCase& c, std::ostream* out) { *out << c.name; }

MoeConfig TinyConfig(const TinyCase& c) {
  MoeConfig config;
  config.vocab_size = 61;
  config.hidden_size = 32;
  config.intermediate_size = 24;
  config.num_hidden_layers = 2;
  config.num_attention_heads = c.heads;
  config.num_key_value_heads = c.kv_heads;
  config.head_dim = c.head_dim > 0 ? c.head_dim : 32 / c.heads;
  config.num_local_experts = 4;
  config.num_experts_per_tok = c.top_k;
  config.n_shared_experts = c.shared_experts;
  config.shared_expert_intermediate_size = c.shared_experts > 0 ? 12 : 0;
  config.rope_theta = 10000;
  config.max_position_embeddings = 64;
  config.sliding_window = c.sliding_window;
  config.tie_word_embeddings = c.tied;
  // Wide enough weights that attention and routing are far from uniform.
  config.initializer_range = 0.25;
  return config;
}

std::vector<int32_t> RandomTokens(int64_t count, int64_t vocab, uint32_t seed) {
  std::mt19937 generator(seed);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> tokens(static_cast<size_t>(count));
  for (int32_t& t : tokens) t = token(generator);
  return tokens;
}

class TinyModelTest : public ::testing::TestWithParam<TinyCase> {};

TEST_P(TinyModelTest, LogitsLossAndRoutingMatchTheNaiveDoubleReference) {
  const MoeConfig config = TinyConfig(GetParam());
  const ModelParameters parameters = InitializeModel(config, 7);
  constexpr int64_t kBatch = 3;
  constexpr int64_t kSeqLen = 9;
  const std::vector<int32_t> tokens = RandomTokens(kBatch * kSeqLen, config.vocab_size, 11);

  ForwardPass pass;
  ASSERT_TRUE(Forward(parameters, tokens, kBatch, kSeqLen, pass).ok());
  const testing::ReferenceOutput reference =
      testing::NaiveForward(parameters, tokens, kBatch, kSeqLen);

  ASSERT_EQ(pass.logits.size(), reference.logits.size());
  double largest_logit = 0;
  double largest_error = 0;
  for (size_t i = 0; i < pass.logits.size(); ++i) {
    largest_logit = std::max(largest_logit, std::abs(reference.logits[i]));
    largest_error = std::max(largest_error, std::abs(pass.logits[i] - reference.logits[i]));
  }
  EXPECT_GT(largest_logit, 0.5) << "the test model should produce non-trivial logits";
  EXPECT_LT(largest_error, 1e-4 * largest_logit) << "largest logit " << largest_logit;

  const LossSum loss =
      CrossEntropy(pass, NextTokenTargets(tokens, kBatch, kSeqLen), config.vocab_size);
  EXPECT_EQ(loss.predictions, kBatch * (kSeqLen - 1));
  const double mean = loss.total / static_cast<double>(loss.predictions);
  EXPECT_NEAR(mean, reference.loss, 1e-4 * reference.loss);

  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    const LayerActivations& activations = pass.layers[static_cast<size_t>(layer)];
    for (int64_t row = 0; row < kBatch * kSeqLen; ++row) {
      for (int64_t j = 0; j < config.num_experts_per_tok; ++j) {
        const auto slot = static_cast<size_t>(row * config.num_experts_per_tok + j);
        EXPECT_EQ(activations.expert_index[slot], reference.experts[layer][row][j])
            << "layer " << layer << " row " << row;
        EXPECT_NEAR(activations.expert_weight[slot], reference.weights[layer][row][j], 1e-5);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Configurations, TinyModelTest,
                         ::testing::Values(TinyCase{"mha_top1", 4, 4, 1, 0},
                                           TinyCase{"gqa_top2", 4, 2, 2, 0},
                                           TinyCase{"gqa_top2_shared", 4, 1, 2, 2},
                                           TinyCase{"mha_top2_shared_tied", 2, 2, 2, 1, 0, true},
                                           TinyCase{"gqa_top1_window4", 4, 2, 1, 0, 4},
                                           TinyCase{"explicit_head_dim", 4, 2, 2, 1, 0, false, 6}),
                         [](const ::testing::TestParamInfo<TinyCase>& test) {
                           return test.param.name;
                         });

TEST(ForwardTest, SequencesInABatchDoNotSeeEachOther) {
  const MoeConfig config = TinyConfig({"gqa", 4, 2, 2, 1});
  const ModelParameters parameters = InitializeModel(config, 3);
  const std::vector<int32_t> tokens = RandomTokens(int64_t{2} * 7, config.vocab_size, 5);
  ForwardPass together;
  ASSERT_TRUE(Forward(parameters, tokens, 2, 7, together).ok());
  for (int64_t sequence = 0; sequence < 2; ++sequence) {
    const std::vector<int32_t> alone_tokens(tokens.begin() + sequence * 7,
                                            tokens.begin() + (sequence + 1) * 7);
    ForwardPass alone;
    ASSERT_TRUE(Forward(parameters, alone_tokens, 1, 7, alone).ok());
    for (size_t i = 0; i < alone.logits.size(); ++i) {
      EXPECT_NEAR(alone.logits[i], together.logits[sequence * alone.logits.size() + i], 1e-5);
    }
  }
}

TEST(ForwardTest, OneThreadAndTwoThreadsAgree) {
  const MoeConfig config = TinyConfig({"gqa", 4, 2, 2, 1});
  const ModelParameters parameters = InitializeModel(config, 3);
  const std::vector<int32_t> tokens = RandomTokens(int64_t{4} * 16, config.vocab_size, 9);
  ForwardPass one;
  ForwardPass two;
  kernels::cpu::SetCpuThreads(1);
  ASSERT_TRUE(Forward(parameters, tokens, 4, 16, one).ok());
  kernels::cpu::SetCpuThreads(2);
  ASSERT_TRUE(Forward(parameters, tokens, 4, 16, two).ok());
  kernels::cpu::SetCpuThreads(0);
  for (size_t i = 0; i < one.logits.size(); ++i) EXPECT_NEAR(one.logits[i], two.logits[i], 1e-5);
}

TEST(ForwardTest, BadInputsAreSpecificErrors) {
  const MoeConfig config = TinyConfig({"mha", 4, 4, 1, 0});
  const ModelParameters parameters = InitializeModel(config, 1);
  ForwardPass pass;
  std::vector<int32_t> tokens = {1, 2, 61};
  absl::Status status = Forward(parameters, tokens, 1, 3, pass);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("token 61 at position 2 is outside the vocabulary"),
            std::string::npos)
      << status;
  tokens = {1, 2, 3};
  status = Forward(parameters, tokens, 2, 2, pass);
  EXPECT_NE(status.message().find("got 3 tokens for batch 2"), std::string::npos) << status;
  const std::vector<int32_t> long_sequence(65, 1);
  status = Forward(parameters, long_sequence, 1, 65, pass);
  EXPECT_NE(status.message().find("beyond max_position_embeddings 64"), std::string::npos)
      << status;
}

TEST(EvaluationTest, WindowsFollowTheInterfaceContract) {
  const MoeConfig config = TinyConfig({"gqa", 4, 2, 2, 1});
  const ModelParameters parameters = InitializeModel(config, 5);
  const std::vector<int32_t> tokens = RandomTokens(23, config.vocab_size, 2);

  // 23 tokens in windows of 8: two full windows (7 predictions each) and a tail of 7 (6).
  absl::StatusOr<Evaluation> evaluation = Evaluate(parameters, tokens, 8, /*batch=*/1);
  ASSERT_TRUE(evaluation.ok()) << evaluation.status();
  EXPECT_EQ(evaluation->predictions, 7 + 7 + 6);

  double expected_total = 0;
  for (const auto& [first, length] : {std::pair{0, 8}, std::pair{8, 8}, std::pair{16, 7}}) {
    const std::vector<int32_t> window(tokens.begin() + first, tokens.begin() + first + length);
    expected_total += testing::NaiveForward(parameters, window, 1, length).loss * (length - 1);
  }
  EXPECT_NEAR(evaluation->loss, expected_total / 20, 1e-4 * evaluation->loss);

  // Batching the windows changes nothing; a one-token tail is dropped.
  absl::StatusOr<Evaluation> batched = Evaluate(parameters, tokens, 8, /*batch=*/4);
  ASSERT_TRUE(batched.ok());
  EXPECT_NEAR(batched->loss, evaluation->loss, 1e-6);
  const std::vector<int32_t> seventeen(tokens.begin(), tokens.begin() + 17);
  absl::StatusOr<Evaluation> dropped_tail = Evaluate(parameters, seventeen, 8);
  ASSERT_TRUE(dropped_tail.ok());
  EXPECT_EQ(dropped_tail->predictions, 14);

  EXPECT_EQ(Evaluate(parameters, std::vector<int32_t>{4}, 8).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Evaluate(parameters, tokens, 1).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedmoe::model
