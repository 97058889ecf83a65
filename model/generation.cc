#include "model/generation.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/frozen_linear.h"
#include "model/internal/adapted_blocks.h"

namespace fedmoe::model {
namespace {

namespace cpu = kernels::cpu;

using internal::Sized;

// How many bytes at the end of `text` begin a UTF-8 character that has not all arrived yet.
size_t IncompleteUtf8Tail(std::string_view text) {
  // A character is at most 4 bytes: look back over up to 3 continuation bytes for its lead.
  for (size_t back = 1; back <= std::min<size_t>(4, text.size()); ++back) {
    const auto byte = static_cast<unsigned char>(text[text.size() - back]);
    if ((byte & 0xC0) == 0x80) continue;  // a continuation byte
    const size_t length = byte >= 0xF0 ? 4 : byte >= 0xE0 ? 3 : byte >= 0xC0 ? 2 : 1;
    return length > back ? back : 0;
  }
  return 0;
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

// The CPU's keys and values: per layer, [length, kv_width], grown as the sequence grows.
class HostKvStore final : public KvStore {
 public:
  HostKvStore(int64_t layers, int64_t kv_width)
      : kv_width_(kv_width),
        keys_(static_cast<size_t>(layers)),
        values_(static_cast<size_t>(layers)) {}

  absl::StatusOr<std::unique_ptr<KvStore>> CopyPrefix(int64_t length) const override {
    auto copy = std::make_unique<HostKvStore>(static_cast<int64_t>(keys_.size()), kv_width_);
    const auto size = static_cast<std::ptrdiff_t>(length * kv_width_);
    for (size_t layer = 0; layer < keys_.size(); ++layer) {
      copy->keys_[layer].assign(keys_[layer].begin(), keys_[layer].begin() + size);
      copy->values_[layer].assign(values_[layer].begin(), values_[layer].begin() + size);
    }
    return copy;
  }

  void Truncate(int64_t length) override {
    for (size_t layer = 0; layer < keys_.size(); ++layer) {
      keys_[layer].resize(static_cast<size_t>(length * kv_width_));
      values_[layer].resize(static_cast<size_t>(length * kv_width_));
    }
  }

  // Layer `layer`'s keys and values, grown to `length` positions.
  std::pair<float*, float*> Layer(int64_t layer, int64_t length) {
    AlignedFloats& keys = keys_[static_cast<size_t>(layer)];
    AlignedFloats& values = values_[static_cast<size_t>(layer)];
    keys.resize(static_cast<size_t>(length * kv_width_));
    values.resize(static_cast<size_t>(length * kv_width_));
    return {keys.data(), values.data()};
  }

 private:
  int64_t kv_width_;
  std::vector<AlignedFloats> keys_, values_;
};

void KvCache::Truncate(int64_t length) {
  length_ = std::clamp<int64_t>(length, 0, length_);
  store_->Truncate(length_);
}

absl::StatusOr<KvCache> KvCache::Prefix(int64_t length) const {
  length = std::clamp<int64_t>(length, 0, length_);
  absl::StatusOr<std::unique_ptr<KvStore>> store = store_->CopyPrefix(length);
  if (!store.ok()) return store.status();
  KvCache prefix(*std::move(store), layers_, kv_width_);
  prefix.length_ = length;
  return prefix;
}

absl::StatusOr<std::span<const float>> Decoder::Step(std::span<const DecodeSegment> segments) {
  if (absl::Status status = CheckSegments(segments); !status.ok()) return status;
  if (segments.empty()) return std::span<const float>();
  absl::StatusOr<std::span<const float>> logits = Run(segments);
  if (!logits.ok()) return logits.status();
  for (const DecodeSegment& segment : segments) {
    segment.cache->set_length(segment.cache->length() +
                              static_cast<int64_t>(segment.tokens.size()));
  }
  return logits;
}

absl::Status Decoder::CheckSegments(std::span<const DecodeSegment> segments) const {
  for (size_t s = 0; s < segments.size(); ++s) {
    const DecodeSegment& segment = segments[s];
    if (segment.cache == nullptr || segment.tokens.empty()) {
      return absl::InvalidArgumentError("a decode segment has no tokens");
    }
    const int64_t length = segment.cache->length() + static_cast<int64_t>(segment.tokens.size());
    if (length > max_length()) {
      return absl::InvalidArgumentError(absl::StrCat("the sequence would be ", length,
                                                     " tokens; the model takes at most ",
                                                     max_length(), " (max_position_embeddings)"));
    }
    if (!Owns(segment.cache->store()) || segment.cache->kv_width() != config_.key_value_width() ||
        segment.cache->layers() != config_.num_hidden_layers) {
      return absl::InvalidArgumentError(
          absl::StrCat("a key-value cache belongs to another model or device (this decoder runs "
                       "on the ",
                       std::string(device()), ")"));
    }
    for (const int32_t token : segment.tokens) {
      if (token < 0 || token >= config_.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "token id ", token, " is outside the vocabulary [0, ", config_.vocab_size, ")"));
      }
    }
    for (size_t earlier = 0; earlier < s; ++earlier) {
      if (segments[earlier].cache == segment.cache) {
        return absl::InvalidArgumentError("a key-value cache appears twice in one step");
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<BatchDecoder>> BatchDecoder::Create(const FrozenBase& base,
                                                                   const LoraAdapters& adapters) {
  if (absl::Status status = CheckAdaptersFit(base.config(), adapters); !status.ok()) {
    return status;
  }
  return std::unique_ptr<BatchDecoder>(new BatchDecoder(base, adapters));
}

BatchDecoder::BatchDecoder(const FrozenBase& base, const LoraAdapters& adapters)
    : Decoder(base.config()),
      base_(&base),
      adapters_(&adapters),
      rope_(base.config().max_position_embeddings, base.config().head_dim,
            base.config().rope_theta) {}

KvCache BatchDecoder::NewCache() const {
  const MoeConfig& config = base_->config();
  return KvCache(std::make_unique<HostKvStore>(config.num_hidden_layers, config.key_value_width()),
                 config.num_hidden_layers, config.key_value_width());
}

bool BatchDecoder::Owns(const KvStore& store) const {
  return dynamic_cast<const HostKvStore*>(&store) != nullptr;
}

absl::StatusOr<std::span<const float>> BatchDecoder::Run(std::span<const DecodeSegment> segments) {
  const MoeConfig& config = base_->config();
  const ModelLayout& layout = base_->layout();
  const int64_t hidden = config.hidden_size;
  const int64_t q_width = config.query_width();
  const int64_t kv_width = config.key_value_width();
  const auto eps = static_cast<float>(config.rms_norm_eps);
  tokens_.clear();
  for (const DecodeSegment& segment : segments) {
    tokens_.insert(tokens_.end(), segment.tokens.begin(), segment.tokens.end());
  }
  const auto rows = static_cast<int64_t>(tokens_.size());

  float* x = Sized(stream_, rows * hidden);
  const FrozenWeight& embedding = base_->matrix(layout.embed_tokens());
  for (int64_t row = 0; row < rows; ++row) {
    cpu::DecodeRows(embedding, tokens_[static_cast<size_t>(row)], 1, x + row * hidden);
  }
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    const LayerOffsets& w = layout.layer(i);
    const LayerSites& sites = adapters_->layout().layer(i);
    float* norm = Sized(layer_.attention_norm, rows * hidden);
    cpu::RmsNormForward(stream_.data(), base_->vector(w.input_layernorm), norm,
                        Sized(layer_.attention_rstd, rows), rows, hidden, eps);
    float* q = Sized(layer_.q, rows * q_width);
    float* k = Sized(layer_.k, rows * kv_width);
    float* v = Sized(layer_.v, rows * kv_width);
    internal::AdaptedLinearForward(*adapters_, base_->matrix(w.q_proj), sites.q_proj, norm, rows,
                                   low_.q_proj, q);
    internal::AdaptedLinearForward(*adapters_, base_->matrix(w.k_proj), sites.k_proj, norm, rows,
                                   low_.k_proj, k);
    internal::AdaptedLinearForward(*adapters_, base_->matrix(w.v_proj), sites.v_proj, norm, rows,
                                   low_.v_proj, v);
    float* attended = Sized(layer_.attention_output, rows * q_width);
    // Position-dependent: each sequence at its own offset, over its own cache.
    int64_t row = 0;
    for (const DecodeSegment& segment : segments) {
      const auto count = static_cast<int64_t>(segment.tokens.size());
      const int64_t first = segment.cache->length();
      float* segment_q = q + row * q_width;
      float* segment_k = k + row * kv_width;
      float* segment_v = v + row * kv_width;
      cpu::RopeForwardAt(segment_q, count, config.num_attention_heads, first, rope_);
      cpu::RopeForwardAt(segment_k, count, config.num_key_value_heads, first, rope_);
      auto [keys, values] =
          static_cast<HostKvStore&>(segment.cache->store()).Layer(i, first + count);
      std::copy(segment_k, segment_k + count * kv_width, keys + first * kv_width);
      std::copy(segment_v, segment_v + count * kv_width, values + first * kv_width);
      const cpu::AttentionShape attention{.batch = 1,
                                          .seq_len = first + count,
                                          .heads = config.num_attention_heads,
                                          .kv_heads = config.num_key_value_heads,
                                          .head_dim = config.head_dim,
                                          .sliding_window = config.sliding_window};
      cpu::CachedAttentionForward(segment_q, keys, values, attended + row * q_width, count, first,
                                  attention);
      row += count;
    }
    float* residual = Sized(layer_.residual, rows * hidden);
    internal::AdaptedLinearForward(*adapters_, base_->matrix(w.o_proj), sites.o_proj, attended,
                                   rows, low_.o_proj, residual);
    for (int64_t j = 0; j < rows * hidden; ++j) residual[j] += stream_[static_cast<size_t>(j)];
    internal::AdaptedMoeBlock(*base_, *adapters_, i, rows, layer_, low_, next_);
    std::swap(stream_, next_);
  }

  // Only each sequence's last row's next token is wanted.
  const auto count = static_cast<int64_t>(segments.size());
  float* last = Sized(last_rows_, count * hidden);
  int64_t end = 0;
  for (int64_t s = 0; s < count; ++s) {
    const DecodeSegment& segment = segments[static_cast<size_t>(s)];
    end += static_cast<int64_t>(segment.tokens.size());
    std::copy(stream_.begin() + (end - 1) * hidden, stream_.begin() + end * hidden,
              last + s * hidden);
  }
  cpu::RmsNormForward(last, base_->vector(layout.final_norm()), Sized(final_norm_, count * hidden),
                      Sized(final_rstd_, count), count, hidden, eps);
  cpu::FrozenLinearForward(final_norm_.data(), base_->matrix(layout.lm_head()),
                           Sized(logits_, count * config.vocab_size), count);
  return std::span<const float>(logits_.data(), logits_.size());
}

absl::StatusOr<Generator> Generator::Create(const FrozenBase& base, const LoraAdapters& adapters) {
  absl::StatusOr<std::unique_ptr<BatchDecoder>> decoder = BatchDecoder::Create(base, adapters);
  if (!decoder.ok()) return decoder.status();
  return Generator(*std::move(decoder));
}

absl::StatusOr<std::span<const float>> Generator::Start(std::span<const int32_t> prompt) {
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt has no tokens");
  cache_.Truncate(0);
  const DecodeSegment segment{.cache = &cache_, .tokens = prompt};
  return decoder_->Step({&segment, 1});
}

absl::StatusOr<std::span<const float>> Generator::Append(int32_t token) {
  if (cache_.length() == 0) return absl::FailedPreconditionError("Append before Start");
  const DecodeSegment segment{.cache = &cache_, .tokens = {&token, 1}};
  return decoder_->Step({&segment, 1});
}

absl::Status SamplingOptions::Validate() const {
  if (!std::isfinite(temperature) || temperature < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be a finite number of at least 0, not ", temperature));
  }
  if (!(top_p > 0 && top_p <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], not ", top_p));
  }
  return absl::OkStatus();
}

int32_t TokenSampler::Next(std::span<const float> logits) {
  if (options_.temperature == 0) {
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  const double largest = *std::max_element(logits.begin(), logits.end());
  ranked_.clear();
  double total = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    const double weight = std::exp((logits[i] - largest) / options_.temperature);
    ranked_.emplace_back(weight, static_cast<int32_t>(i));
    total += weight;
  }
  size_t kept = ranked_.size();
  if (options_.top_p < 1) {
    // Most likely first, the lower id first among equals.
    std::sort(ranked_.begin(), ranked_.end(), [](const auto& a, const auto& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    });
    double reached = 0;
    kept = 0;
    while (kept < ranked_.size() && reached < options_.top_p * total)
      reached += ranked_[kept++].first;
    total = reached;
  }
  double draw = std::uniform_real_distribution<double>(0, total)(generator_);
  for (size_t i = 0; i < kept; ++i) {
    draw -= ranked_[i].first;
    if (draw < 0) return ranked_[i].second;
  }
  return ranked_[kept - 1].second;  // rounding left the draw at the very end
}

absl::Status GenerationOptions::Validate() const {
  if (absl::Status status = sampling.Validate(); !status.ok()) return status;
  if (max_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens must be at least 1, not ", max_tokens));
  }
  for (const std::string& text : stop) {
    if (text.empty()) return absl::InvalidArgumentError("a stop string is empty");
  }
  return absl::OkStatus();
}

TextStream::TextStream(const Tokenizer& tokenizer, std::vector<std::string> stop)
    : tokenizer_(&tokenizer), stop_(std::move(stop)) {
  std::erase_if(stop_, [](const std::string& text) { return text.empty(); });
  for (const std::string& text : stop_) held_back_ = std::max(held_back_, text.size() - 1);
}

bool TextStream::CutAtStop() {
  size_t end = std::string::npos;
  for (const std::string& text : stop_) {
    // A stop string can begin up to its length before the text not yet shown.
    const size_t from = shown_ > text.size() ? shown_ - text.size() : 0;
    end = std::min(end, text_.find(text, from));
  }
  if (end == std::string::npos) return false;
  text_.resize(end);
  stopped_ = true;
  return true;
}

absl::StatusOr<std::string> TextStream::Add(int32_t token) {
  if (stopped_) return std::string();
  tokens_.push_back(token);
  // The window's first tokens are decoded again with the new one, so that a token that ends a
  // character (or a tokenizer that treats a text's first token specially) decodes as it does
  // inside the whole text.
  absl::StatusOr<std::string> decoded = tokenizer_->Decode(
      std::span<const int32_t>(tokens_).subspan(window_start_, tokens_.size() - window_start_));
  if (!decoded.ok()) return decoded.status();
  if (decoded->size() > window_text_.size() && IncompleteUtf8Tail(*decoded) == 0 &&
      decoded->starts_with(window_text_)) {
    text_.append(*decoded, window_text_.size());
    window_start_ = window_end_;
    window_end_ = tokens_.size();
    absl::StatusOr<std::string> window = tokenizer_->Decode(
        std::span<const int32_t>(tokens_).subspan(window_start_, window_end_ - window_start_));
    if (!window.ok()) return window.status();
    window_text_ = *std::move(window);
  }
  if (CutAtStop()) {
    std::string piece = text_.substr(std::min(shown_, text_.size()));
    shown_ = text_.size();
    return piece;
  }
  if (text_.size() <= shown_ + held_back_) return std::string();
  size_t boundary = text_.size() - held_back_;
  // Back to the start of the character the held-back bytes begin inside.
  while (boundary > shown_ && (static_cast<unsigned char>(text_[boundary]) & 0xC0) == 0x80) {
    --boundary;
  }
  std::string piece = text_.substr(shown_, boundary - shown_);
  shown_ = boundary;
  return piece;
}

absl::StatusOr<std::string> TextStream::Finish() {
  if (!stopped_ && window_end_ < tokens_.size()) {
    absl::StatusOr<std::string> decoded = tokenizer_->Decode(
        std::span<const int32_t>(tokens_).subspan(window_start_, tokens_.size() - window_start_));
    if (!decoded.ok()) return decoded.status();
    if (decoded->size() > window_text_.size()) text_.append(*decoded, window_text_.size());
    window_start_ = window_end_ = tokens_.size();
    window_text_.clear();
    CutAtStop();
  }
  std::string rest = text_.substr(std::min(shown_, text_.size()));
  shown_ = text_.size();
  return rest;
}

absl::StatusOr<std::string> SequenceContinuation::Next(std::span<const float> logits,
                                                       int64_t length, int64_t max_length) {
  const int32_t token = sampler_.Next(logits);
  tokens_.push_back(token);
  if (token == eos_token_) {
    finish_reason_ = "stop";
    return std::string();
  }
  absl::StatusOr<std::string> piece = text_.Add(token);
  if (!piece.ok()) return piece.status();
  if (text_.stopped()) {
    finish_reason_ = "stop";
  } else if (static_cast<int64_t>(tokens_.size()) == max_tokens_ || length == max_length) {
    finish_reason_ = "length";
  }
  return piece;
}

absl::StatusOr<GenerationResult> Generate(Generator& generator, const Tokenizer& tokenizer,
                                          std::string_view prompt, const GenerationOptions& options,
                                          const std::function<void(std::string_view)>& on_text) {
  if (absl::Status status = options.Validate(); !status.ok()) return status;
  GenerationResult result;
  absl::StatusOr<std::vector<int32_t>> encoded = tokenizer.Encode(prompt);
  if (!encoded.ok()) return encoded.status();
  result.prompt_tokens = *std::move(encoded);
  if (result.prompt_tokens.empty()) {
    return absl::InvalidArgumentError("the prompt is empty: it encodes to no tokens");
  }
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<std::span<const float>> logits = generator.Start(result.prompt_tokens);
  if (!logits.ok()) return logits.status();
  result.prefill_seconds = SecondsSince(start);

  const auto decode_start = std::chrono::steady_clock::now();
  SequenceContinuation continuation(tokenizer, options, generator.eos_token());
  for (;;) {
    absl::StatusOr<std::string> piece =
        continuation.Next(*logits, generator.length(), generator.max_length());
    if (!piece.ok()) return piece.status();
    if (!piece->empty()) on_text(*piece);
    if (continuation.done()) break;
    logits = generator.Append(continuation.last_token());
    if (!logits.ok()) return logits.status();
  }
  result.decode_seconds = SecondsSince(decode_start);
  absl::StatusOr<std::string> rest = continuation.Finish();
  if (!rest.ok()) return rest.status();
  if (!rest->empty()) on_text(*rest);
  result.tokens = continuation.tokens();
  result.text = continuation.text();
  result.finish_reason = continuation.finish_reason();
  return result;
}

}  // namespace fedmoe::model
