#include "model/lora.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "config/enum_names.h"
#include "model/init.h"

namespace fedmoe::model {
namespace {

constexpr config::EnumName<LoraModule> kModuleNames[] = {
    {LoraModule::kQProj, "q_proj"}, {LoraModule::kKProj, "k_proj"}, {LoraModule::kVProj, "v_proj"},
    {LoraModule::kOProj, "o_proj"}, {LoraModule::kW1, "w1"},        {LoraModule::kW2, "w2"},
    {LoraModule::kW3, "w3"}};

// PEFT wraps the model twice (PeftModel, then LoraModel), so every key it saves starts so.
constexpr std::string_view kPeftPrefix = "base_model.model.";

}  // namespace

std::string_view LoraModuleName(LoraModule module) {
  return config::NameOf(kModuleNames, module, "unknown");
}

bool LoraConfig::Targets(LoraModule module) const {
  return std::find(targets.begin(), targets.end(), module) != targets.end();
}

absl::Status LoraConfig::Validate() const {
  if (rank < 1) return absl::InvalidArgumentError(absl::StrCat("lora rank ", rank, " is below 1"));
  if (!(alpha > 0) || !std::isfinite(alpha)) {
    return absl::InvalidArgumentError(
        absl::StrCat("lora alpha ", alpha, " must be positive and finite"));
  }
  if (targets.empty()) return absl::InvalidArgumentError("lora has no target modules");
  for (size_t i = 0; i < targets.size(); ++i) {
    if (std::find(targets.begin() + static_cast<std::ptrdiff_t>(i) + 1, targets.end(),
                  targets[i]) != targets.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "lora target ", std::string(LoraModuleName(targets[i])), " is listed twice"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<LoraModule>> ParseLoraTargets(std::string_view list) {
  std::vector<LoraModule> targets;
  const auto add = [&](LoraModule module) {
    if (std::find(targets.begin(), targets.end(), module) == targets.end()) {
      targets.push_back(module);
    }
  };
  const std::string text(list);
  for (const absl::string_view raw : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    const std::string entry(absl::StripAsciiWhitespace(raw));
    const bool attention = entry == "attention" || entry == "all";
    const bool experts = entry == "experts" || entry == "all";
    if (attention) {
      for (const LoraModule m :
           {LoraModule::kQProj, LoraModule::kKProj, LoraModule::kVProj, LoraModule::kOProj}) {
        add(m);
      }
    }
    if (experts) {
      for (const LoraModule m : {LoraModule::kW1, LoraModule::kW2, LoraModule::kW3}) add(m);
    }
    if (attention || experts) continue;
    const std::optional<LoraModule> module = config::ValueOf(kModuleNames, entry);
    if (!module.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown lora target \"", entry,
          "\"; expected q_proj, k_proj, v_proj, o_proj, w1, w2, w3, attention, experts or all"));
    }
    add(*module);
  }
  if (targets.empty()) return absl::InvalidArgumentError("the lora target list is empty");
  return targets;
}

std::vector<std::string> LoraTargetNames(std::span<const LoraModule> targets) {
  std::vector<std::string> names;
  for (const LoraModule module : targets) names.emplace_back(LoraModuleName(module));
  return names;
}

LoraLayout::LoraLayout(const MoeConfig& model, const LoraConfig& lora) {
  const int64_t hidden = model.hidden_size;
  const int64_t inner = model.intermediate_size;
  layers_.resize(static_cast<size_t>(model.num_hidden_layers));
  for (int64_t i = 0; i < model.num_hidden_layers; ++i) {
    LayerSites& layer = layers_[static_cast<size_t>(i)];
    const std::string prefix = absl::StrCat("model.layers.", i, ".");
    const std::string attention = absl::StrCat(prefix, "self_attn.");
    layer.q_proj =
        AddSite(lora, LoraModule::kQProj, attention + "q_proj", hidden, model.query_width(), i, -1);
    layer.k_proj = AddSite(lora, LoraModule::kKProj, attention + "k_proj", hidden,
                           model.key_value_width(), i, -1);
    layer.v_proj = AddSite(lora, LoraModule::kVProj, attention + "v_proj", hidden,
                           model.key_value_width(), i, -1);
    layer.o_proj =
        AddSite(lora, LoraModule::kOProj, attention + "o_proj", model.query_width(), hidden, i, -1);
    const std::string moe = absl::StrCat(prefix, "block_sparse_moe.");
    layer.router = Add(std::string(kPeftPrefix) + moe + "gate.weight",
                       {model.num_local_experts, hidden}, AdapterRole::kRouter, i, -1);
    const auto add_expert = [&](const std::string& base, int64_t width, int64_t expert) {
      return ExpertSites{
          .w1 = AddSite(lora, LoraModule::kW1, base + "w1", hidden, width, i, expert),
          .w2 = AddSite(lora, LoraModule::kW2, base + "w2", width, hidden, i, expert),
          .w3 = AddSite(lora, LoraModule::kW3, base + "w3", hidden, width, i, expert)};
    };
    for (int64_t e = 0; e < model.num_local_experts; ++e) {
      layer.experts.push_back(add_expert(absl::StrCat(moe, "experts.", e, "."), inner, e));
    }
    if (model.n_shared_experts > 0) {
      layer.shared = add_expert(moe + "shared_experts.", model.shared_inner_size(), -1);
    }
  }
}

LoraSite LoraLayout::AddSite(const LoraConfig& lora, LoraModule module,
                             const std::string& base_module, int64_t in_features,
                             int64_t out_features, int64_t layer, int64_t expert) {
  LoraSite site{.in_features = in_features, .out_features = out_features};
  if (!lora.Targets(module)) return site;
  const std::string key = std::string(kPeftPrefix) + base_module;
  site.a =
      Add(key + ".lora_A.weight", {lora.rank, in_features}, AdapterRole::kLoraA, layer, expert);
  site.b =
      Add(key + ".lora_B.weight", {out_features, lora.rank}, AdapterRole::kLoraB, layer, expert);
  return site;
}

int64_t LoraLayout::Add(std::string name, std::vector<int64_t> shape, AdapterRole role,
                        int64_t layer, int64_t expert) {
  int64_t size = 1;
  for (const int64_t dimension : shape) size *= dimension;
  const int64_t offset = total_size_;
  index_.emplace(name, tensors_.size());
  tensors_.push_back({.name = std::move(name),
                      .shape = std::move(shape),
                      .role = role,
                      .layer = layer,
                      .expert = expert,
                      .offset = offset,
                      .size = size});
  total_size_ += size;
  return offset;
}

const AdapterTensor* LoraLayout::Find(std::string_view name) const {
  const auto found = index_.find(std::string(name));
  return found == index_.end() ? nullptr : &tensors_[found->second];
}

LoraAdapters::LoraAdapters(const MoeConfig& model, const LoraConfig& lora)
    : model_(model),
      lora_(lora),
      layout_(model, lora),
      values_(static_cast<size_t>(layout_.total_size()), 0.0F) {}

void InitializeLora(LoraAdapters& adapters) {
  const std::vector<AdapterTensor>& tensors = adapters.layout().tensors();
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t index = 0; index < tensors.size(); ++index) {
    const AdapterTensor& spec = tensors[index];
    std::span<float> values = adapters.tensor(spec);
    if (spec.role == AdapterRole::kLoraB) std::fill(values.begin(), values.end(), 0.0F);
    if (spec.role != AdapterRole::kLoraA) continue;
    // sqrt and division are correctly rounded in IEEE arithmetic, and the draw is an integer
    // made exact in a double, so the one rounding to float is the same everywhere.
    const double bound = 1.0 / std::sqrt(static_cast<double>(spec.shape[1]));
    std::mt19937_64 generator(TensorStreamSeed(adapters.config().seed, index));
    for (float& value : values) {
      const double unit = static_cast<double>(generator() >> 11) * 0x1.0p-52 - 1.0;  // [−1, 1)
      value = static_cast<float>(bound * unit);
    }
  }
}

}  // namespace fedmoe::model
