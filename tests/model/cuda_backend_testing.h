// What the CUDA backends' tests share (cuda_training_test.cc, cuda_adapter_test.cc): a model
// small enough for the simulator, random batches, the loss options of one micro-batch, and a
// comparison of buffers tensor by tensor.
#ifndef FEDMOE_TESTS_MODEL_CUDA_BACKEND_TESTING_H_
#define FEDMOE_TESTS_MODEL_CUDA_BACKEND_TESTING_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/backward.h"
#include "model/config.h"
#include "model/data.h"

namespace fedmoe::testing {

// Small enough for the simulator, with every feature the step has: grouped KV heads, shared
// experts, a sliding window shorter than the sequence, tied embeddings off; head_dim 16, which
// the CUDA attention takes.
inline model::MoeConfig SmallCudaConfig() {
  model::MoeConfig config;
  config.vocab_size = 96;
  config.hidden_size = 64;
  config.intermediate_size = 48;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 4;
  config.num_key_value_heads = 2;
  config.head_dim = 16;
  config.num_local_experts = 6;
  config.num_experts_per_tok = 2;
  config.n_shared_experts = 1;
  config.shared_expert_intermediate_size = 32;
  config.sliding_window = 9;
  config.max_position_embeddings = 64;
  config.eos_token_id = 95;
  return config;
}

// `batch` sequences of `seq_len` random tokens, with their next-token targets.
inline model::Batch RandomBatch(const model::MoeConfig& config, int64_t batch, int64_t seq_len,
                                uint32_t seed) {
  std::mt19937 generator(seed);
  model::Batch result;
  result.batch = batch;
  result.seq_len = seq_len;
  for (int64_t i = 0; i < batch * seq_len; ++i) {
    result.tokens.push_back(static_cast<int32_t>(generator() % config.vocab_size));
  }
  result.targets = model::NextTokenTargets(result.tokens, batch, seq_len);
  result.predictions = batch * (seq_len - 1);
  return result;
}

// One micro-batch that is the whole step, with the balance term on.
inline model::BackwardOptions LossOptions(const model::Batch& batch) {
  return {.balance_coefficient = 0.05,
          .predictions_in_step = static_cast<double>(batch.predictions),
          .step_share = 1.0};
}

// Every tensor of `layout` (a ModelLayout or a LoraLayout) within tolerance × its largest
// magnitude in `expected`: gradients of different tensors differ by orders of magnitude, so a
// tolerance relative to each is fair to the small ones, and a tensor that is zero in `expected`
// (a frozen one) must be zero in `actual`.
template <typename Layout>
void ExpectTensorsNear(const Layout& layout, const std::vector<float>& actual,
                       const std::vector<float>& expected, double tolerance,
                       const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size());
  for (const auto& spec : layout.tensors()) {
    double scale = 0;
    for (int64_t i = 0; i < spec.size; ++i) {
      scale = std::max(scale, std::abs(double{expected[static_cast<size_t>(spec.offset + i)]}));
    }
    for (int64_t i = 0; i < spec.size; ++i) {
      const auto at = static_cast<size_t>(spec.offset + i);
      ASSERT_NEAR(actual[at], expected[at], tolerance * scale + 1e-12)
          << what << " of " << spec.name << " at " << i << " (tensor scale " << scale << ")";
    }
  }
}

}  // namespace fedmoe::testing

#endif  // FEDMOE_TESTS_MODEL_CUDA_BACKEND_TESTING_H_
