#include "coordinator/round/global_model.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "coordinator/round/planner.h"
#include "model/adapted_model.h"
#include "model/checkpoint.h"
#include "model/peft.h"
#include "storage/atomic_file.h"

namespace fedmoe::coordinator {
namespace {

v1::TrainableTensor::Role ModelTensorRole(model::TensorRole role) {
  switch (role) {
    case model::TensorRole::kRoutedExpert:
      return v1::TrainableTensor::ROLE_ROUTED_EXPERT;
    case model::TensorRole::kSharedExpert:
      return v1::TrainableTensor::ROLE_SHARED_EXPERT;
    case model::TensorRole::kRouter:
      return v1::TrainableTensor::ROLE_ROUTER;
    default:
      return v1::TrainableTensor::ROLE_OTHER;
  }
}

// A lora_B is merged as the linear it adapts would be: a routed expert's token-weighted, the
// others' by mean.
v1::TrainableTensor::Role AdapterTensorRole(const model::AdapterTensor& tensor) {
  if (tensor.role == model::AdapterRole::kRouter) return v1::TrainableTensor::ROLE_ROUTER;
  if (tensor.expert >= 0) return v1::TrainableTensor::ROLE_ROUTED_EXPERT;
  return tensor.name.find(".shared_experts.") != std::string::npos
             ? v1::TrainableTensor::ROLE_SHARED_EXPERT
             : v1::TrainableTensor::ROLE_OTHER;
}

// The named tensor of either kind of state, const or not.
template <typename Values, typename State>
std::optional<std::span<Values>> FindTensor(State& state, std::string_view name) {
  return std::visit(
      [name](auto& held) -> std::optional<std::span<Values>> {
        const auto* tensor = held.layout().Find(name);
        if (tensor == nullptr) return std::nullopt;
        return held.tensor(*tensor);
      },
      state);
}

// What a site needs of a base directory to open it: config.json, the weights and their shard
// index, and the tokenizer, in name order.
absl::StatusOr<v1::ModelManifest> BaseFiles(const std::filesystem::path& directory) {
  std::vector<std::string> names;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(directory, error)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_regular_file() &&
        (name == "config.json" || name == "tokenizer.json" || name.ends_with(".safetensors") ||
         name == "model.safetensors.index.json")) {
      names.push_back(name);
    }
  }
  if (error) {
    return absl::InternalError(
        absl::StrCat("cannot list ", directory.string(), ": ", error.message()));
  }
  std::sort(names.begin(), names.end());
  v1::ModelManifest manifest;
  for (const std::string& name : names) {
    const std::filesystem::path path = directory / name;
    absl::StatusOr<std::string> digest = storage::FileSha256(path);
    if (!digest.ok()) return digest.status();
    v1::ModelFile* file = manifest.add_files();
    file->set_name(name);
    file->set_size_bytes(std::filesystem::file_size(path, error));
    file->set_sha256(*digest);
    if (error) return absl::InternalError(absl::StrCat("cannot stat ", path.string()));
  }
  return manifest;
}

}  // namespace

std::vector<UpdateTensor> UpdateTensorsOf(const model::LoraLayout& layout) {
  std::vector<UpdateTensor> tensors;
  for (const model::AdapterTensor& tensor : layout.tensors()) {
    if (tensor.role == model::AdapterRole::kLoraA) continue;
    tensors.push_back({.name = tensor.name,
                       .shape = tensor.shape,
                       .role = AdapterTensorRole(tensor),
                       .layer = tensor.layer,
                       .expert = tensor.expert,
                       .size = tensor.size});
  }
  return tensors;
}

std::vector<UpdateTensor> UpdateTensorsOf(const model::ModelLayout& layout,
                                          const model::TrainableSet& trainable) {
  std::vector<UpdateTensor> tensors;
  for (const model::TensorSpec& tensor : layout.tensors()) {
    if (!trainable.Includes(tensor.role)) continue;
    tensors.push_back({.name = tensor.name,
                       .shape = tensor.shape,
                       .role = ModelTensorRole(tensor.role),
                       .layer = tensor.layer,
                       .expert = tensor.expert,
                       .size = tensor.size});
  }
  return tensors;
}

GlobalModel::GlobalModel(model::ModelParameters parameters) : state_(std::move(parameters)) {}

GlobalModel::GlobalModel(model::LoraAdapters adapters, BaseIdentity base)
    : state_(std::move(adapters)), base_(std::move(base)) {}

const model::MoeConfig& GlobalModel::config() const {
  if (const model::LoraAdapters* held = adapters()) return held->model_config();
  return std::get<model::ModelParameters>(state_).config();
}

const model::LoraAdapters* GlobalModel::adapters() const {
  return std::get_if<model::LoraAdapters>(&state_);
}

const model::ModelParameters* GlobalModel::parameters() const {
  return std::get_if<model::ModelParameters>(&state_);
}

std::vector<UpdateTensor> GlobalModel::UpdateTensors(const model::TrainableSet& trainable) const {
  if (const model::LoraAdapters* held = adapters()) return UpdateTensorsOf(held->layout());
  return UpdateTensorsOf(std::get<model::ModelParameters>(state_).layout(), trainable);
}

std::optional<v1::AdapterSpec> GlobalModel::AdapterSpec() const {
  const model::LoraAdapters* held = adapters();
  if (held == nullptr) return std::nullopt;
  const model::LoraConfig& lora = held->config();
  v1::AdapterSpec spec;
  spec.set_base_sha256(base_->content_sha256);
  spec.set_base_format(std::string(model::WeightFormatName(base_->format)));
  spec.set_rank(static_cast<uint32_t>(lora.rank));
  spec.set_alpha(lora.alpha);
  for (const std::string& name : model::LoraTargetNames(lora.targets)) {
    spec.add_target_modules(name);
  }
  spec.set_a_seed(lora.seed);
  *spec.mutable_base_files() = base_->files;
  return spec;
}

std::optional<std::span<float>> GlobalModel::Tensor(std::string_view name) {
  return FindTensor<float>(state_, name);
}

std::optional<std::span<const float>> GlobalModel::Tensor(std::string_view name) const {
  return FindTensor<const float>(state_, name);
}

absl::StatusOr<OpenedBase> OpenBase(const std::filesystem::path& directory) {
  absl::StatusOr<model::FrozenBase> base = model::FrozenBase::Open(directory);
  if (!base.ok()) return base.status();
  absl::StatusOr<v1::ModelManifest> files = BaseFiles(directory);
  if (!files.ok()) return files.status();
  BaseIdentity identity{.content_sha256 = model::BaseContentHash(*base),
                        .format = base->format(),
                        .directory = directory,
                        .files = *std::move(files)};
  return OpenedBase{.base = *std::move(base), .identity = std::move(identity)};
}

absl::StatusOr<GlobalModel> NewAdapterModel(const OpenedBase& base, model::LoraConfig lora) {
  lora.train_a = false;
  while (lora.seed == 0) {
    absl::StatusOr<std::string> bytes = RandomSeed(sizeof(uint64_t));
    if (!bytes.ok()) return bytes.status();
    for (char byte : *bytes) lora.seed = (lora.seed << 8) | static_cast<unsigned char>(byte);
  }
  absl::StatusOr<model::LoraAdapters> adapters = model::NewAdapters(base.base, lora);
  if (!adapters.ok()) return adapters.status();
  return GlobalModel(*std::move(adapters), base.identity);
}

absl::StatusOr<GlobalModel> LoadAdapterModel(const OpenedBase& base, const model::LoraConfig& lora,
                                             const std::filesystem::path& version_directory) {
  const std::string where = version_directory.string();
  absl::StatusOr<std::string> trained_over = model::AdapterBaseContentHash(version_directory);
  if (!trained_over.ok()) return trained_over.status();
  if (*trained_over != base.identity.content_sha256) {
    return absl::FailedPreconditionError(
        absl::StrCat("model.initial (", base.identity.directory.string(), ") holds base ",
                     base.identity.content_sha256, ", but the federation's adapters at ", where,
                     " were trained over base ",
                     trained_over->empty() ? std::string("(none recorded)") : *trained_over,
                     ": point model.initial back at that base, or start a new federation"));
  }
  absl::StatusOr<model::LoraAdapters> adapters =
      model::LoadAdaptersFor(base.base, version_directory);
  if (!adapters.ok()) return adapters.status();
  const model::LoraConfig& held = adapters->config();
  const auto describe = [](const model::LoraConfig& config) {
    return absl::StrCat("rank ", config.rank, ", alpha ", config.alpha, ", targets [",
                        absl::StrJoin(model::LoraTargetNames(config.targets), ", "), "]");
  };
  if (held.train_a || held.rank != lora.rank || held.alpha != lora.alpha ||
      held.targets != lora.targets || (lora.seed != 0 && held.seed != lora.seed)) {
    return absl::FailedPreconditionError(
        absl::StrCat("model.adapters asks for ", describe(lora),
                     lora.seed != 0 ? absl::StrCat(", seed ", lora.seed) : "",
                     ", but the federation's adapters at ", where, " have ", describe(held),
                     ", seed ", held.seed, held.train_a ? " and a trained A" : "",
                     ": an adapter federation keeps the shape of its first version"));
  }
  return GlobalModel(*std::move(adapters), base.identity);
}

absl::StatusOr<int64_t> PlannedUpdateValues(const RoundPolicy& policy) {
  absl::StatusOr<model::MoeConfig> config =
      model::LoadMoeConfig(policy.initial_model / "config.json");
  if (!config.ok()) return config.status();
  // The same selection a round's spec makes, from the layouts alone (no values allocated).
  const std::vector<UpdateTensor> tensors =
      policy.adapters ? UpdateTensorsOf(model::LoraLayout(*config, policy.lora))
                      : UpdateTensorsOf(model::ModelLayout(*config), policy.trainable);
  int64_t values = 2 * config->num_hidden_layers * config->num_local_experts;
  for (const UpdateTensor& tensor : tensors) values += tensor.size;
  return values;
}

absl::Status SaveGlobalModel(const GlobalModel& global, const std::filesystem::path& directory) {
  if (const model::LoraAdapters* adapters = global.adapters()) {
    return model::SaveAdapters(*adapters, directory, global.base()->directory.string(),
                               global.base()->content_sha256);
  }
  const model::ModelParameters* parameters = global.parameters();
  if (parameters == nullptr) return absl::InternalError("a global model holds neither kind");
  return model::SaveModel(*parameters, directory);
}

}  // namespace fedmoe::coordinator
