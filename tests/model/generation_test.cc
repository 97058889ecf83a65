// Generation (model/generation.h) against the full forward pass it must reproduce: the cached
// logits of every position against AdaptedForward over the whole sequence, greedy tokens against
// the full pass's argmax, batched steps of several sequences against each alone, and the
// sampler's draws against the softmax they come from; then the text stream's pieces and the
// generation loop's stop strings, streaming and limits.
#include "model/generation.h"

#include <cmath>
#include <map>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/data.h"
#include "model/init.h"
#include "model/prefix_cache.h"
#include "tests/model/adapter_testing.h"
#include "tests/testing_tiny_model.h"

namespace fedmoe::model {
namespace {

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
  // Int8 activations are quantized per token, so a token's products do not depend on the rows
  // beside it and the cache still reproduces the full pass. Its tolerance is wider: the two
  // passes' inputs differ in the last bits, which may move a value across a rounding boundary
  // of the quantization (one level of one group, about 1e-3 of a logit here).
  for (const auto& [format, int8_activations] :
       {std::pair{WeightFormat::kFloat32, false}, std::pair{WeightFormat::kInt8, false},
        std::pair{WeightFormat::kInt8, true}}) {
    SCOPED_TRACE(std::string(WeightFormatName(format)) +
                 (int8_activations ? " with int8 activations" : ""));
    FrozenBase base = FrozenBase::FromParameters(parameters, format, 8);
    if (int8_activations) {
      ASSERT_TRUE(base.QuantizeActivations().ok());
    }
    const double tolerance = int8_activations ? 3e-3 : 1e-4;
    LoraAdapters adapters = *NewAdapters(base, testing::EveryLinearLora());
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
        ASSERT_NEAR((*logits)[v], expected[v], tolerance * (1 + std::abs(expected[v])))
            << "position " << length - 1 << ", token " << v;
      }
      if (length < tokens.size()) logits = generator->Append(tokens[length]);
    }
    // A new sequence starts from an empty cache.
    ASSERT_TRUE(generator->Start({tokens.begin() + 3, tokens.begin() + 5}).ok());
    EXPECT_EQ(generator->length(), 2);
  }
}

// Logits row `row` of a step against the full pass's last position over `tokens`.
void ExpectLastLogits(std::span<const float> logits, int64_t row, const FrozenBase& base,
                      const LoraAdapters& adapters, const std::vector<int32_t>& tokens) {
  const int64_t vocab = base.config().vocab_size;
  const std::vector<float> full = FullLogits(base, adapters, tokens);
  const float* expected = full.data() + (static_cast<int64_t>(tokens.size()) - 1) * vocab;
  for (int64_t v = 0; v < vocab; ++v) {
    ASSERT_NEAR(logits[static_cast<size_t>(row * vocab + v)], expected[v],
                1e-4 * (1 + std::abs(expected[v])))
        << "segment " << row << " at length " << tokens.size() << ", token " << v;
  }
}

// The plain fp32 model the cache tests run on, with its decoder.
struct PlainModel {
  MoeConfig config = WindowedConfig(23);
  FrozenBase base = FrozenBase::FromParameters(InitializeModel(config, 6), WeightFormat::kFloat32);
  LoraAdapters adapters = BaseOnlyAdapters(base);
  std::unique_ptr<BatchDecoder> decoder = *BatchDecoder::Create(base, adapters);
};

TEST(BatchDecoderTest, AStepOfManySequencesEqualsEachSequenceAlone) {
  const MoeConfig config = WindowedConfig(23);
  const FrozenBase base =
      FrozenBase::FromParameters(InitializeModel(config, 4), WeightFormat::kInt8, 8);
  LoraAdapters adapters = *NewAdapters(base, testing::EveryLinearLora());
  testing::PerturbAdapters(adapters, 3, 0.2F);
  absl::StatusOr<std::unique_ptr<BatchDecoder>> decoder = BatchDecoder::Create(base, adapters);
  ASSERT_TRUE(decoder.ok()) << decoder.status();
  std::vector<std::vector<int32_t>> texts = {testing::RandomTokens(16, config.vocab_size, 1),
                                             testing::RandomTokens(16, config.vocab_size, 2),
                                             testing::RandomTokens(16, config.vocab_size, 3)};
  std::vector<KvCache> caches;
  for (int i = 0; i < 3; ++i) caches.push_back((*decoder)->NewCache());
  // Each step names how many new tokens each sequence gets (0: it sits the step out): a prompt
  // alone, then a decode row beside two prompts of other lengths (one past the window), then
  // decode rows and a prompt's second part.
  const std::vector<std::vector<size_t>> steps = {{5, 0, 0}, {1, 4, 8}, {1, 1, 1}, {1, 3, 1}};
  std::vector<size_t> lengths(3, 0);
  for (const std::vector<size_t>& step : steps) {
    std::vector<DecodeSegment> segments;
    std::vector<size_t> in_step;
    for (size_t i = 0; i < 3; ++i) {
      if (step[i] == 0) continue;
      segments.push_back(
          {.cache = &caches[i],
           .tokens = std::span<const int32_t>(texts[i]).subspan(lengths[i], step[i])});
      in_step.push_back(i);
      lengths[i] += step[i];
    }
    absl::StatusOr<std::span<const float>> logits = (*decoder)->Step(segments);
    ASSERT_TRUE(logits.ok()) << logits.status();
    ASSERT_EQ(logits->size(), segments.size() * static_cast<size_t>(config.vocab_size));
    for (size_t row = 0; row < in_step.size(); ++row) {
      const size_t i = in_step[row];
      EXPECT_EQ(caches[i].length(), static_cast<int64_t>(lengths[i]));
      ExpectLastLogits(
          *logits, static_cast<int64_t>(row), base, adapters,
          {texts[i].begin(), texts[i].begin() + static_cast<std::ptrdiff_t>(lengths[i])});
    }
  }
}

TEST(BatchDecoderTest, ACopiedPrefixContinuesAsTheWholePromptWould) {
  PlainModel model;
  const MoeConfig& config = model.config;
  const FrozenBase& base = model.base;
  const LoraAdapters& adapters = model.adapters;
  BatchDecoder* decoder = model.decoder.get();
  const std::vector<int32_t> shared = testing::RandomTokens(12, config.vocab_size, 8);
  KvCache first = decoder->NewCache();
  const DecodeSegment whole{.cache = &first, .tokens = shared};
  ASSERT_TRUE(decoder->Step({&whole, 1}).ok());
  EXPECT_EQ(first.bytes(),
            2 * 12 * static_cast<size_t>(config.num_hidden_layers * config.key_value_width()) *
                sizeof(float));

  // A second prompt shares the first 9 tokens and goes on differently.
  std::vector<int32_t> other(shared.begin(), shared.begin() + 9);
  for (const int32_t token : testing::RandomTokens(4, config.vocab_size, 9)) other.push_back(token);
  absl::StatusOr<KvCache> prefix = first.Prefix(9);
  ASSERT_TRUE(prefix.ok()) << prefix.status();
  KvCache second = *std::move(prefix);
  ASSERT_EQ(second.length(), 9);
  EXPECT_EQ(first.length(), 12);
  const DecodeSegment rest{.cache = &second, .tokens = std::span<const int32_t>(other).subspan(9)};
  absl::StatusOr<std::span<const float>> logits = decoder->Step({&rest, 1});
  ASSERT_TRUE(logits.ok()) << logits.status();
  ExpectLastLogits(*logits, 0, base, adapters, other);

  // Truncating goes back to a prefix too.
  second.Truncate(5);
  const DecodeSegment again{.cache = &second,
                            .tokens = std::span<const int32_t>(other).subspan(5, 8)};
  logits = decoder->Step({&again, 1});
  ASSERT_TRUE(logits.ok()) << logits.status();
  ExpectLastLogits(*logits, 0, base, adapters, other);
}

TEST(BatchDecoderTest, ABadStepIsRefusedBeforeAnyCacheChanges) {
  PlainModel model;
  const MoeConfig& config = model.config;
  BatchDecoder* decoder = model.decoder.get();
  KvCache cache = decoder->NewCache();
  const std::vector<int32_t> tokens = {1, 2, 3};
  const std::vector<int32_t> outside = {4, 23};
  const DecodeSegment good{.cache = &cache, .tokens = tokens};
  const std::vector<std::pair<std::vector<DecodeSegment>, std::string>> bad = {
      {{good, good}, "twice"},
      {{good, {.cache = &cache, .tokens = {}}}, "no tokens"},
      {{{.cache = &cache, .tokens = outside}}, "outside the vocabulary"},
  };
  for (const auto& [segments, why] : bad) {
    absl::StatusOr<std::span<const float>> logits = decoder->Step(segments);
    EXPECT_EQ(logits.status().code(), absl::StatusCode::kInvalidArgument) << why;
    EXPECT_NE(logits.status().message().find(why), std::string_view::npos)
        << logits.status().message();
    EXPECT_EQ(cache.length(), 0);
  }
  // A cache of a model with one more layer.
  MoeConfig deeper_config = config;
  ++deeper_config.num_hidden_layers;
  const FrozenBase deeper =
      FrozenBase::FromParameters(InitializeModel(deeper_config, 6), WeightFormat::kFloat32);
  const LoraAdapters deeper_adapters = BaseOnlyAdapters(deeper);
  KvCache foreign = (*BatchDecoder::Create(deeper, deeper_adapters))->NewCache();
  const DecodeSegment wrong{.cache = &foreign, .tokens = tokens};
  EXPECT_EQ(decoder->Step({&wrong, 1}).status().code(), absl::StatusCode::kInvalidArgument);
  const std::vector<int32_t> too_long(41, 1);
  const DecodeSegment past{.cache = &cache, .tokens = too_long};
  EXPECT_EQ(decoder->Step({&past, 1}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.length(), 0);
}

TEST(PrefixCacheTest, ReusesTheLongestSharedPrefixAndEvictsTheLeastRecentlyUsed) {
  PlainModel model;
  const MoeConfig& config = model.config;
  const FrozenBase& base = model.base;
  const LoraAdapters& adapters = model.adapters;
  BatchDecoder* decoder = model.decoder.get();
  const auto prefilled = [&](const std::vector<int32_t>& prompt) {
    KvCache cache = decoder->NewCache();
    const DecodeSegment segment{.cache = &cache, .tokens = prompt};
    EXPECT_TRUE(decoder->Step({&segment, 1}).ok());
    return cache;
  };
  const std::vector<int32_t> a = testing::RandomTokens(10, config.vocab_size, 1);
  std::vector<int32_t> b = testing::RandomTokens(10, config.vocab_size, 2);
  const size_t one_entry = prefilled(a).bytes();
  PrefixCache cache(2 * one_entry, 4);
  cache.Remember(a, prefilled(a));
  cache.Remember(b, prefilled(b));
  EXPECT_EQ(cache.entries(), 2u);
  EXPECT_EQ(cache.bytes(), 2 * one_entry);

  // A prompt that shares 7 tokens with a, and one equal to a (its last token must still run).
  std::vector<int32_t> shares_seven(a.begin(), a.begin() + 7);
  shares_seven.push_back((a[7] + 1) % 23);
  shares_seven.push_back(3);
  KvCache reused = decoder->NewCache();
  EXPECT_EQ(cache.Reuse(shares_seven, reused), 7);
  EXPECT_EQ(reused.length(), 7);
  const DecodeSegment rest{.cache = &reused,
                           .tokens = std::span<const int32_t>(shares_seven).subspan(7)};
  absl::StatusOr<std::span<const float>> logits = decoder->Step({&rest, 1});
  ASSERT_TRUE(logits.ok());
  ExpectLastLogits(*logits, 0, base, adapters, shares_seven);
  KvCache same = decoder->NewCache();
  EXPECT_EQ(cache.Reuse(a, same), 9);
  KvCache none = decoder->NewCache();
  EXPECT_EQ(cache.Reuse(std::vector<int32_t>{(a[0] + 1) % 23, 1, 2}, none), 0);
  EXPECT_EQ(none.length(), 0);

  // A third prompt evicts b, used least recently; a short one is not remembered.
  const std::vector<int32_t> c = testing::RandomTokens(10, config.vocab_size, 3);
  cache.Remember(c, prefilled(c));
  const std::vector<int32_t> short_prompt = {1, 2};
  cache.Remember(short_prompt, prefilled(short_prompt));
  EXPECT_EQ(cache.entries(), 2u);
  KvCache probe = decoder->NewCache();
  EXPECT_EQ(cache.Reuse(b, probe), 0) << "b was evicted";
  EXPECT_EQ(cache.Reuse(a, probe), 9);
  EXPECT_EQ(cache.Reuse(c, probe), 9);
  // A longer prompt that starts with a replaces it.
  std::vector<int32_t> longer = a;
  longer.insert(longer.end(), {4, 5, 6});
  cache.Remember(longer, prefilled(longer));
  EXPECT_EQ(cache.Reuse(longer, probe), 12);
  EXPECT_LE(cache.bytes(), 2 * one_entry);
}

TEST(EncodeChatTest, AConversationIsLaidOutAsSupervisedExamples) {
  const std::unique_ptr<Tokenizer> tokenizer = MakeByteTokenizer(258);
  const auto bytes = [](std::string_view text) {
    std::vector<int32_t> ids;
    for (const char c : text) ids.push_back(static_cast<unsigned char>(c));
    return ids;
  };
  const std::vector<ChatMessage> one = {{"user", "hi"}};
  EXPECT_EQ(*EncodeChat(*tokenizer, one, 257), bytes("hi"));
  const std::vector<ChatMessage> turns = {
      {"system", "be brief"}, {"user", "a?"}, {"assistant", "b."}, {"user", "c?"}};
  std::vector<int32_t> expected = bytes("be brief\n\na?b.");
  expected.push_back(257);
  for (const int32_t id : bytes("c?")) expected.push_back(id);
  EXPECT_EQ(*EncodeChat(*tokenizer, turns, 257), expected);
  EXPECT_EQ(*EncodeExample(*tokenizer, "a?", "b.", 257),
            std::vector<int32_t>(expected.begin() + 10, expected.begin() + 15));

  const std::vector<std::pair<std::vector<ChatMessage>, std::string>> bad = {
      {{}, "no messages"},
      {{{"assistant", "x"}, {"user", "y"}}, "no user turn before it"},
      {{{"user", "x"}, {"assistant", "y"}}, "must end with a user message"},
      {{{"tool", "x"}}, "role \"tool\""}};
  for (const auto& [messages, why] : bad) {
    absl::StatusOr<std::vector<int32_t>> tokens = EncodeChat(*tokenizer, messages, 257);
    EXPECT_EQ(tokens.status().code(), absl::StatusCode::kInvalidArgument) << why;
    EXPECT_NE(tokens.status().message().find(why), std::string_view::npos)
        << tokens.status().message();
  }
}

TEST(TextStreamTest, PiecesEndOnWholeCharactersAndMakeUpTheText) {
  const std::unique_ptr<Tokenizer> tokenizer = MakeByteTokenizer(258);
  // Two-, three- and four-byte characters, one byte a token, and a special token (256) that
  // decodes to nothing.
  const std::string text = "héllo, 世界 🙂 done";
  std::vector<int32_t> tokens;
  for (const char byte : text) tokens.push_back(static_cast<unsigned char>(byte));
  tokens.insert(tokens.begin() + 3, 256);
  TextStream stream(*tokenizer, {});
  std::string streamed;
  for (const int32_t token : tokens) {
    absl::StatusOr<std::string> piece = stream.Add(token);
    ASSERT_TRUE(piece.ok()) << piece.status();
    if (!piece->empty()) {
      const auto lead = static_cast<unsigned char>(piece->front());
      EXPECT_NE(lead & 0xC0, 0x80) << "a piece starts inside a character";
    }
    streamed += *piece;
    // Everything whole so far has been handed on.
    EXPECT_EQ(streamed, stream.text());
  }
  absl::StatusOr<std::string> rest = stream.Finish();
  ASSERT_TRUE(rest.ok());
  EXPECT_EQ(streamed + *rest, text);

  // A stop string that spans tokens and a multi-byte character.
  TextStream stopping(*tokenizer, {"界 🙂", ""});
  streamed.clear();
  for (const int32_t token : tokens) {
    absl::StatusOr<std::string> piece = stopping.Add(token);
    ASSERT_TRUE(piece.ok());
    streamed += *piece;
    if (stopping.stopped()) break;
  }
  EXPECT_TRUE(stopping.stopped());
  EXPECT_EQ(streamed, "héllo, 世");
  EXPECT_EQ(stopping.text(), "héllo, 世");
  EXPECT_EQ(*stopping.Finish(), "");

  // A character cut off by the end of generation is handed on as it is.
  TextStream cut(*tokenizer, {});
  std::string all;
  for (const int32_t token : {0x61, 0xE4, 0xB8}) all += *cut.Add(token);
  all += *cut.Finish();
  EXPECT_EQ(all, "a\xE4\xB8");
}

TEST(GeneratorTest, GreedyTokensAreTheFullPassArgmaxPositionByPosition) {
  const MoeConfig config = WindowedConfig(258);
  const FrozenBase base =
      FrozenBase::FromParameters(InitializeModel(config, 9), WeightFormat::kInt8, 8);
  LoraAdapters adapters = *NewAdapters(base, testing::EveryLinearLora());
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
