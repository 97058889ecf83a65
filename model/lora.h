// LoRA adapters on a Mixtral-layout model (issue [peft]): which linears carry one, where each
// adapter's A and B sit in one buffer, their names in Hugging Face PEFT's checkpoint layout, and
// their initial values.
//
// An adapted linear computes W·x + (α/r)·B·A·x, with A [r, in_features] and B [out_features, r].
// Targets are named as PEFT's target_modules names them for Mixtral: q_proj, k_proj, v_proj,
// o_proj (every layer's attention), and w1, w2, w3 (every routed expert, each with its own A and
// B, and the shared experts). Each layer's router (block_sparse_moe.gate) trains whole beside
// the adapters, as PEFT's modules_to_save keeps it.
//
// FFA-LoRA (Sun et al., ICLR 2024) is the default: A is frozen at values every site draws alike
// from a published seed, and only B trains, from zero. The adapted weight W + s·B·A is then
// linear in B, so the mean of the sites' Bs gives exactly the mean of their adapted weights:
// what secure aggregation sums and DP noises is the quantity that is averaged. Plain LoRA
// (train_a) trains A too; the product of means is then not the mean of products, so it is for
// fine-tuning at one site only.
#ifndef FEDMOE_MODEL_LORA_H_
#define FEDMOE_MODEL_LORA_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cpu/aligned.h"
#include "model/config.h"

namespace fedmoe::model {

enum class LoraModule { kQProj, kKProj, kVProj, kOProj, kW1, kW2, kW3 };

// PEFT's target_modules spelling: "q_proj", ..., "w1".
std::string_view LoraModuleName(LoraModule module);

struct LoraConfig {
  int64_t rank = 8;
  double alpha = 16;
  std::vector<LoraModule> targets = {LoraModule::kW1, LoraModule::kW2, LoraModule::kW3};
  // False: FFA-LoRA, A frozen. True: plain LoRA, A trained too (one site only).
  bool train_a = false;
  // The seed A is drawn from; a federation's round spec publishes it.
  uint64_t seed = 0;

  float scaling() const { return static_cast<float>(alpha / static_cast<double>(rank)); }
  bool Targets(LoraModule module) const;
  // InvalidArgument naming the fault: a rank below 1, α not positive and finite, no targets or
  // one twice.
  absl::Status Validate() const;
};

// "w1,w2,w3" style lists of target module names; "experts" is w1,w2,w3, "attention" is
// q_proj,k_proj,v_proj,o_proj, "all" both. InvalidArgument names an unknown entry.
absl::StatusOr<std::vector<LoraModule>> ParseLoraTargets(std::string_view list);
// The targets as PEFT's adapter_config.json lists them.
std::vector<std::string> LoraTargetNames(std::span<const LoraModule> targets);

enum class AdapterRole { kLoraA, kLoraB, kRouter };

struct AdapterTensor {
  // PEFT's key in adapter_model.safetensors.
  std::string name;
  std::vector<int64_t> shape;
  AdapterRole role = AdapterRole::kLoraB;
  int64_t layer = -1;
  // The routed expert it adapts; −1 for attention, routers and the shared experts.
  int64_t expert = -1;
  int64_t offset = 0;
  int64_t size = 0;
};

// One adapted linear: where its A and B are, or absent (a = −1) when it is not a target.
struct LoraSite {
  int64_t in_features = 0;
  int64_t out_features = 0;
  int64_t a = -1;  // [rank, in_features]
  int64_t b = -1;  // [out_features, rank]
  bool present() const { return a >= 0; }
};

struct ExpertSites {
  LoraSite w1, w2, w3;
};

struct LayerSites {
  LoraSite q_proj, k_proj, v_proj, o_proj;
  // The router's copy, [experts, hidden].
  int64_t router = 0;
  std::vector<ExpertSites> experts;
  ExpertSites shared;  // present only with shared experts
};

// The adapter buffer's layout. Per layer: attention's adapters, the router, then each routed
// expert's w1, w2, w3 adapters together (an expert's block is contiguous, for DESIGN §4's
// per-expert weighting), then the shared experts'. Each adapter is its A then its B.
class LoraLayout {
 public:
  LoraLayout(const MoeConfig& model, const LoraConfig& lora);

  const std::vector<AdapterTensor>& tensors() const { return tensors_; }
  int64_t total_size() const { return total_size_; }
  const LayerSites& layer(int64_t index) const { return layers_[static_cast<size_t>(index)]; }
  const AdapterTensor* Find(std::string_view name) const;

 private:
  LoraSite AddSite(const LoraConfig& lora, LoraModule module, const std::string& base_module,
                   int64_t in_features, int64_t out_features, int64_t layer, int64_t expert);
  int64_t Add(std::string name, std::vector<int64_t> shape, AdapterRole role, int64_t layer,
              int64_t expert);

  std::vector<AdapterTensor> tensors_;
  std::unordered_map<std::string, size_t> index_;
  std::vector<LayerSites> layers_;
  int64_t total_size_ = 0;
};

// A model's adapters and router copies, as fp32 in one buffer.
class LoraAdapters {
 public:
  LoraAdapters(const MoeConfig& model, const LoraConfig& lora);

  const MoeConfig& model_config() const { return model_; }
  const LoraConfig& config() const { return lora_; }
  const LoraLayout& layout() const { return layout_; }
  std::span<float> values() { return values_; }
  std::span<const float> values() const { return values_; }
  float* at(int64_t offset) { return values_.data() + offset; }
  const float* at(int64_t offset) const { return values_.data() + offset; }
  std::span<float> tensor(const AdapterTensor& spec) {
    return values().subspan(static_cast<size_t>(spec.offset), static_cast<size_t>(spec.size));
  }
  std::span<const float> tensor(const AdapterTensor& spec) const {
    return values().subspan(static_cast<size_t>(spec.offset), static_cast<size_t>(spec.size));
  }

 private:
  MoeConfig model_;
  LoraConfig lora_;
  LoraLayout layout_;
  kernels::cpu::AlignedFloats values_;
};

// Sets every A to its draw from config().seed and every B to zero, so the adapted model starts
// equal to its base. A's values are uniform in [−1/√in_features, 1/√in_features), PEFT's
// default (Kaiming-uniform with a = √5), drawn with integer arithmetic and one rounding so that
// every platform draws the same bits: FFA's exactness needs every site to hold the same A.
// Routers are left alone.
void InitializeLora(LoraAdapters& adapters);

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_LORA_H_
