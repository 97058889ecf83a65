#include "model/peft.h"

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "model/safetensors.h"
#include "storage/atomic_file.h"
#include "storage/read_file.h"

namespace fedmoe::model {
namespace {

using Json = nlohmann::json;

constexpr char kSeedKey[] = "fedmoe_lora_seed";
constexpr char kTrainAKey[] = "fedmoe_lora_train_a";
constexpr char kBaseHashKey[] = "fedmoe_base_sha256";

absl::Status Bad(const std::filesystem::path& file, std::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(file.string(), ": ", std::string(why)));
}

}  // namespace

absl::Status SaveAdapters(const LoraAdapters& adapters, const std::filesystem::path& directory,
                          std::string_view base_model, std::string_view base_content_sha256) {
  std::error_code error;
  std::filesystem::create_directories(directory, error);
  if (error) {
    return absl::InternalError(
        absl::StrCat("cannot create ", directory.string(), ": ", error.message()));
  }
  const LoraConfig& lora = adapters.config();
  nlohmann::ordered_json config = {{"peft_type", "LORA"},
                                   {"task_type", "CAUSAL_LM"},
                                   {"base_model_name_or_path", std::string(base_model)},
                                   {"r", lora.rank},
                                   {"lora_alpha", lora.alpha},
                                   {"target_modules", LoraTargetNames(lora.targets)},
                                   {"modules_to_save", {"gate"}},
                                   {"lora_dropout", 0.0},
                                   {"bias", "none"},
                                   {"fan_in_fan_out", false},
                                   {"use_rslora", false},
                                   {"use_dora", false},
                                   {"init_lora_weights", true},
                                   {"inference_mode", true},
                                   {"revision", nullptr}};
  const auto readable = std::filesystem::perms::owner_read | std::filesystem::perms::owner_write |
                        std::filesystem::perms::group_read | std::filesystem::perms::others_read;
  std::vector<TensorToWrite> tensors;
  for (const AdapterTensor& spec : adapters.layout().tensors()) {
    tensors.push_back({spec.name, spec.shape, adapters.tensor(spec)});
  }
  std::map<std::string, std::string> metadata = {{"format", "pt"},
                                                 {kSeedKey, absl::StrCat(lora.seed)},
                                                 {kTrainAKey, lora.train_a ? "true" : "false"}};
  if (!base_content_sha256.empty()) metadata[kBaseHashKey] = std::string(base_content_sha256);
  if (absl::Status status =
          WriteSafetensors(directory / kAdapterWeightsFile, tensors, DType::kF32, metadata);
      !status.ok()) {
    return status;
  }
  return storage::WriteFileAtomically(directory / kAdapterConfigFile, config.dump(2) + "\n",
                                      readable);
}

absl::StatusOr<std::string> AdapterBaseContentHash(const std::filesystem::path& directory) {
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(directory / kAdapterWeightsFile);
  if (!file.ok()) return file.status();
  const auto found = file->metadata().find(kBaseHashKey);
  return found == file->metadata().end() ? std::string() : found->second;
}

absl::StatusOr<LoraConfig> ParseAdapterConfig(std::string_view json_text) {
  const Json json = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return absl::InvalidArgumentError("not a JSON object");
  }
  const auto refuse = [](std::string_view why) {
    return absl::InvalidArgumentError(std::string(why));
  };
  if (json.value("peft_type", std::string()) != "LORA") {
    return refuse(
        absl::StrCat("peft_type is ",
                     json.contains("peft_type") ? json["peft_type"].dump() : std::string("missing"),
                     "; fedmoe loads LORA adapters"));
  }
  // What would change the arithmetic, which fedmoe's adapted linear does not implement.
  for (const char* flag : {"use_dora", "use_rslora", "fan_in_fan_out"}) {
    if (json.contains(flag) && json[flag].is_boolean() && json[flag].get<bool>()) {
      return refuse(absl::StrCat(flag, " is true; fedmoe's LoRA is plain W + (alpha/r)·B·A"));
    }
  }
  if (json.contains("bias") && json["bias"] != "none") {
    return refuse(absl::StrCat("bias is ", json["bias"].dump(), "; only \"none\" is supported"));
  }
  for (const char* pattern : {"rank_pattern", "alpha_pattern"}) {
    if (json.contains(pattern) && !json[pattern].is_null() && !json[pattern].empty()) {
      return refuse(absl::StrCat(pattern, " is set; fedmoe takes one r and lora_alpha"));
    }
  }
  if (json.contains("layers_to_transform") && !json["layers_to_transform"].is_null()) {
    return refuse("layers_to_transform is set; fedmoe adapts every layer");
  }
  LoraConfig lora;
  lora.train_a = true;  // PEFT trains both; LoadAdapters reads fedmoe's own FFA marker
  if (!json.contains("r") || !json["r"].is_number_integer()) return refuse("r is missing");
  lora.rank = json["r"].get<int64_t>();
  if (!json.contains("lora_alpha") || !json["lora_alpha"].is_number()) {
    return refuse("lora_alpha is missing");
  }
  lora.alpha = json["lora_alpha"].get<double>();
  if (!json.contains("target_modules")) return refuse("target_modules is missing");
  std::vector<std::string> names;
  const Json& targets = json["target_modules"];
  if (targets.is_string()) {
    names.push_back(targets.get<std::string>());
  } else if (targets.is_array()) {
    for (const Json& name : targets) {
      if (!name.is_string()) return refuse("target_modules holds a non-string");
      names.push_back(name.get<std::string>());
    }
  } else {
    return refuse("target_modules is neither a list nor a string");
  }
  absl::StatusOr<std::vector<LoraModule>> modules = ParseLoraTargets(absl::StrJoin(names, ","));
  if (!modules.ok()) return refuse(std::string(modules.status().message()));
  lora.targets = *std::move(modules);
  if (absl::Status status = lora.Validate(); !status.ok())
    return refuse(std::string(status.message()));
  return lora;
}

absl::StatusOr<LoraAdapters> LoadAdapters(const std::filesystem::path& directory,
                                          const MoeConfig& model, const BaseRouters& base_routers) {
  const std::filesystem::path config_file = directory / kAdapterConfigFile;
  absl::StatusOr<std::string> text = storage::ReadSmallFile(config_file);
  if (!text.ok()) return text.status();
  absl::StatusOr<LoraConfig> lora = ParseAdapterConfig(*text);
  if (!lora.ok()) return Bad(config_file, std::string(lora.status().message()));
  const std::filesystem::path weights_file = directory / kAdapterWeightsFile;
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(weights_file);
  if (!file.ok()) return file.status();
  const auto metadata = [&](const char* key) -> std::optional<std::string> {
    const auto found = file->metadata().find(key);
    if (found == file->metadata().end()) return std::nullopt;
    return found->second;
  };
  if (std::optional<std::string> seed = metadata(kSeedKey)) {
    if (!absl::SimpleAtoi(*seed, &lora->seed)) {
      return Bad(weights_file, absl::StrCat(kSeedKey, " \"", *seed, "\" is not a seed"));
    }
  }
  // Adapters from elsewhere trained A; only fedmoe's own say they did not.
  lora->train_a = metadata(kTrainAKey).value_or("true") == "true";

  LoraAdapters adapters(model, *lora);
  std::set<std::string> loaded;
  for (const SafetensorsEntry& entry : file->entries()) {
    const AdapterTensor* spec = adapters.layout().Find(entry.name);
    if (spec == nullptr) {
      return Bad(weights_file,
                 absl::StrCat("tensor \"", entry.name,
                              "\" has no place in these adapters over this model (another model, "
                              "or target_modules that do not match adapter_config.json?)"));
    }
    if (entry.shape != spec->shape) {
      return Bad(weights_file,
                 absl::StrCat("tensor \"", entry.name, "\" has shape [",
                              absl::StrJoin(entry.shape, ", "), "] but r = ", lora->rank,
                              " and the model need [", absl::StrJoin(spec->shape, ", "), "]"));
    }
    if (absl::Status status = file->ReadFloats(entry, adapters.tensor(*spec)); !status.ok()) {
      return status;
    }
    loaded.insert(entry.name);
  }
  for (const AdapterTensor& spec : adapters.layout().tensors()) {
    if (loaded.contains(spec.name)) continue;
    if (spec.role != AdapterRole::kRouter) {
      return Bad(weights_file, absl::StrCat("tensor \"", spec.name, "\" is missing"));
    }
    const std::span<const float> router = base_routers(spec.layer);
    std::copy(router.begin(), router.end(), adapters.tensor(spec).begin());
  }
  return adapters;
}

}  // namespace fedmoe::model
