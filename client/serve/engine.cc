#include "client/serve/engine.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "model/prefix_cache.h"

namespace fedmoe::client::serve {

absl::StatusOr<std::shared_ptr<const ServedModel>> ServedModel::Load(
    const std::filesystem::path& directory, const std::optional<std::filesystem::path>& adapter,
    const model::HeldFormat& held, std::string id) {
  absl::StatusOr<model::FrozenBase> base = model::OpenForInference(directory, held);
  if (!base.ok()) return base.status();
  // Adapters hold their own copy of the layout, so the base may move after they are read.
  absl::StatusOr<model::LoraAdapters> adapters =
      adapter.has_value() ? model::LoadAdaptersFor(*base, *adapter)
                          : absl::StatusOr<model::LoraAdapters>(model::BaseOnlyAdapters(*base));
  if (!adapters.ok()) return adapters.status();
  auto served = std::make_shared<ServedModel>(ServedModel{.id = std::move(id),
                                                          .base = *std::move(base),
                                                          .adapters = *std::move(adapters),
                                                          .tokenizer = {}});
  absl::StatusOr<std::unique_ptr<model::Tokenizer>> tokenizer =
      model::LoadTokenizer(directory, served->base.config().vocab_size);
  if (!tokenizer.ok()) return tokenizer.status();
  served->tokenizer = *std::move(tokenizer);
  return std::shared_ptr<const ServedModel>(std::move(served));
}

absl::Status EngineOptions::Validate() const {
  const auto at_least = [](std::string_view name, int64_t value, int64_t least) -> absl::Status {
    if (value >= least) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(name), " must be at least ", least, ", not ", value));
  };
  for (const absl::Status& status :
       {at_least("max_batch", max_batch, 1), at_least("max_queue", max_queue, 0),
        at_least("prefill_chunk", prefill_chunk, 1),
        at_least("max_prompt_tokens", max_prompt_tokens, 0),
        at_least("max_tokens_limit", max_tokens_limit, 0)}) {
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

Completion::Update Completion::Wait(absl::Duration timeout) {
  absl::MutexLock lock(&mutex_);
  const auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    return done_ || !pending_.empty();
  };
  mutex_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  Update update{.text = std::move(pending_), .done = done_};
  pending_.clear();
  return update;
}

std::string Completion::finish_reason() const {
  absl::MutexLock lock(&mutex_);
  return finish_reason_;
}

absl::Status Completion::status() const {
  absl::MutexLock lock(&mutex_);
  return status_;
}

int64_t Completion::completion_tokens() const {
  absl::MutexLock lock(&mutex_);
  return completion_tokens_;
}

int64_t Completion::cached_prompt_tokens() const {
  absl::MutexLock lock(&mutex_);
  return cached_prompt_tokens_;
}

void Completion::Push(std::string_view text) {
  if (text.empty()) return;
  absl::MutexLock lock(&mutex_);
  pending_.append(text);
}

void Completion::Finish(std::string reason, absl::Status status) {
  absl::MutexLock lock(&mutex_);
  done_ = true;
  finish_reason_ = std::move(reason);
  status_ = std::move(status);
}

// A served model as the engine's thread uses it: its decoder and its prefix cache.
struct Engine::Runtime {
  std::shared_ptr<const ServedModel> model;
  std::unique_ptr<model::Decoder> decoder;
  model::PrefixCache prefix_cache;
};

struct Engine::Sequence {
  Request request;
  std::shared_ptr<Runtime> runtime;
  model::KvCache cache;
  model::SequenceContinuation continuation;
  // The token sampled last, which the next step runs; −1 while the prompt is prefilled.
  int32_t next_token = -1;

  int64_t prompt_left() const {
    return static_cast<int64_t>(request.tokens.size()) - cache.length();
  }
};

absl::StatusOr<std::unique_ptr<Engine>> Engine::Start(std::shared_ptr<const ServedModel> model,
                                                      const EngineOptions& options) {
  if (absl::Status status = options.Validate(); !status.ok()) return status;
  std::unique_ptr<Engine> engine(new Engine(options));
  if (absl::Status status = engine->Publish(std::move(model)); !status.ok()) return status;
  engine->thread_ = std::thread([raw = engine.get()] { raw->Loop(); });
  return engine;
}

Engine::~Engine() { Shutdown(); }

void Engine::Shutdown() {
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
  absl::MutexLock lock(&mutex_);
  for (Request& request : queue_) {
    request.completion->Finish("", absl::UnavailableError("the server is shutting down"));
  }
  queue_.clear();
}

absl::StatusOr<std::shared_ptr<Engine::Runtime>> Engine::NewRuntime(
    std::shared_ptr<const ServedModel> model) {
  absl::StatusOr<std::unique_ptr<model::Decoder>> decoder =
      options_.make_decoder ? options_.make_decoder(model->base, model->adapters)
                            : model::BatchDecoder::Create(model->base, model->adapters);
  if (!decoder.ok()) return decoder.status();
  return std::make_shared<Runtime>(
      Runtime{.model = std::move(model),
              .decoder = *std::move(decoder),
              .prefix_cache = model::PrefixCache(options_.prefix_cache_bytes)});
}

absl::Status Engine::Publish(std::shared_ptr<const ServedModel> model) {
  // The decoder refuses adapters of another model here rather than at the first request.
  absl::StatusOr<std::shared_ptr<Runtime>> runtime = NewRuntime(std::move(model));
  if (!runtime.ok()) return runtime.status();
  absl::MutexLock lock(&mutex_);
  published_ = *std::move(runtime);
  return absl::OkStatus();
}

std::shared_ptr<const ServedModel> Engine::model() const {
  absl::MutexLock lock(&mutex_);
  return published_->model;
}

EngineStats Engine::stats() const {
  absl::MutexLock lock(&mutex_);
  EngineStats stats = stats_;
  stats.queued = static_cast<int64_t>(queue_.size());
  return stats;
}

absl::StatusOr<std::shared_ptr<Completion>> Engine::Submit(const Prompt& prompt,
                                                           model::GenerationOptions options,
                                                           bool max_tokens_given) {
  std::shared_ptr<Runtime> runtime;
  {
    absl::MutexLock lock(&mutex_);
    runtime = published_;
  }
  const std::shared_ptr<const ServedModel>& served = runtime->model;
  const model::MoeConfig& config = served->base.config();
  absl::StatusOr<std::vector<int32_t>> tokens =
      prompt.is_chat ? model::EncodeChat(*served->tokenizer, prompt.chat,
                                         static_cast<int32_t>(config.eos_token_id))
                     : served->tokenizer->Encode(prompt.text);
  if (!tokens.ok()) return tokens.status();
  const auto prompt_tokens = static_cast<int64_t>(tokens->size());
  if (prompt_tokens == 0) {
    return absl::InvalidArgumentError("the prompt is empty: it encodes to no tokens");
  }
  const int64_t context = config.max_position_embeddings;
  const int64_t max_prompt =
      options_.max_prompt_tokens > 0 ? options_.max_prompt_tokens : context - 1;
  if (prompt_tokens > std::min(max_prompt, context - 1)) {
    return absl::InvalidArgumentError(absl::StrCat("the prompt is ", prompt_tokens,
                                                   " tokens; this server takes at most ",
                                                   std::min(max_prompt, context - 1)));
  }
  const int64_t token_limit = options_.max_tokens_limit > 0 ? options_.max_tokens_limit : context;
  if (max_tokens_given) {
    if (options.max_tokens > token_limit) {
      return absl::InvalidArgumentError(absl::StrCat("max_tokens is ", options.max_tokens,
                                                     "; this server allows at most ", token_limit));
    }
    // The last token is drawn after the context's last position, so prompt + max_tokens may
    // reach one past the context.
    if (prompt_tokens + options.max_tokens > context + 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("the model's context is ", context, " tokens; the prompt's ", prompt_tokens,
                       " and max_tokens ", options.max_tokens, " go past it"));
    }
  } else {
    // The caller's default is a cap, as is what the context leaves.
    options.max_tokens = std::min({options.max_tokens, token_limit, context + 1 - prompt_tokens});
  }
  if (absl::Status status = options.Validate(); !status.ok()) return status;

  auto completion = std::make_shared<Completion>();
  completion->prompt_tokens_ = prompt_tokens;
  completion->model_id_ = served->id;
  absl::MutexLock lock(&mutex_);
  if (stopping_) return absl::UnavailableError("the server is shutting down");
  // Counted against the batch and the queue together: a request the batch has room for is
  // about to join it, whether or not the engine's thread has taken it yet.
  if (stats_.active + static_cast<int64_t>(queue_.size()) >=
      options_.max_batch + options_.max_queue) {
    ++stats_.requests_refused_busy;
    return absl::ResourceExhaustedError(absl::StrCat("the server is busy: ", stats_.active,
                                                     " requests are generating and ", queue_.size(),
                                                     " waiting; try again shortly"));
  }
  queue_.push_back(Request{.runtime = std::move(runtime),
                           .tokens = *std::move(tokens),
                           .options = std::move(options),
                           .completion = completion,
                           .submitted = absl::Now()});
  return completion;
}

bool Engine::Admit(std::vector<std::unique_ptr<Sequence>>& batch) {
  std::vector<Request> admitted;
  {
    absl::MutexLock lock(&mutex_);
    const auto ready = [this, &batch]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
      return stopping_ || !batch.empty() || !queue_.empty();
    };
    mutex_.Await(absl::Condition(&ready));
    if (stopping_) return false;
    while (!queue_.empty() &&
           static_cast<int64_t>(batch.size() + admitted.size()) < options_.max_batch) {
      admitted.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    stats_.active = static_cast<int64_t>(batch.size() + admitted.size());
  }
  for (Request& request : admitted) {
    std::shared_ptr<Runtime> runtime = std::move(request.runtime);
    model::KvCache cache = runtime->decoder->NewCache();
    const int64_t reused = runtime->prefix_cache.Reuse(request.tokens, cache);
    {
      absl::MutexLock lock(&request.completion->mutex_);
      request.completion->cached_prompt_tokens_ = reused;
    }
    {
      absl::MutexLock lock(&mutex_);
      stats_.prompt_tokens += static_cast<int64_t>(request.tokens.size());
      stats_.prefix_cache_tokens += reused;
    }
    model::SequenceContinuation continuation(*runtime->model->tokenizer, request.options,
                                             runtime->decoder->eos_token());
    batch.push_back(std::make_unique<Sequence>(Sequence{
        .request = std::move(request),
        .runtime = std::move(runtime),
        .cache = std::move(cache),
        .continuation = std::move(continuation),
    }));
  }
  return true;
}

void Engine::Loop() {
  std::vector<std::unique_ptr<Sequence>> batch;
  while (Admit(batch)) {
    std::erase_if(batch, [this](const std::unique_ptr<Sequence>& sequence) {
      if (!sequence->request.completion->cancelled_.load()) return false;
      Finish(*sequence, "cancelled");
      return true;
    });
    // One step per model: sequences submitted before a Publish finish on their model.
    std::vector<Runtime*> runtimes;
    std::shared_ptr<Runtime> published;
    {
      absl::MutexLock lock(&mutex_);
      published = published_;
    }
    for (const auto& sequence : batch) {
      if (std::find(runtimes.begin(), runtimes.end(), sequence->runtime.get()) == runtimes.end()) {
        runtimes.push_back(sequence->runtime.get());
      }
    }
    for (Runtime* runtime : runtimes) {
      std::vector<Sequence*> sequences;
      for (const auto& sequence : batch) {
        if (sequence->runtime.get() == runtime) sequences.push_back(sequence.get());
      }
      Step(*runtime, sequences);
    }
    std::erase_if(batch, [](const std::unique_ptr<Sequence>& sequence) {
      return sequence->request.completion == nullptr;
    });
    // The published model keeps its prefix cache while no request uses it; older models' go
    // with their last request, which the erase above may just have freed, so the count reads
    // only the models the remaining batch still holds.
    std::vector<const Runtime*> held = {published.get()};
    for (const auto& sequence : batch) {
      if (std::find(held.begin(), held.end(), sequence->runtime.get()) == held.end()) {
        held.push_back(sequence->runtime.get());
      }
    }
    size_t cached_bytes = 0;
    for (const Runtime* runtime : held) cached_bytes += runtime->prefix_cache.bytes();
    absl::MutexLock lock(&mutex_);
    stats_.active = static_cast<int64_t>(batch.size());
    stats_.prefix_cache_bytes = cached_bytes;
  }
  for (const auto& sequence : batch) {
    Finish(*sequence, "", absl::UnavailableError("the server is shutting down"));
  }
}

void Engine::Step(Runtime& runtime, std::vector<Sequence*>& sequences) {
  // Decoding sequences first, one row each; then prompts, the shortest remainder first, within
  // the prefill budget.
  std::vector<Sequence*> stepped;
  std::vector<model::DecodeSegment> segments;
  std::vector<Sequence*> prefilling;
  for (Sequence* sequence : sequences) {
    if (sequence->next_token >= 0) {
      stepped.push_back(sequence);
      segments.push_back({.cache = &sequence->cache, .tokens = {&sequence->next_token, 1}});
    } else {
      prefilling.push_back(sequence);
    }
  }
  std::stable_sort(prefilling.begin(), prefilling.end(), [](const Sequence* a, const Sequence* b) {
    return a->prompt_left() < b->prompt_left();
  });
  int64_t budget = options_.prefill_chunk;
  for (Sequence* sequence : prefilling) {
    if (budget <= 0) break;
    const int64_t take = std::min(budget, sequence->prompt_left());
    budget -= take;
    stepped.push_back(sequence);
    segments.push_back({.cache = &sequence->cache,
                        .tokens = std::span<const int32_t>(sequence->request.tokens)
                                      .subspan(static_cast<size_t>(sequence->cache.length()),
                                               static_cast<size_t>(take))});
  }
  if (segments.empty()) return;
  absl::StatusOr<std::span<const float>> logits = runtime.decoder->Step(segments);
  {
    absl::MutexLock lock(&mutex_);
    ++stats_.steps;
  }
  if (!logits.ok()) {
    for (Sequence* sequence : stepped) Finish(*sequence, "", logits.status());
    return;
  }
  const auto vocab = static_cast<size_t>(runtime.decoder->vocab_size());
  for (size_t row = 0; row < stepped.size(); ++row) {
    Sequence& sequence = *stepped[row];
    if (sequence.next_token < 0) {
      if (sequence.prompt_left() > 0) continue;  // more of the prompt next step
      runtime.prefix_cache.Remember(sequence.request.tokens, sequence.cache);
    }
    Advance(sequence, logits->subspan(row * vocab, vocab));
  }
}

void Engine::Advance(Sequence& sequence, std::span<const float> logits) {
  Completion& completion = *sequence.request.completion;
  model::SequenceContinuation& continuation = sequence.continuation;
  absl::StatusOr<std::string> piece =
      continuation.Next(logits, sequence.cache.length(), sequence.runtime->decoder->max_length());
  const auto generated = static_cast<int64_t>(continuation.tokens().size());
  {
    absl::MutexLock lock(&completion.mutex_);
    completion.completion_tokens_ = generated;
  }
  {
    absl::MutexLock lock(&mutex_);
    ++stats_.generated_tokens;
    if (generated == 1) {
      ++stats_.first_tokens;
      stats_.time_to_first_token_seconds_sum +=
          absl::ToDoubleSeconds(absl::Now() - sequence.request.submitted);
    }
  }
  if (!piece.ok()) {
    Finish(sequence, "", piece.status());
    return;
  }
  completion.Push(*piece);
  if (continuation.done()) {
    Finish(sequence, continuation.finish_reason());
    return;
  }
  sequence.next_token = continuation.last_token();
}

void Engine::Finish(Sequence& sequence, std::string reason, absl::Status status) {
  std::shared_ptr<Completion> completion = std::move(sequence.request.completion);
  if (completion == nullptr) return;
  if (status.ok() && reason != "cancelled") {
    absl::StatusOr<std::string> rest = sequence.continuation.Finish();
    if (rest.ok()) {
      completion->Push(*rest);
    } else {
      status = rest.status();
      reason.clear();
    }
  }
  {
    absl::MutexLock lock(&mutex_);
    if (!status.ok()) {
      ++stats_.requests_failed;
    } else if (reason == "cancelled") {
      ++stats_.requests_cancelled;
    } else {
      ++stats_.requests_finished;
    }
  }
  completion->Finish(std::move(reason), std::move(status));
}

}  // namespace fedmoe::client::serve
