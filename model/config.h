// The model's hyper-parameters: a Hugging Face Mixtral config.json, plus DeepSeekMoE-style
// shared experts as an extension (DESIGN §7).
#ifndef FEDMOE_MODEL_CONFIG_H_
#define FEDMOE_MODEL_CONFIG_H_

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace fedmoe::model {

struct MoeConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  // The inner width of each routed expert's SwiGLU MLP.
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  // hidden_size / num_attention_heads unless config.json sets head_dim.
  int64_t head_dim = 0;
  int64_t num_local_experts = 0;
  int64_t num_experts_per_tok = 0;
  // Shared experts run on every token beside the routed ones. They are stored merged into one
  // MLP of inner width n_shared_experts × shared_expert_intermediate_size, as DeepSeekMoE does.
  int64_t n_shared_experts = 0;
  int64_t shared_expert_intermediate_size = 0;
  double rms_norm_eps = 1e-5;
  double rope_theta = 1e6;
  int64_t max_position_embeddings = 32768;
  // Keys further back than this are masked; 0 means no window (config.json's null).
  int64_t sliding_window = 0;
  bool tie_word_embeddings = false;
  // The standard deviation of model init's normal weights.
  double initializer_range = 0.02;
  // The load-balancing loss coefficient that local training uses.
  double router_aux_loss_coef = 0.02;
  // -1 when config.json has none.
  int64_t bos_token_id = -1;
  int64_t eos_token_id = -1;

  int64_t shared_inner_size() const { return n_shared_experts * shared_expert_intermediate_size; }
  int64_t query_width() const { return num_attention_heads * head_dim; }
  int64_t key_value_width() const { return num_key_value_heads * head_dim; }

  // config.json text that Hugging Face's MixtralConfig loads (model_type "mixtral"), with the
  // shared-expert keys added when there are shared experts.
  std::string ToJson() const;
};

// Parses and validates config.json text. Every error names the key at fault: a missing
// required key, a wrong type, a value out of range, or keys that disagree (heads that do not
// divide the hidden size, more experts per token than experts, ...). Unknown keys are ignored,
// as Hugging Face's loader does; features that would change the arithmetic and that fedmoe does
// not implement (rope_scaling, a hidden_act other than silu, a model_type other than mixtral)
// are refused.
absl::StatusOr<MoeConfig> ParseMoeConfig(std::string_view json_text);

// Reads and parses a config.json file; errors are prefixed with the file's path.
absl::StatusOr<MoeConfig> LoadMoeConfig(const std::filesystem::path& path);

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_CONFIG_H_
