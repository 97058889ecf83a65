// Generation (model/generation.h) against the full forward pass it must reproduce: the cached
// logits of every position against AdaptedForward over the whole sequence, greedy tokens against
// the full pass's argmax, and the sampler's draws against the softmax they come from; then the
// generation loop's stop strings, streaming and limits.
#include "model/generation.h"

#include <cmath>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/init.h"
#include "tests/model/adapter_testing.h"
#include "tests/testing_tiny_model.h"

namespace fedmoe::model {
namespace {

LoraConfig EveryLinear() {
  LoraConfig lora;
  lora.rank = 3;
  lora.alpha = 6;
  lora.targets = *ParseLoraTargets("all");
  lora.seed = 5;
  return lora;
}

// Grouped KV heads, a shared expert and a window shorter than the sequences below.
MoeConfig WindowedConfig(int64_t vocab) {
  MoeConfig config = testing::GradientCheckConfig(true, false, 2);
  config.vocab_size = vocab;
  config.eos_token_id = vocab - 1;
  config.sliding_window = 6;
  config.max_position_embeddings = 40;
  return config;
}

// The full pass's logits at every position of `tokens`.
std::vector<float> FullLogits(const FrozenBase& base, const LoraAdapters& adapters,
                              const std::vector<int32_t>& tokens) {
  AdaptedPass pass;
  EXPECT_TRUE(
      AdaptedForward(base, adapters, tokens, 1, static_cast<int64_t>(tokens.size()), pass).ok());
  return {pass.model.logits.begin(), pass.model.logits.end()};
}

TEST(GeneratorTest, CachedLogitsEqualTheFullPassAtEveryPosition) {
  const MoeConfig config = WindowedConfig(23);
  const ModelParameters parameters = InitializeModel(config, 8);
  for (const WeightFormat format : {WeightFormat::kFloat32, WeightFormat::kInt8}) {
    SCOPED_TRACE(std::string(WeightFormatName(format)));
    const FrozenBase base = FrozenBase::FromParameters(parameters, format, 8);
    LoraAdapters adapters = *NewAdapters(base, EveryLinear());
    testing::PerturbAdapters(adapters, 2, 0.2F);
    absl::StatusOr<Generator> generator = Generator::Create(base, adapters);
    ASSERT_TRUE(generator.ok()) << generator.status();
    // A prompt of 7, then 13 tokens one by one: the window of 6 slides past the prompt.
    std::vector<int32_t> tokens = testing::RandomTokens(20, config.vocab_size, 3);
    const std::vector<int32_t> prompt(tokens.begin(), tokens.begin() + 7);
    absl::StatusOr<std::span<const float>> logits = generator->Start(prompt);
    for (size_t length = 7; length <= tokens.size(); ++length) {
      ASSERT_TRUE(logits.ok()) << logits.status();
      ASSERT_EQ(generator->length(), static_cast<int64_t>(length));
      const std::vector<float> full =
          FullLogits(base, adapters, {tokens.begin(), tokens.begin() + length});
      const float* expected = full.data() + (length - 1) * config.vocab_size;
      for (int64_t v = 0; v < config.vocab_size; ++v) {
        ASSERT_NEAR((*logits)[v], expected[v], 1e-4 * (1 + std::abs(expected[v])))
            << "position " << length - 1 << ", token " << v;
      }
      if (length < tokens.size()) logits = generator->Append(tokens[length]);
    }
    // A new sequence starts from an empty cache.
    ASSERT_TRUE(generator->Start({tokens.begin() + 3, tokens.begin() + 5}).ok());
    EXPECT_EQ(generator->length(), 2);
  }
}

TEST(GeneratorTest, GreedyTokensAreTheFullPassArgmaxPositionByPosition) {
  const MoeConfig config = WindowedConfig(258);
  const FrozenBase base =
      FrozenBase::FromParameters(InitializeModel(config, 9), WeightFormat::kInt8, 8);
  LoraAdapters adapters = *NewAdapters(base, EveryLinear());
  testing::PerturbAdapters(adapters, 4, 0.2F);
  const std::unique_ptr<Tokenizer> tokenizer = MakeByteTokenizer(config.vocab_size);
  absl::StatusOr<Generator> generator = Generator::Create(base, adapters);
  ASSERT_TRUE(generator.ok());
  GenerationOptions options;
  options.max_tokens = 16;
  absl::StatusOr<GenerationResult> result =
      Generate(*generator, *tokenizer, "wire transfer", options, [](std::string_view) {});
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_FALSE(result->tokens.empty());
  std::vector<int32_t> sequence = result->prompt_tokens;
  sequence.insert(sequence.end(), result->tokens.begin(), result->tokens.end() - 1);
  const std::vector<float> full = FullLogits(base, adapters, sequence);
  for (size_t i = 0; i < result->tokens.size(); ++i) {
    const size_t position = result->prompt_tokens.size() - 1 + i;
    const float* row = full.data() + position * config.vocab_size;
    const auto argmax = static_cast<int32_t>(std::max_element(row, row + config.vocab_size) - row);
    EXPECT_EQ(result->tokens[i], argmax) << "generated token " << i;
  }
}

TEST(TokenSamplerTest, DrawsFollowTheSoftmaxAndTopPCutsTheTail) {
  // Probabilities 0.5, 0.3, 0.2 at temperature 1.
  const std::vector<float> logits = {std::log(0.5F), std::log(0.3F), std::log(0.2F)};
  constexpr int kDraws = 20000;
  const auto frequencies = [&](SamplingOptions options, uint64_t seed) {
    TokenSampler sampler(options, seed);
    std::map<int32_t, int> counts;
    for (int i = 0; i < kDraws; ++i) ++counts[sampler.Next(logits)];
    return counts;
  };
  std::map<int32_t, int> counts = frequencies({.temperature = 1, .top_p = 1}, 11);
  for (const auto& [token, expected] : std::map<int32_t, double>{{0, 0.5}, {1, 0.3}, {2, 0.2}}) {
    // Five binomial standard deviations.
    EXPECT_NEAR(counts[token], expected * kDraws, 5 * std::sqrt(kDraws * expected * (1 - expected)))
        << "token " << token;
  }
  // top_p 0.6 keeps the two most likely (0.5 + 0.3 reaches it), renormalised to 5/8 and 3/8.
  counts = frequencies({.temperature = 1, .top_p = 0.6}, 12);
  EXPECT_EQ(counts[2], 0);
  EXPECT_NEAR(counts[0], 0.625 * kDraws, 5 * std::sqrt(kDraws * 0.625 * 0.375));
  // A small top_p or temperature 0 is the argmax; the same seed draws the same tokens.
  EXPECT_EQ(frequencies({.temperature = 1, .top_p = 0.1}, 13)[0], kDraws);
  EXPECT_EQ(frequencies({.temperature = 0, .top_p = 1}, 14)[0], kDraws);
  EXPECT_EQ(frequencies({.temperature = 0.7, .top_p = 0.9}, 15),
            frequencies({.temperature = 0.7, .top_p = 0.9}, 15));

  EXPECT_FALSE((SamplingOptions{.temperature = -1, .top_p = 1}).Validate().ok());
  EXPECT_FALSE((SamplingOptions{.temperature = NAN, .top_p = 1}).Validate().ok());
  EXPECT_FALSE((SamplingOptions{.temperature = 1, .top_p = 0}).Validate().ok());
  EXPECT_FALSE((SamplingOptions{.temperature = 1, .top_p = 1.5}).Validate().ok());
}

class GenerateTest : public ::testing::Test {
 protected:
  GenerateTest()
      : config_(WindowedConfig(258)),
        base_(FrozenBase::FromParameters(InitializeModel(config_, 10), WeightFormat::kFloat32)),
        adapters_(BaseOnlyAdapters(base_)),
        tokenizer_(MakeByteTokenizer(config_.vocab_size)) {}

  // The text handed to on_text, piece by piece, and the result.
  absl::StatusOr<GenerationResult> Run(const GenerationOptions& options,
                                       std::vector<std::string>& pieces,
                                       std::string_view prompt = "the invoice") {
    absl::StatusOr<Generator> generator = Generator::Create(base_, adapters_);
    if (!generator.ok()) return generator.status();
    return Generate(*generator, *tokenizer_, prompt, options,
                    [&](std::string_view piece) { pieces.emplace_back(piece); });
  }

  MoeConfig config_;
  FrozenBase base_;
  LoraAdapters adapters_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_F(GenerateTest, AStopStringEndsTheTextBeforeItAndNoPieceHoldsAnyOfIt) {
  GenerationOptions options;
  options.max_tokens = 20;
  options.sampling = {.temperature = 0.9, .top_p = 0.95};
  options.seed = 3;
  std::vector<std::string> pieces;
  absl::StatusOr<GenerationResult> free = Run(options, pieces);
  ASSERT_TRUE(free.ok()) << free.status();
  std::string streamed;
  for (const std::string& piece : pieces) streamed += piece;
  EXPECT_EQ(streamed, free->text) << "the pieces make up the text";
  ASSERT_GE(free->text.size(), 8u);
  EXPECT_EQ(free->finish_reason, "length");
  EXPECT_EQ(free->tokens.size(), 20u);

  // Stop at a two-byte string from the middle of what the same seed generates.
  const std::string stop = free->text.substr(5, 2);
  const size_t at = free->text.find(stop);
  options.stop = {stop, "a string that never comes"};
  pieces.clear();
  absl::StatusOr<GenerationResult> stopped = Run(options, pieces);
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  EXPECT_EQ(stopped->text, free->text.substr(0, at));
  EXPECT_EQ(stopped->finish_reason, "stop");
  streamed.clear();
  for (const std::string& piece : pieces) streamed += piece;
  EXPECT_EQ(streamed, stopped->text);
}

TEST_F(GenerateTest, LimitsEndGenerationOrAreRefused) {
  std::vector<std::string> pieces;
  GenerationOptions options;
  options.max_tokens = 1000;  // past max_position_embeddings (40)
  absl::StatusOr<GenerationResult> result = Run(options, pieces);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->finish_reason, "length");
  EXPECT_EQ(result->prompt_tokens.size() + result->tokens.size(), 41u)
      << "the last token is drawn after the 40th, which the model still takes";

  EXPECT_EQ(Run(options, pieces, std::string(41, 'x')).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Run(options, pieces, "").status().code(), absl::StatusCode::kInvalidArgument);
  options.max_tokens = 0;
  EXPECT_EQ(Run(options, pieces).status().code(), absl::StatusCode::kInvalidArgument);
  options.max_tokens = 4;
  options.stop = {""};
  EXPECT_EQ(Run(options, pieces).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedmoe::model
