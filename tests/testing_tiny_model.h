// A Mixtral-layout MoE small enough to build, save and load thousands of times a second: 2
// layers, 3 routed experts and a shared one, hidden size 4, vocabulary 8. For tests that need a
// whole model but not a useful one.
#ifndef FEDMOE_TESTS_TESTING_TINY_MODEL_H_
#define FEDMOE_TESTS_TESTING_TINY_MODEL_H_

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

}  // namespace fedmoe::testing

#endif  // FEDMOE_TESTS_TESTING_TINY_MODEL_H_
