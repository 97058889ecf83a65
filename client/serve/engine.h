// The serving engine of `fedmoe-client serve` (issue [serve]): continuous batching over one
// thread that owns the model's decoder.
//
// Requests wait in a bounded queue and join the running batch at any step, up to max_batch
// sequences; each leaves the batch the step it finishes, so a short request never waits for a
// long one. A step runs one decode row for every sequence already generating plus prompt rows
// for those still prefilling, shortest remaining prompt first, up to prefill_chunk prompt
// tokens, so a long prompt is prefilled over several steps while the others keep decoding.
// Before a prompt is prefilled, the rows of its longest prefix that an earlier prompt shared
// come from the prefix cache.
//
// Requests run against the model that was current when they were submitted: Publish switches
// the model for later requests, at a request boundary, and the old one is released when its last
// request finishes.
#ifndef FEDMOE_CLIENT_SERVE_ENGINE_H_
#define FEDMOE_CLIENT_SERVE_ENGINE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "model/adapted_model.h"
#include "model/data.h"
#include "model/frozen_base.h"
#include "model/generation.h"
#include "model/tokenizer.h"

namespace fedmoe::client::serve {

// A model as served: a frozen base, the site's adapter over it (or none), and its tokenizer.
struct ServedModel {
  // What /v1/models lists and requests name.
  std::string id;
  model::FrozenBase base;
  model::LoraAdapters adapters;
  std::unique_ptr<model::Tokenizer> tokenizer;

  // Opens DIR's checkpoint held as `held` says (model::OpenForInference) with the PEFT adapter
  // directory `adapter` over it when given. The checkpoint's errors.
  static absl::StatusOr<std::shared_ptr<const ServedModel>> Load(
      const std::filesystem::path& directory, const std::optional<std::filesystem::path>& adapter,
      const model::HeldFormat& held, std::string id);
};

struct EngineOptions {
  // Sequences generating at once.
  int64_t max_batch = 16;
  // Requests waiting for room in the batch; Submit refuses more.
  int64_t max_queue = 64;
  // Prompt tokens prefilled per step, over all prefilling sequences.
  int64_t prefill_chunk = 256;
  // Bytes of keys and values the prefix cache holds; 0 turns it off.
  size_t prefix_cache_bytes = size_t{256} << 20;
  // The longest prompt taken, in tokens; 0: the model's context less one token.
  int64_t max_prompt_tokens = 0;
  // The most tokens one request may ask for; 0: the model's context.
  int64_t max_tokens_limit = 0;
  // Makes each served model's decoder; empty: the CPU's (model::BatchDecoder). `serve --device`
  // passes a GPU's (model/device_decoder.h).
  using DecoderFactory = std::function<absl::StatusOr<std::unique_ptr<model::Decoder>>(
      const model::FrozenBase&, const model::LoraAdapters&)>;
  DecoderFactory make_decoder = nullptr;

  absl::Status Validate() const;
};

// What a request asks for: a text prompt, or a conversation (the chat endpoint).
struct Prompt {
  static Prompt Text(std::string text) { return {std::move(text), {}, false}; }
  static Prompt Chat(std::vector<model::ChatMessage> messages) {
    return {{}, std::move(messages), true};
  }

  std::string text;
  std::vector<model::ChatMessage> chat;
  bool is_chat = false;
};

// One request's progress, shared between the engine and the caller waiting for it.
class Completion {
 public:
  struct Update {
    // Text not taken before.
    std::string text;
    // The request is over: finish_reason() (or status()) says how.
    bool done = false;
  };
  // Waits up to `timeout` for new text or the end, and takes the text.
  Update Wait(absl::Duration timeout);
  // Asks the engine to drop the request at its next step (the caller has gone).
  void Cancel() { cancelled_.store(true); }

  // Set when done: "stop", "length" or "cancelled"; empty when the request failed (status()).
  std::string finish_reason() const;
  absl::Status status() const;
  int64_t prompt_tokens() const { return prompt_tokens_; }
  // Tokens generated, a final end-of-sequence token included.
  int64_t completion_tokens() const;
  // Prompt tokens whose keys and values came from the prefix cache.
  int64_t cached_prompt_tokens() const;
  const std::string& model_id() const { return model_id_; }

 private:
  friend class Engine;

  void Push(std::string_view text);
  void Finish(std::string reason, absl::Status status);

  std::atomic<bool> cancelled_{false};
  int64_t prompt_tokens_ = 0;
  std::string model_id_;
  mutable absl::Mutex mutex_;
  std::string pending_ ABSL_GUARDED_BY(mutex_);
  bool done_ ABSL_GUARDED_BY(mutex_) = false;
  std::string finish_reason_ ABSL_GUARDED_BY(mutex_);
  absl::Status status_ ABSL_GUARDED_BY(mutex_);
  int64_t completion_tokens_ ABSL_GUARDED_BY(mutex_) = 0;
  int64_t cached_prompt_tokens_ ABSL_GUARDED_BY(mutex_) = 0;
};

// Counters since start, for /metrics.
struct EngineStats {
  int64_t queued = 0;
  int64_t active = 0;
  int64_t requests_finished = 0;
  int64_t requests_cancelled = 0;
  int64_t requests_failed = 0;
  int64_t requests_refused_busy = 0;
  int64_t prompt_tokens = 0;
  int64_t prefix_cache_tokens = 0;
  int64_t generated_tokens = 0;
  int64_t steps = 0;
  double time_to_first_token_seconds_sum = 0;
  int64_t first_tokens = 0;
  size_t prefix_cache_bytes = 0;
};

class Engine {
 public:
  // Starts the engine's thread over `model`. InvalidArgument for bad options; the decoder's
  // errors (adapters of another model, a GPU that cannot hold the base).
  static absl::StatusOr<std::unique_ptr<Engine>> Start(std::shared_ptr<const ServedModel> model,
                                                       const EngineOptions& options);
  // Shutdown().
  ~Engine();

  // Stops the thread; requests still running or waiting end with Unavailable, and later ones
  // are refused with it.
  void Shutdown();

  // Encodes the prompt with the current model's tokenizer and queues the request.
  // `max_tokens_given`: whether the request chose options.max_tokens. Otherwise
  // options.max_tokens is a default that is cut to what the context leaves after the prompt
  // and to max_tokens_limit, instead of being refused past them.
  // InvalidArgument naming the fault: a bad option or conversation, an empty prompt, a prompt
  // over max_prompt_tokens, max_tokens over max_tokens_limit, or a prompt and max_tokens past
  // the model's context. ResourceExhausted when the batch is full and max_queue requests
  // already wait.
  absl::StatusOr<std::shared_ptr<Completion>> Submit(const Prompt& prompt,
                                                     model::GenerationOptions options,
                                                     bool max_tokens_given);

  // Serves `model` to requests submitted from now on; requests already submitted finish on
  // theirs. The decoder's errors, the current model kept: InvalidArgument when its adapters
  // were laid out for another model, ResourceExhausted when a GPU cannot hold it beside the
  // model still finishing requests.
  absl::Status Publish(std::shared_ptr<const ServedModel> model);
  std::shared_ptr<const ServedModel> model() const;
  EngineStats stats() const;

  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

 private:
  struct Runtime;
  struct Sequence;
  struct Request {
    // The model published when it was submitted, with its decoder.
    std::shared_ptr<Runtime> runtime;
    std::vector<int32_t> tokens;
    model::GenerationOptions options;
    std::shared_ptr<Completion> completion;
    absl::Time submitted;
  };

  explicit Engine(const EngineOptions& options) : options_(options) {}

  void Loop();
  // Moves waiting requests into the batch; false when the engine is stopping.
  bool Admit(std::vector<std::unique_ptr<Sequence>>& batch);
  // A model's decoder and prefix cache.
  absl::StatusOr<std::shared_ptr<Runtime>> NewRuntime(std::shared_ptr<const ServedModel> model);
  // One step over the sequences of one model.
  void Step(Runtime& runtime, std::vector<Sequence*>& sequences);
  // Samples the token after a sequence's logits and hands its text on, finishing the sequence
  // at the end-of-sequence token, a stop string or a limit.
  void Advance(Sequence& sequence, std::span<const float> logits);
  void Finish(Sequence& sequence, std::string reason, absl::Status status = absl::OkStatus());

  const EngineOptions options_;
  mutable absl::Mutex mutex_;
  // The current model with its decoder and prefix cache, made where it was published so that
  // a failure reaches the publisher.
  std::shared_ptr<Runtime> published_ ABSL_GUARDED_BY(mutex_);
  std::deque<Request> queue_ ABSL_GUARDED_BY(mutex_);
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  EngineStats stats_ ABSL_GUARDED_BY(mutex_);
  std::thread thread_;
};

}  // namespace fedmoe::client::serve

#endif  // FEDMOE_CLIENT_SERVE_ENGINE_H_
