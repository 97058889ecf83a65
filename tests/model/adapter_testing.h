// What the adapter tests share (adapter_test.cc, cuda_adapter_test.cc, generation_test.cc,
// cuda_generation_test.cc).
#ifndef FEDMOE_TESTS_MODEL_ADAPTER_TESTING_H_
#define FEDMOE_TESTS_MODEL_ADAPTER_TESTING_H_

#include <cstdint>
#include <random>

#include "model/lora.h"

namespace fedmoe::testing {

// Every B and router moved off its starting value by a normal draw of this scale (A stays the
// seed's draw), so that every branch carries signal.
inline void PerturbAdapters(model::LoraAdapters& adapters, uint32_t seed, float scale) {
  std::mt19937 generator(seed);
  std::normal_distribution<float> normal(0.0F, scale);
  for (const model::AdapterTensor& spec : adapters.layout().tensors()) {
    if (spec.role == model::AdapterRole::kLoraA) continue;
    for (float& value : adapters.tensor(spec)) value += normal(generator);
  }
}

// Rank-3 LoRA on every linear of the model, from a fixed seed.
inline model::LoraConfig EveryLinearLora() {
  model::LoraConfig lora;
  lora.rank = 3;
  lora.alpha = 6;
  lora.targets = *model::ParseLoraTargets("all");
  lora.seed = 5;
  return lora;
}

}  // namespace fedmoe::testing

#endif  // FEDMOE_TESTS_MODEL_ADAPTER_TESTING_H_
