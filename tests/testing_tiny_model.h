// A Mixtral-layout MoE small enough to build, save and load thousands of times a second: 2
// layers, 3 routed experts and a shared one, hidden size 4, vocabulary 8. For tests that need a
// whole model but not a useful one.
#ifndef FEDMOE_TESTS_TESTING_TINY_MODEL_H_
#define FEDMOE_TESTS_TESTING_TINY_MODEL_H_

#include <cstdint>
#include <random>
#include <vector>

#include "model/config.h"

namespace fedmoe::testing {

inline model::MoeConfig TinyMoeConfig() {
  model::MoeConfig config;
  config.vocab_size = 8;
  config.hidden_size = 4;
  config.intermediate_size = 2;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 1;
  config.num_key_value_heads = 1;
  config.head_dim = 4;
  config.num_local_experts = 3;
  config.num_experts_per_tok = 2;
  config.n_shared_experts = 1;
  config.shared_expert_intermediate_size = 2;
  return config;
}

// Small enough for finite differences over every tensor, with every feature the backward pass
// has: routing top-2 of 4, optionally a shared expert, tied embeddings and grouped KV heads, and
// weights large enough (0.3) that the routing is far from uniform.
inline model::MoeConfig GradientCheckConfig(bool shared, bool tied, int64_t kv_heads) {
  model::MoeConfig config;
  config.vocab_size = 23;
  config.hidden_size = 16;
  config.intermediate_size = 12;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 4;
  config.num_key_value_heads = kv_heads;
  config.head_dim = 4;
  config.num_local_experts = 4;
  config.num_experts_per_tok = 2;
  config.n_shared_experts = shared ? 1 : 0;
  config.shared_expert_intermediate_size = shared ? 8 : 0;
  config.tie_word_embeddings = tied;
  config.rope_theta = 10000;
  config.max_position_embeddings = 32;
  config.initializer_range = 0.3;
  return config;
}

// `count` token ids below `vocab`, the same for the same seed.
inline std::vector<int32_t> RandomTokens(int64_t count, int64_t vocab, uint32_t seed) {
  std::mt19937 generator(seed);
  std::vector<int32_t> tokens(static_cast<size_t>(count));
  for (int32_t& t : tokens) t = static_cast<int32_t>(generator() % static_cast<uint32_t>(vocab));
  return tokens;
}

}  // namespace fedmoe::testing

#endif  // FEDMOE_TESTS_TESTING_TINY_MODEL_H_
