// Text generation (issue [serve]): incremental decoding of a frozen base with adapters
// (adapted_model.h; a plain checkpoint is a base with no adapters) over a key-value cache, so that
// each new token costs one row's products and one row of attention instead of the whole
// sequence's, and the sampling and streaming around it.
//
// The arithmetic is AdaptedForward's: the cached rows are what the full pass computes for those
// positions (causal attention sees only earlier keys, RoPE rotates by absolute position, and the
// MoE block is per token), so greedy decoding picks, position by position, the argmax of the
// logits `model eval` computes for the same text.
#ifndef FEDMOE_MODEL_GENERATION_H_
#define FEDMOE_MODEL_GENERATION_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cpu/dense.h"
#include "model/adapted_model.h"
#include "model/tokenizer.h"

namespace fedmoe::model {

// Where one sequence's keys and values live: host memory (BatchDecoder's) or a GPU's
// (cuda_generation.h). Each decoder makes its own kind and takes no other.
class KvStore {
 public:
  virtual ~KvStore() = default;
  // A new store holding the first `length` positions of this one (which holds at least that
  // many). ResourceExhausted when its memory runs out.
  virtual absl::StatusOr<std::unique_ptr<KvStore>> CopyPrefix(int64_t length) const = 0;
  // Lets go of what lies past the first `length` positions.
  virtual void Truncate(int64_t length) = 0;
};

// One sequence's keys and values per layer, after RoPE: what its next rows attend to. Position
// i's entries depend only on tokens 0…i, so any prefix of a cache is the cache of that prefix
// (what the prefix cache reuses). Made by a decoder's NewCache; movable, not copyable.
class KvCache {
 public:
  KvCache(std::unique_ptr<KvStore> store, int64_t layers, int64_t kv_width)
      : store_(std::move(store)), layers_(layers), kv_width_(kv_width) {}

  // Tokens held.
  int64_t length() const { return length_; }
  // Bytes of keys and values held (fp32, every layer).
  size_t bytes() const { return BytesFor(length_); }
  // The bytes `length` positions take.
  size_t BytesFor(int64_t length) const {
    return 2 * static_cast<size_t>(layers_ * length * kv_width_) * sizeof(float);
  }
  // Keeps the first `length` positions (at most length()).
  void Truncate(int64_t length);
  // A cache of the first `length` positions (at most length()) in the same kind of memory; the
  // store's errors.
  absl::StatusOr<KvCache> Prefix(int64_t length) const;

  int64_t layers() const { return layers_; }
  int64_t kv_width() const { return kv_width_; }
  // For decoders: the memory, and the length once a step has written new positions.
  KvStore& store() const { return *store_; }
  void set_length(int64_t length) { length_ = length; }

 private:
  std::unique_ptr<KvStore> store_;
  int64_t layers_;
  int64_t kv_width_;
  int64_t length_ = 0;
};

// New tokens for one sequence, to run at the end of its cache.
struct DecodeSegment {
  KvCache* cache = nullptr;
  std::span<const int32_t> tokens;
};

// Runs the new rows of several sequences through the model in one pass (continuous batching):
// the products and the MoE block, which treat each row alone, take all rows at once, so a
// weight read from memory serves every sequence in the step; RoPE and attention run per
// sequence, at its own positions over its own cache. A step may mix a prompt's rows (prefill)
// with single decode rows. The CPU's (BatchDecoder) and a GPU's (cuda_generation.h) compute the
// same arithmetic. Not thread-safe; the base and adapters are shared read-only and outlive it.
class Decoder {
 public:
  virtual ~Decoder() = default;

  // An empty cache for this decoder.
  virtual KvCache NewCache() const = 0;

  // Runs every segment's tokens at the end of its cache, extends the caches, and returns the
  // logits [segments, vocab_size]: row s scores the token after segment s's last one; the span
  // lives until the next step. InvalidArgument, before any cache changes, for a segment with no
  // tokens, a token outside the vocabulary, a sequence that would pass max_length(), a cache
  // this decoder did not make, or a cache named twice. A device's errors otherwise, after which
  // the step's caches are to be dropped.
  absl::StatusOr<std::span<const float>> Step(std::span<const DecodeSegment> segments);

  // Where the products run: "cpu" or "cuda".
  virtual std::string_view device() const = 0;

  // The longest sequence the model takes: its max_position_embeddings.
  int64_t max_length() const { return config_.max_position_embeddings; }
  // The token that ends a sequence; −1 when the model's config names none.
  int64_t eos_token() const { return config_.eos_token_id; }
  int64_t vocab_size() const { return config_.vocab_size; }

 protected:
  explicit Decoder(const MoeConfig& config) : config_(config) {}

  // Whether `store` is of the kind NewCache makes.
  virtual bool Owns(const KvStore& store) const = 0;
  // Step's work on checked segments whose caches still have their old lengths: writes each
  // segment's new positions into its store and returns the logits.
  virtual absl::StatusOr<std::span<const float>> Run(std::span<const DecodeSegment> segments) = 0;

  const MoeConfig& config() const { return config_; }

 private:
  absl::Status CheckSegments(std::span<const DecodeSegment> segments) const;

  MoeConfig config_;
};

// The CPU's decoder, on kernels/cpu over the base in its own format.
class BatchDecoder final : public Decoder {
 public:
  // Over `base` and `adapters` (BaseOnlyAdapters for the base alone), which must outlive it.
  // InvalidArgument when the adapters were laid out for another model.
  static absl::StatusOr<std::unique_ptr<BatchDecoder>> Create(const FrozenBase& base,
                                                              const LoraAdapters& adapters);

  KvCache NewCache() const override;
  std::string_view device() const override { return "cpu"; }

 private:
  BatchDecoder(const FrozenBase& base, const LoraAdapters& adapters);

  bool Owns(const KvStore& store) const override;
  absl::StatusOr<std::span<const float>> Run(std::span<const DecodeSegment> segments) override;

  const FrozenBase* base_;
  const LoraAdapters* adapters_;
  kernels::cpu::RopeTable rope_;
  // The step's activations, reused from call to call.
  std::vector<int32_t> tokens_;
  LayerActivations layer_;
  LoraLayerActivations low_;
  AlignedFloats stream_, next_, last_rows_, final_norm_, final_rstd_, logits_;
};

// One sequence generated alone: a decoder over one cache.
class Generator {
 public:
  // On the CPU, as BatchDecoder::Create.
  static absl::StatusOr<Generator> Create(const FrozenBase& base, const LoraAdapters& adapters);
  // Over any decoder (a GPU's: cuda_generation.h).
  explicit Generator(std::unique_ptr<Decoder> decoder)
      : decoder_(std::move(decoder)), cache_(decoder_->NewCache()) {}

  // Starts a new sequence with `prompt` (at least one token) and returns the logits
  // [vocab_size] of the token after it. InvalidArgument for an empty prompt, a token outside the
  // vocabulary, or a prompt longer than max_length().
  absl::StatusOr<std::span<const float>> Start(std::span<const int32_t> prompt);

  // Appends one token to the sequence and returns the logits of the token after it;
  // InvalidArgument at max_length() or for a token outside the vocabulary.
  absl::StatusOr<std::span<const float>> Append(int32_t token);

  // Tokens in the sequence so far.
  int64_t length() const { return cache_.length(); }
  int64_t max_length() const { return decoder_->max_length(); }
  int64_t eos_token() const { return decoder_->eos_token(); }
  std::string_view device() const { return decoder_->device(); }

 private:
  std::unique_ptr<Decoder> decoder_;
  KvCache cache_;
};

struct SamplingOptions {
  // 0 is greedy: the most likely token, the lowest id among ties. Otherwise the logits are
  // divided by it before the softmax.
  double temperature = 0;
  // Nucleus sampling: draws among the fewest most likely tokens whose probabilities reach
  // top_p; 1 keeps them all.
  double top_p = 1;

  // InvalidArgument naming the setting at fault: a negative or non-finite temperature, top_p
  // outside (0, 1].
  absl::Status Validate() const;
};

// Draws tokens from logits; the same seed draws the same tokens from the same logits. Sampling
// is not cryptography: a seeded std::mt19937_64 is what makes a run repeatable.
class TokenSampler {
 public:
  TokenSampler(const SamplingOptions& options, uint64_t seed)
      : options_(options), generator_(seed) {}

  int32_t Next(std::span<const float> logits);

 private:
  SamplingOptions options_;
  std::mt19937_64 generator_;
  std::vector<std::pair<double, int32_t>> ranked_;
};

// Turns generated tokens into text as it becomes safe to show: pieces end on whole UTF-8
// characters and never hold the start of a stop string, and the text ends before the first stop
// string. Decodes only a short window of recent tokens per token (a byte-level BPE token may be
// part of a character, so single tokens cannot be decoded alone), not the whole text.
class TextStream {
 public:
  // Empty stop strings are ignored.
  TextStream(const Tokenizer& tokenizer, std::vector<std::string> stop);

  // Adds a generated token (not the end-of-sequence one) and returns the text it makes safe to
  // show, possibly none. Once a stop string completes, stopped() holds and the text ends
  // before it. Decode's errors.
  absl::StatusOr<std::string> Add(int32_t token);
  // At the end of generation: the text held back so far (a partial character included).
  absl::StatusOr<std::string> Finish();

  bool stopped() const { return stopped_; }
  // The text so far, up to a stop string.
  const std::string& text() const { return text_; }

 private:
  // Looks for a stop string in the text not yet shown; true (and the text cut) when one is there.
  bool CutAtStop();

  const Tokenizer* tokenizer_;
  std::vector<std::string> stop_;
  size_t held_back_ = 0;
  std::vector<int32_t> tokens_;
  // tokens_[window_start_, window_end_) decode to the last whole-character piece added to
  // text_; later tokens have not made a whole character yet.
  size_t window_start_ = 0, window_end_ = 0;
  std::string window_text_;
  std::string text_;
  size_t shown_ = 0;
  bool stopped_ = false;
};

struct GenerationOptions {
  int64_t max_tokens = 128;
  SamplingOptions sampling;
  uint64_t seed = 0;
  // Generation ends before the first of these strings; it is not part of the text.
  std::vector<std::string> stop;

  // InvalidArgument naming the setting at fault: the sampling's, max_tokens below 1, an empty
  // stop string.
  absl::Status Validate() const;
};

// One sequence's generation after its prompt, what Generate and the serving engine share: it
// draws each token from the logits, turns tokens into text (TextStream), and ends the sequence
// at the end-of-sequence token, a stop string, max_tokens, or the model's context.
class SequenceContinuation {
 public:
  // `options` must be valid (GenerationOptions::Validate); `tokenizer` outlives this.
  SequenceContinuation(const Tokenizer& tokenizer, const GenerationOptions& options,
                       int64_t eos_token)
      : sampler_(options.sampling, options.seed),
        text_(tokenizer, options.stop),
        max_tokens_(options.max_tokens),
        eos_token_(eos_token) {}

  // Draws the token after `logits`, the next-token scores of a sequence now `length` tokens
  // long in a model that takes `max_length`, and returns the text it makes safe to show. Once
  // done(), finish_reason() says why and last_token() is not to be run. Decode's errors.
  absl::StatusOr<std::string> Next(std::span<const float> logits, int64_t length,
                                   int64_t max_length);
  // At the end: the text held back so far.
  absl::StatusOr<std::string> Finish() { return text_.Finish(); }

  bool done() const { return !finish_reason_.empty(); }
  // "stop" or "length"; empty until done().
  const std::string& finish_reason() const { return finish_reason_; }
  // The tokens drawn, the end-of-sequence token or the one that completed a stop string
  // included.
  const std::vector<int32_t>& tokens() const { return tokens_; }
  int32_t last_token() const { return tokens_.back(); }
  // The text so far, up to a stop string.
  const std::string& text() const { return text_.text(); }

 private:
  TokenSampler sampler_;
  TextStream text_;
  int64_t max_tokens_;
  int64_t eos_token_;
  std::vector<int32_t> tokens_;
  std::string finish_reason_;
};

struct GenerationResult {
  std::vector<int32_t> prompt_tokens;
  // The tokens generated, the end-of-sequence token or the one that completed a stop string
  // included.
  std::vector<int32_t> tokens;
  // Their text, up to a stop string.
  std::string text;
  // "stop" (the end-of-sequence token or a stop string) or "length" (max_tokens, or the
  // model's max_position_embeddings).
  std::string finish_reason;
  double prefill_seconds = 0;
  double decode_seconds = 0;
};

// Encodes `prompt`, generates up to options.max_tokens tokens after it and hands their text to
// `on_text` as it grows, in pieces that each end on a whole UTF-8 character and never hold part
// of a stop string. Errors as Start's, and InvalidArgument for bad options.
absl::StatusOr<GenerationResult> Generate(Generator& generator, const Tokenizer& tokenizer,
                                          std::string_view prompt, const GenerationOptions& options,
                                          const std::function<void(std::string_view)>& on_text);

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_GENERATION_H_
