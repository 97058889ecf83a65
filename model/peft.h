// LoRA adapters on disk as Hugging Face PEFT saves them (issue [peft]), so that the adapters a
// federation trains load into PEFT over the same base (PeftModel.from_pretrained), and adapters
// trained elsewhere load here:
//   - adapter_config.json: peft_type "LORA", task_type "CAUSAL_LM", r, lora_alpha,
//     target_modules, modules_to_save ["gate"] (the routers, trained whole),
//     base_model_name_or_path, and PEFT's defaults for what fedmoe does not use (no dropout, no
//     bias, no DoRA);
//   - adapter_model.safetensors: "base_model.model.<module>.lora_A.weight" [r, in] and
//     ".lora_B.weight" [out, r] for every adapted linear, and
//     "base_model.model.<layer>.block_sparse_moe.gate.weight" for each router (lora.h).
// What PEFT has no key for (FFA-LoRA's frozen A and the seed it was drawn from) rides in the
// safetensors __metadata__, which PEFT ignores.
#ifndef FEDMOE_MODEL_PEFT_H_
#define FEDMOE_MODEL_PEFT_H_

#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/lora.h"

namespace fedmoe::model {

inline constexpr char kAdapterConfigFile[] = "adapter_config.json";
inline constexpr char kAdapterWeightsFile[] = "adapter_model.safetensors";

// Writes the two files into `directory` (created if missing), each atomically.
// `base_model` goes to base_model_name_or_path: the base's path or name. A non-empty
// `base_content_sha256` (frozen_base.h's BaseContentHash) is kept in the weights' metadata, so
// the adapters name the exact weights they were trained over wherever they are copied.
absl::Status SaveAdapters(const LoraAdapters& adapters, const std::filesystem::path& directory,
                          std::string_view base_model, std::string_view base_content_sha256 = {});

// The base content hash SaveAdapters recorded in the directory's adapter_model.safetensors;
// empty when it recorded none (adapters from elsewhere).
absl::StatusOr<std::string> AdapterBaseContentHash(const std::filesystem::path& directory);

// The LoRA settings of adapter_config.json text (its seed 0 and train_a true: the file has no
// key for them). InvalidArgument names what fedmoe cannot
// apply: another peft_type, DoRA, rsLoRA, per-module rank or alpha patterns, a bias, fan-in/fan-out
// weights, layers_to_transform, or a target module outside the Mixtral layout's linears.
absl::StatusOr<LoraConfig> ParseAdapterConfig(std::string_view json_text);

// The routers an adapter directory does not carry come from the base: layer → its router
// [experts, hidden].
using BaseRouters = std::function<std::span<const float>(int64_t layer)>;

// Loads an adapter directory for a model of `model`'s config. Every tensor must be where the
// config puts it, with its shape; a tensor with no place (another model, another rank) is an
// error that names it. Routers missing from the file are copied from `base_routers`.
absl::StatusOr<LoraAdapters> LoadAdapters(const std::filesystem::path& directory,
                                          const MoeConfig& model, const BaseRouters& base_routers);

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_PEFT_H_
