// The serving engine (client/serve/engine.h) against generation alone: requests that share the
// batch, join it at different steps and reuse cached prefixes produce what `Generate` produces
// for each by itself; then the queue's bound, the limits, cancellation and a model switch.
#include "client/serve/engine.h"

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "model/init.h"
#include "tests/testing_tiny_model.h"

namespace fedmoe::client::serve {
namespace {

model::MoeConfig ServingConfig() {
  model::MoeConfig config = testing::GradientCheckConfig(true, false, 2);
  config.vocab_size = 258;
  config.eos_token_id = 257;
  config.max_position_embeddings = 96;
  config.sliding_window = 40;
  return config;
}

std::shared_ptr<const ServedModel> TinyModel(const std::string& id, uint64_t seed) {
  const model::MoeConfig config = ServingConfig();
  model::FrozenBase base = model::FrozenBase::FromParameters(model::InitializeModel(config, seed),
                                                             model::WeightFormat::kFloat32);
  model::LoraAdapters adapters = model::BaseOnlyAdapters(base);
  auto served = std::make_shared<ServedModel>(
      ServedModel{.id = id,
                  .base = std::move(base),
                  .adapters = std::move(adapters),
                  .tokenizer = model::MakeByteTokenizer(config.vocab_size)});
  return served;
}

// What Generate makes of `prompt` alone.
model::GenerationResult Alone(const ServedModel& served, const std::string& prompt,
                              const model::GenerationOptions& options) {
  absl::StatusOr<model::Generator> generator =
      model::Generator::Create(served.base, served.adapters);
  EXPECT_TRUE(generator.ok());
  absl::StatusOr<model::GenerationResult> result =
      model::Generate(*generator, *served.tokenizer, prompt, options, [](std::string_view) {});
  EXPECT_TRUE(result.ok()) << result.status();
  return *result;
}

struct Outcome {
  std::string text;
  std::string finish_reason;
  int64_t completion_tokens = 0;
  int64_t cached_prompt_tokens = 0;
};

Outcome Collect(Completion& completion) {
  Outcome outcome;
  for (;;) {
    Completion::Update update = completion.Wait(absl::Seconds(30));
    outcome.text += update.text;
    if (update.done) break;
  }
  EXPECT_TRUE(completion.status().ok()) << completion.status();
  outcome.finish_reason = completion.finish_reason();
  outcome.completion_tokens = completion.completion_tokens();
  outcome.cached_prompt_tokens = completion.cached_prompt_tokens();
  return outcome;
}

model::GenerationOptions Options(int64_t max_tokens, double temperature, uint64_t seed,
                                 std::vector<std::string> stop = {}) {
  model::GenerationOptions options;
  options.max_tokens = max_tokens;
  options.sampling = {.temperature = temperature, .top_p = 0.9};
  options.seed = seed;
  options.stop = std::move(stop);
  return options;
}

TEST(EngineTest, BatchedRequestsGenerateWhatEachGeneratesAlone) {
  const std::shared_ptr<const ServedModel> served = TinyModel("tiny", 3);
  // A small prefill budget, so that long prompts take several steps beside decoding rows.
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Start(
      served, {.max_batch = 3, .max_queue = 16, .prefill_chunk = 7, .prefix_cache_bytes = 0});
  ASSERT_TRUE(engine.ok()) << engine.status();
  struct Case {
    std::string prompt;
    model::GenerationOptions options;
  };
  const std::vector<Case> cases = {
      {"the invoice was", Options(20, 0, 0)},
      {"an urgent transfer from an account opened yesterday", Options(12, 0.8, 5)},
      {"x", Options(25, 1.0, 7)},
      {"login from another city", Options(9, 0, 0, {"e"})},
      {"a somewhat longer prompt that needs three prefill steps at least", Options(15, 0.7, 9)},
      {"ok", Options(3, 0, 0)},
  };
  // More requests than the batch holds: later ones join as earlier ones leave.
  std::vector<std::shared_ptr<Completion>> completions;
  for (size_t i = 0; i < cases.size(); ++i) {
    absl::StatusOr<std::shared_ptr<Completion>> completion =
        (*engine)->Submit(Prompt::Text(cases[i].prompt), cases[i].options, true);
    ASSERT_TRUE(completion.ok()) << completion.status();
    completions.push_back(*completion);
    if (i == 2) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].prompt);
    const Outcome outcome = Collect(*completions[i]);
    const model::GenerationResult alone = Alone(*served, cases[i].prompt, cases[i].options);
    EXPECT_EQ(outcome.text, alone.text);
    EXPECT_EQ(outcome.finish_reason, alone.finish_reason);
    EXPECT_EQ(outcome.completion_tokens, static_cast<int64_t>(alone.tokens.size()));
    EXPECT_EQ(completions[i]->prompt_tokens(), static_cast<int64_t>(alone.prompt_tokens.size()));
  }
  const EngineStats stats = (*engine)->stats();
  EXPECT_EQ(stats.requests_finished, static_cast<int64_t>(cases.size()));
  EXPECT_EQ(stats.active, 0);
  EXPECT_EQ(stats.first_tokens, static_cast<int64_t>(cases.size()));
}

TEST(EngineTest, ASharedPrefixComesFromTheCacheAndChangesNothing) {
  const std::shared_ptr<const ServedModel> served = TinyModel("tiny", 4);
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::Start(served, {.max_batch = 4, .prefill_chunk = 64});
  ASSERT_TRUE(engine.ok()) << engine.status();
  const std::string system = "You answer questions about invoices, briefly and exactly. ";
  for (const std::string question : {"What is due?", "Who paid?", "What is due?"}) {
    const model::GenerationOptions options = Options(10, 0, 0);
    absl::StatusOr<std::shared_ptr<Completion>> completion =
        (*engine)->Submit(Prompt::Text(system + question), options, true);
    ASSERT_TRUE(completion.ok()) << completion.status();
    const Outcome outcome = Collect(**completion);
    EXPECT_EQ(outcome.text, Alone(*served, system + question, options).text);
    if (question == std::string("Who paid?")) {
      EXPECT_GE(outcome.cached_prompt_tokens, static_cast<int64_t>(system.size()));
    }
  }
  const EngineStats stats = (*engine)->stats();
  // The second shares the system prompt; the third is the first again, all but its last token.
  const auto first = static_cast<int64_t>(system.size() + 12);
  EXPECT_GE(stats.prefix_cache_tokens, static_cast<int64_t>(system.size()) + first - 1);
  EXPECT_GT(stats.prefix_cache_bytes, 0u);
}

TEST(EngineTest, TheQueueIsBoundedAndLimitsAreRefusedByName) {
  const std::shared_ptr<const ServedModel> served = TinyModel("tiny", 5);
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::Start(served, {.max_batch = 1, .max_queue = 1, .max_tokens_limit = 80});
  ASSERT_TRUE(engine.ok()) << engine.status();
  // The batch takes one long request and the queue one more; the rest are refused.
  int accepted = 0;
  int refused = 0;
  std::vector<std::shared_ptr<Completion>> running;
  for (int i = 0; i < 4; ++i) {
    absl::StatusOr<std::shared_ptr<Completion>> completion =
        (*engine)->Submit(Prompt::Text("long"), Options(80, 0.5, 1), true);
    if (completion.ok()) {
      ++accepted;
      running.push_back(*completion);
    } else {
      EXPECT_EQ(completion.status().code(), absl::StatusCode::kResourceExhausted);
      EXPECT_NE(completion.status().message().find("busy"), std::string_view::npos);
      ++refused;
    }
  }
  EXPECT_GE(accepted, 1);
  EXPECT_LE(accepted, 2);
  EXPECT_EQ(refused, 4 - accepted);
  EXPECT_EQ((*engine)->stats().requests_refused_busy, refused);
  for (const auto& completion : running) completion->Cancel();

  const auto refusal = [&](const Prompt& prompt, const model::GenerationOptions& options,
                           bool given) {
    absl::StatusOr<std::shared_ptr<Completion>> completion =
        (*engine)->Submit(prompt, options, given);
    EXPECT_EQ(completion.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(completion.status().message());
  };
  EXPECT_NE(refusal(Prompt::Text(std::string(96, 'a')), Options(4, 0, 0), true)
                .find("the prompt is 96 tokens; this server takes at most 95"),
            std::string::npos);
  EXPECT_NE(refusal(Prompt::Text("hi"), Options(81, 0, 0), true)
                .find("max_tokens is 81; this server allows at most 80"),
            std::string::npos);
  EXPECT_NE(refusal(Prompt::Text(std::string(20, 'a')), Options(78, 0, 0), true)
                .find("context is 96 tokens"),
            std::string::npos);
  EXPECT_NE(refusal(Prompt::Text(""), Options(4, 0, 0), true).find("empty"), std::string::npos);
  EXPECT_NE(refusal(Prompt::Text("hi"), Options(4, -1, 0), true).find("temperature"),
            std::string::npos);
  EXPECT_NE(refusal(Prompt::Chat({{"user", "a"}, {"assistant", "b"}}), Options(4, 0, 0), true)
                .find("end with a user message"),
            std::string::npos);
  // A default max_tokens the request did not choose is cut to what the context leaves, or kept
  // when smaller.
  for (const auto& completion : running) Collect(*completion);
  for (const auto& [default_tokens, most] : {std::pair<int64_t, int64_t>{1000, 57}, {3, 3}}) {
    absl::StatusOr<std::shared_ptr<Completion>> open = (*engine)->Submit(
        Prompt::Text(std::string(40, 'a')), Options(default_tokens, 0.9, 2), false);
    ASSERT_TRUE(open.ok()) << open.status();
    const Outcome outcome = Collect(**open);
    EXPECT_LE(outcome.completion_tokens, most);
  }
  EXPECT_FALSE(EngineOptions{.max_batch = 0}.Validate().ok());
}

TEST(EngineTest, ACancelledRequestLeavesAtTheNextStep) {
  const std::shared_ptr<const ServedModel> served = TinyModel("tiny", 6);
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Start(served, {});
  ASSERT_TRUE(engine.ok()) << engine.status();
  model::GenerationOptions options = Options(90, 1.0, 3);
  absl::StatusOr<std::shared_ptr<Completion>> completion =
      (*engine)->Submit(Prompt::Text("go"), options, true);
  ASSERT_TRUE(completion.ok());
  (*completion)->Cancel();
  const Completion::Update update = [&] {
    for (;;) {
      Completion::Update next = (*completion)->Wait(absl::Seconds(30));
      if (next.done) return next;
    }
  }();
  EXPECT_TRUE(update.done);
  EXPECT_EQ((*completion)->finish_reason(), "cancelled");
  EXPECT_LT((*completion)->completion_tokens(), 90);
  EXPECT_EQ((*engine)->stats().requests_cancelled, 1);
}

TEST(EngineTest, APublishedModelServesLaterRequestsWhileEarlierOnesFinishOnTheirs) {
  const std::shared_ptr<const ServedModel> first = TinyModel("v1", 7);
  const std::shared_ptr<const ServedModel> second = TinyModel("v2", 8);
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Start(first, {.max_batch = 4});
  ASSERT_TRUE(engine.ok()) << engine.status();
  const model::GenerationOptions options = Options(40, 0, 0);
  absl::StatusOr<std::shared_ptr<Completion>> before =
      (*engine)->Submit(Prompt::Text("the ledger"), options, true);
  ASSERT_TRUE(before.ok());
  ASSERT_TRUE((*engine)->Publish(second).ok());
  EXPECT_EQ((*engine)->model()->id, "v2");
  absl::StatusOr<std::shared_ptr<Completion>> after =
      (*engine)->Submit(Prompt::Text("the ledger"), options, true);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ((*before)->model_id(), "v1");
  EXPECT_EQ((*after)->model_id(), "v2");
  EXPECT_EQ(Collect(**before).text, Alone(*first, "the ledger", options).text);
  EXPECT_EQ(Collect(**after).text, Alone(*second, "the ledger", options).text);
  EXPECT_NE(Alone(*first, "the ledger", options).text, Alone(*second, "the ledger", options).text);
}

}  // namespace
}  // namespace fedmoe::client::serve
