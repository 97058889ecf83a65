#include "bench/train_step_shapes.h"

#include <random>

namespace fedmoe::bench {

// medium is #9's: DeepSeekMoE-like, 4.7B parameters (about 0.7B active per token). The vocabulary
// is the byte tokenizer's, as for the others.
const Shape kShapes[3] = {{"tiny", 64, 2, 4, 2, 128, 8, 2, 0, 16, 128, true},
                          {"small", 512, 4, 8, 4, 1408, 8, 2, 0, 8, 256, true},
                          {"medium", 2048, 8, 16, 16, 1408, 64, 6, 2, 8, 1024, false}};

model::MoeConfig ConfigOf(const Shape& shape) {
  model::MoeConfig config;
  config.vocab_size = 258;
  config.hidden_size = shape.hidden;
  config.intermediate_size = shape.inner;
  config.num_hidden_layers = shape.layers;
  config.num_attention_heads = shape.heads;
  config.num_key_value_heads = shape.kv_heads;
  config.head_dim = shape.hidden / shape.heads;
  config.num_local_experts = shape.experts;
  config.num_experts_per_tok = shape.top_k;
  config.n_shared_experts = shape.shared_experts;
  config.shared_expert_intermediate_size = shape.shared_experts > 0 ? shape.inner : 0;
  config.max_position_embeddings = 4096;
  config.eos_token_id = 256;
  return config;
}

double TrainingFlopsPerToken(const model::MoeConfig& config, int64_t seq_len) {
  const auto h = static_cast<double>(config.hidden_size);
  const auto q = static_cast<double>(config.query_width());
  const auto kv = static_cast<double>(config.key_value_width());
  const double weights_per_layer =
      h * q + 2 * h * kv + q * h + h * static_cast<double>(config.num_local_experts) +
      3 * h *
          static_cast<double>(config.num_experts_per_tok * config.intermediate_size +
                              config.shared_inner_size());
  const double window = config.sliding_window > 0
                            ? static_cast<double>(std::min(config.sliding_window, seq_len))
                            : static_cast<double>(seq_len);
  const double keys = (window + 1) / 2;  // the mean over rows, up to the window
  const double attention_per_layer = 2 * 2 * keys * q;
  const double forward = static_cast<double>(config.num_hidden_layers) *
                             (2 * weights_per_layer + attention_per_layer) +
                         2 * h * static_cast<double>(config.vocab_size);
  return 3 * forward;
}

double FrozenWeightGradientFlopsPerToken(const model::MoeConfig& config,
                                         const model::TrainableSet& trainable) {
  const auto h = static_cast<double>(config.hidden_size);
  const auto q = static_cast<double>(config.query_width());
  const auto kv = static_cast<double>(config.key_value_width());
  double frozen_per_layer = 0;
  if (!trainable.attention) frozen_per_layer += h * q + 2 * h * kv + q * h;
  if (!trainable.router) frozen_per_layer += h * static_cast<double>(config.num_local_experts);
  if (!trainable.routed_experts) {
    frozen_per_layer +=
        3 * h * static_cast<double>(config.num_experts_per_tok * config.intermediate_size);
  }
  if (!trainable.shared_experts) {
    frozen_per_layer += 3 * h * static_cast<double>(config.shared_inner_size());
  }
  const bool head_trained = config.tie_word_embeddings ? trainable.embeddings : trainable.output;
  const double frozen_head = head_trained ? 0 : h * static_cast<double>(config.vocab_size);
  return 2 * (static_cast<double>(config.num_hidden_layers) * frozen_per_layer + frozen_head);
}

Json StepLine(const Shape& shape, std::string_view matmul_precision) {
  return {{"benchmark", "train_step"},
          {"config", shape.name},
          {"matmul_precision", matmul_precision},
          {"batch", shape.batch},
          {"seq_len", shape.seq_len},
          {"hidden", shape.hidden},
          {"layers", shape.layers},
          {"heads", shape.heads},
          {"experts", shape.experts},
          {"top_k", shape.top_k},
          {"shared_experts", shape.shared_experts},
          {"inner", shape.inner}};
}

std::vector<int32_t> RandomTokens(int64_t count, uint32_t seed) {
  std::mt19937 generator(seed);
  std::vector<int32_t> tokens(static_cast<size_t>(count));
  for (int32_t& t : tokens) t = static_cast<int32_t>(generator() % 256);
  return tokens;
}

double Seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace fedmoe::bench
