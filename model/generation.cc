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

absl::StatusOr<Generator> Generator::Create(const FrozenBase& base, const LoraAdapters& adapters) {
  if (absl::Status status = CheckAdaptersFit(base.config(), adapters); !status.ok()) {
    return status;
  }
  return Generator(base, adapters);
}

Generator::Generator(const FrozenBase& base, const LoraAdapters& adapters)
    : base_(&base),
      adapters_(&adapters),
      rope_(base.config().max_position_embeddings, base.config().head_dim,
            base.config().rope_theta),
      keys_(static_cast<size_t>(base.config().num_hidden_layers)),
      values_(static_cast<size_t>(base.config().num_hidden_layers)) {}

absl::StatusOr<std::span<const float>> Generator::Start(std::span<const int32_t> prompt) {
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt has no tokens");
  length_ = 0;
  return Run(prompt);
}

absl::StatusOr<std::span<const float>> Generator::Append(int32_t token) {
  if (length_ == 0) return absl::FailedPreconditionError("Append before Start");
  return Run({&token, 1});
}

absl::StatusOr<std::span<const float>> Generator::Run(std::span<const int32_t> tokens) {
  const MoeConfig& config = base_->config();
  const auto rows = static_cast<int64_t>(tokens.size());
  const int64_t first = length_;
  if (first + rows > max_length()) {
    return absl::InvalidArgumentError(absl::StrCat("the sequence would be ", first + rows,
                                                   " tokens; the model takes at most ",
                                                   max_length(), " (max_position_embeddings)"));
  }
  for (const int32_t token : tokens) {
    if (token < 0 || token >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token id ", token, " is outside the vocabulary [0, ", config.vocab_size, ")"));
    }
  }
  const ModelLayout& layout = base_->layout();
  const int64_t hidden = config.hidden_size;
  const int64_t q_width = config.query_width();
  const int64_t kv_width = config.key_value_width();
  const auto eps = static_cast<float>(config.rms_norm_eps);
  const cpu::AttentionShape attention{.batch = 1,
                                      .seq_len = first + rows,
                                      .heads = config.num_attention_heads,
                                      .kv_heads = config.num_key_value_heads,
                                      .head_dim = config.head_dim,
                                      .sliding_window = config.sliding_window};

  float* x = Sized(stream_, rows * hidden);
  const FrozenWeight& embedding = base_->matrix(layout.embed_tokens());
  for (int64_t row = 0; row < rows; ++row) {
    cpu::DecodeRows(embedding, tokens[static_cast<size_t>(row)], 1, x + row * hidden);
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
    cpu::RopeForwardAt(q, rows, config.num_attention_heads, first, rope_);
    cpu::RopeForwardAt(k, rows, config.num_key_value_heads, first, rope_);
    AlignedFloats& keys = keys_[static_cast<size_t>(i)];
    AlignedFloats& values = values_[static_cast<size_t>(i)];
    keys.resize(static_cast<size_t>((first + rows) * kv_width));
    values.resize(static_cast<size_t>((first + rows) * kv_width));
    std::copy(k, k + rows * kv_width, keys.begin() + first * kv_width);
    std::copy(v, v + rows * kv_width, values.begin() + first * kv_width);
    float* attended = Sized(layer_.attention_output, rows * q_width);
    cpu::CachedAttentionForward(q, keys.data(), values.data(), attended, rows, first, attention);
    float* residual = Sized(layer_.residual, rows * hidden);
    internal::AdaptedLinearForward(*adapters_, base_->matrix(w.o_proj), sites.o_proj, attended,
                                   rows, low_.o_proj, residual);
    for (int64_t j = 0; j < rows * hidden; ++j) residual[j] += stream_[static_cast<size_t>(j)];
    internal::AdaptedMoeBlock(*base_, *adapters_, i, rows, layer_, low_, next_);
    std::swap(stream_, next_);
  }
  length_ = first + rows;

  // Only the last row's next token is wanted.
  const float* last = stream_.data() + (rows - 1) * hidden;
  cpu::RmsNormForward(last, base_->vector(layout.final_norm()), Sized(final_norm_, hidden),
                      Sized(final_rstd_, 1), 1, hidden, eps);
  cpu::FrozenLinearForward(final_norm_.data(), base_->matrix(layout.lm_head()),
                           Sized(logits_, config.vocab_size), 1);
  return std::span<const float>(logits_.data(), logits_.size());
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

absl::StatusOr<GenerationResult> Generate(Generator& generator, const Tokenizer& tokenizer,
                                          std::string_view prompt, const GenerationOptions& options,
                                          const std::function<void(std::string_view)>& on_text) {
  if (absl::Status status = options.sampling.Validate(); !status.ok()) return status;
  if (options.max_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens must be at least 1, not ", options.max_tokens));
  }
  for (const std::string& stop : options.stop) {
    if (stop.empty()) return absl::InvalidArgumentError("a stop string is empty");
  }
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

  // Text is handed on once it ends on a whole character and can no longer be the start of a
  // stop string.
  size_t held_back = 0;
  for (const std::string& stop : options.stop) held_back = std::max(held_back, stop.size() - 1);
  size_t sent = 0;
  const auto decode_start = std::chrono::steady_clock::now();
  TokenSampler sampler(options.sampling, options.seed);
  result.finish_reason = "length";
  while (static_cast<int64_t>(result.tokens.size()) < options.max_tokens) {
    const int32_t token = sampler.Next(*logits);
    result.tokens.push_back(token);
    if (token == generator.eos_token()) {
      result.finish_reason = "stop";
      break;
    }
    absl::StatusOr<std::string> text = tokenizer.Decode(result.tokens);
    if (!text.ok()) return text.status();
    result.text = *std::move(text);
    size_t end = std::string::npos;
    for (const std::string& stop : options.stop) {
      const size_t from = sent > stop.size() ? sent - stop.size() : 0;
      end = std::min(end, result.text.find(stop, from));
    }
    if (end != std::string::npos) {
      result.text.resize(end);
      result.finish_reason = "stop";
      break;
    }
    const size_t ready = result.text.size() - IncompleteUtf8Tail(result.text);
    if (ready > sent + held_back) {
      size_t boundary = ready - held_back;
      // Back to the start of the character the held-back bytes begin inside.
      while (boundary > sent &&
             (static_cast<unsigned char>(result.text[boundary]) & 0xC0) == 0x80) {
        --boundary;
      }
      on_text(std::string_view(result.text).substr(sent, boundary - sent));
      sent = boundary;
    }
    if (static_cast<int64_t>(result.tokens.size()) == options.max_tokens ||
        generator.length() == generator.max_length()) {
      break;
    }
    logits = generator.Append(token);
    if (!logits.ok()) return logits.status();
  }
  result.decode_seconds = SecondsSince(decode_start);
  if (result.text.size() > sent) on_text(std::string_view(result.text).substr(sent));
  return result;
}

}  // namespace fedmoe::model
