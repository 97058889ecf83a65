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
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cpu/dense.h"
#include "model/adapted_model.h"
#include "model/tokenizer.h"

namespace fedmoe::model {

// One sequence being generated: its keys and values per layer, and the activations of the rows
// being added. Not thread-safe; one Generator per concurrent sequence, over a shared base.
class Generator {
 public:
  // Over `base` and `adapters` (BaseOnlyAdapters for the base alone), which must outlive it.
  // InvalidArgument when the adapters were laid out for another model.
  static absl::StatusOr<Generator> Create(const FrozenBase& base, const LoraAdapters& adapters);

  // Starts a new sequence with `prompt` (at least one token) and returns the logits
  // [vocab_size] of the token after it. InvalidArgument for an empty prompt, a token outside the
  // vocabulary, or a prompt longer than max_length().
  absl::StatusOr<std::span<const float>> Start(std::span<const int32_t> prompt);

  // Appends one token to the sequence and returns the logits of the token after it;
  // InvalidArgument at max_length() or for a token outside the vocabulary.
  absl::StatusOr<std::span<const float>> Append(int32_t token);

  // Tokens in the sequence so far.
  int64_t length() const { return length_; }
  // The longest sequence the model takes: its max_position_embeddings.
  int64_t max_length() const { return base_->config().max_position_embeddings; }
  // The token that ends a sequence; −1 when the model's config names none.
  int64_t eos_token() const { return base_->config().eos_token_id; }

 private:
  Generator(const FrozenBase& base, const LoraAdapters& adapters);

  // Runs `tokens` at positions length_ … and returns the last one's logits.
  absl::StatusOr<std::span<const float>> Run(std::span<const int32_t> tokens);

  const FrozenBase* base_;
  const LoraAdapters* adapters_;
  kernels::cpu::RopeTable rope_;
  // Per layer, [length_, kv_width] after RoPE, grown as the sequence grows.
  std::vector<AlignedFloats> keys_, values_;
  int64_t length_ = 0;
  // The new rows' activations, reused from call to call.
  LayerActivations layer_;
  LoraLayerActivations low_;
  AlignedFloats stream_, next_, final_norm_, final_rstd_, logits_;
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

struct GenerationOptions {
  int64_t max_tokens = 128;
  SamplingOptions sampling;
  uint64_t seed = 0;
  // Generation ends before the first of these strings; it is not part of the text.
  std::vector<std::string> stop;
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
