#include "model/explain.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "model/backward.h"
#include "model/forward.h"
#include "model/internal/utf8.h"

namespace fedmoe::model {

float Explanation::Attention(int64_t layer, int64_t head, int64_t query, int64_t key) const {
  const int64_t length = static_cast<int64_t>(tokens.size());
  return attention[static_cast<size_t>(((layer * heads + head) * length + query) * length + key)];
}

std::vector<size_t> Explanation::StrongestAttributions(size_t count) const {
  std::vector<size_t> order(attribution.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return std::abs(attribution[a]) > std::abs(attribution[b]);
  });
  order.resize(std::min(order.size(), count));
  return order;
}

namespace {

// The softmax of one row of logits, in double so that the reported probabilities sum to 1.
std::vector<double> Softmax(std::span<const float> logits) {
  const float largest = *std::max_element(logits.begin(), logits.end());
  std::vector<double> probability(logits.size());
  double total = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    probability[i] = std::exp(static_cast<double>(logits[i]) - largest);
    total += probability[i];
  }
  for (double& p : probability) p /= total;
  return probability;
}

void AppendPrintable(std::string_view bytes, std::string& label) {
  while (!bytes.empty()) {
    const size_t valid = std::min(internal::FirstInvalidUtf8(bytes), bytes.size());
    for (const char c : bytes.substr(0, valid)) {
      const auto byte = static_cast<unsigned char>(c);
      if (c == '\n') {
        label += "\u21b5";
      } else if (c == '\t') {
        label += "\u21e5";
      } else if (c == '\r') {
        label += "\u240d";
      } else if (byte < 0x20 || byte == 0x7f) {
        label += absl::StrFormat("\\x%02X", byte);
      } else {
        label += c;
      }
    }
    if (valid == bytes.size()) return;
    label += absl::StrFormat("\\x%02X", static_cast<unsigned char>(bytes[valid]));
    bytes.remove_prefix(valid + 1);
  }
}

}  // namespace

absl::StatusOr<std::vector<std::string>> TokenLabels(const Tokenizer& tokenizer,
                                                     std::span<const int32_t> tokens) {
  std::vector<std::string> labels;
  labels.reserve(tokens.size());
  for (const int32_t token : tokens) {
    absl::StatusOr<std::string> bytes = tokenizer.Decode(std::span<const int32_t>(&token, 1));
    if (!bytes.ok()) return bytes.status();
    std::string label;
    AppendPrintable(*bytes, label);
    // A special token that decodes to nothing still takes its place in the text.
    if (label.empty()) label = absl::StrCat("\u27e8", token, "\u27e9");
    labels.push_back(std::move(label));
  }
  return labels;
}

absl::StatusOr<Explanation> Explain(const ModelParameters& parameters,
                                    std::span<const int32_t> tokens, std::optional<int32_t> target,
                                    int64_t top_next) {
  const MoeConfig& config = parameters.config();
  const int64_t length = static_cast<int64_t>(tokens.size());
  if (length == 0) return absl::InvalidArgumentError("the text to explain has no tokens");
  if (absl::Status status = CheckTokens(config, tokens, 1, length); !status.ok()) return status;
  if (target.has_value() && (*target < 0 || *target >= config.vocab_size)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the target token ", *target, " is outside the vocabulary of ", config.vocab_size));
  }

  ForwardPass pass;
  if (absl::Status status = Forward(parameters, tokens, 1, length, pass); !status.ok()) {
    return status;
  }
  const int64_t vocab = config.vocab_size;
  const std::vector<double> next =
      Softmax(std::span<const float>(pass.logits)
                  .subspan(static_cast<size_t>((length - 1) * vocab), static_cast<size_t>(vocab)));
  std::vector<int32_t> ranked(static_cast<size_t>(vocab));
  std::iota(ranked.begin(), ranked.end(), 0);
  const size_t shown = static_cast<size_t>(std::clamp<int64_t>(top_next, 1, vocab));
  std::partial_sort(
      ranked.begin(), ranked.begin() + static_cast<std::ptrdiff_t>(shown), ranked.end(),
      [&](int32_t a, int32_t b) {
        return next[static_cast<size_t>(a)] > next[static_cast<size_t>(b)] ||
               (next[static_cast<size_t>(a)] == next[static_cast<size_t>(b)] && a < b);
      });

  Explanation explanation;
  explanation.layers = config.num_hidden_layers;
  explanation.heads = config.num_attention_heads;
  explanation.experts = config.num_local_experts;
  explanation.top_k = config.num_experts_per_tok;
  explanation.tokens.assign(tokens.begin(), tokens.end());
  for (size_t i = 0; i < shown; ++i) {
    explanation.top_next.push_back({ranked[i], next[static_cast<size_t>(ranked[i])]});
  }
  explanation.target = target.value_or(ranked[0]);
  explanation.target_probability = next[static_cast<size_t>(explanation.target)];
  for (const LayerActivations& layer : pass.layers) {
    explanation.expert_index.insert(explanation.expert_index.end(), layer.expert_index.begin(),
                                    layer.expert_index.end());
    explanation.expert_weight.insert(explanation.expert_weight.end(), layer.expert_weight.begin(),
                                     layer.expert_weight.end());
    explanation.attention.insert(explanation.attention.end(), layer.attention_probs.begin(),
                                 layer.attention_probs.end());
  }

  // The loss −log p(target) at the last position alone: its gradient is −∂f/∂x.
  std::vector<int32_t> targets(static_cast<size_t>(length), -1);
  targets.back() = explanation.target;
  TrainableSet only_the_input;
  only_the_input.routed_experts = false;
  only_the_input.shared_experts = false;
  only_the_input.router = false;
  only_the_input.embeddings = true;
  BackwardOptions options;
  options.predictions_in_step = 1;
  std::vector<float> unused_gradients(static_cast<size_t>(parameters.layout().total_size()));
  BackwardScratch scratch;
  absl::StatusOr<LossBreakdown> loss =
      Backward(parameters, pass, targets, only_the_input, options, unused_gradients, scratch);
  if (!loss.ok()) return loss.status();

  const int64_t hidden = config.hidden_size;
  const float* input = pass.layers.front().input.data();
  const float* d_input = scratch.d_stream.data();
  explanation.attribution.resize(static_cast<size_t>(length));
  for (int64_t t = 0; t < length; ++t) {
    double sum = 0;
    for (int64_t h = 0; h < hidden; ++h) {
      sum += static_cast<double>(input[t * hidden + h]) * d_input[t * hidden + h];
    }
    explanation.attribution[static_cast<size_t>(t)] = static_cast<float>(-sum);
  }
  return explanation;
}

}  // namespace fedmoe::model
