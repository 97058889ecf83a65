// The model a federation trains, as the coordinator holds it: a whole Mixtral-layout model, of
// which a round updates the tensors its policy names, or LoRA adapters over a frozen base
// (issue [peft]). The coordinator names an adapter federation's base by its content hash and
// never holds its weights: a round of a 7B base costs it the adapters' bytes, not the base's.
#ifndef FEDMOE_COORDINATOR_ROUND_GLOBAL_MODEL_H_
#define FEDMOE_COORDINATOR_ROUND_GLOBAL_MODEL_H_

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "coordinator/round/round_policy.h"
#include "fedmoe/v1/federation.pb.h"
#include "model/frozen_base.h"
#include "model/lora.h"
#include "model/parameters.h"
#include "model/trainable_set.h"

namespace fedmoe::coordinator {

// The frozen base of an adapter federation: what every site must hold.
struct BaseIdentity {
  // model::BaseContentHash, hex.
  std::string content_sha256;
  model::WeightFormat format = model::WeightFormat::kFloat32;
  // Where the coordinator read it (model.initial); adapter_config.json names it.
  std::filesystem::path directory;
  // Its files (config.json, the safetensors and their index, tokenizer.json), version 0, for
  // sites that download the base rather than provision it.
  v1::ModelManifest files;
};

// One tensor a round updates, in the update vector's order.
struct UpdateTensor {
  std::string name;
  std::vector<int64_t> shape;
  v1::TrainableTensor::Role role = v1::TrainableTensor::ROLE_OTHER;
  // −1 where it does not apply.
  int64_t layer = -1;
  int64_t expert = -1;
  int64_t size = 0;
};

// What a round updates of adapters (every lora_B, and every router) or of a whole model (the
// tensors of `trainable`'s roles), in the update vector's order: GlobalModel::UpdateTensors's
// selection, on a layout alone.
std::vector<UpdateTensor> UpdateTensorsOf(const model::LoraLayout& layout);
std::vector<UpdateTensor> UpdateTensorsOf(const model::ModelLayout& layout,
                                          const model::TrainableSet& trainable);

class GlobalModel {
 public:
  explicit GlobalModel(model::ModelParameters parameters);
  GlobalModel(model::LoraAdapters adapters, BaseIdentity base);

  const model::MoeConfig& config() const;
  // Null for a whole model.
  const model::LoraAdapters* adapters() const;
  const model::ModelParameters* parameters() const;
  // Set for adapters only.
  const std::optional<BaseIdentity>& base() const { return base_; }

  // What a round updates: for a whole model the tensors of `trainable`'s roles; for adapters
  // every lora_B (as ROLE_ROUTED_EXPERT for a routed expert's, so that DESIGN §4's token
  // weighting applies to each expert's adapter block) and every router. An FFA-LoRA A is frozen
  // and `trainable` does not apply to adapters.
  std::vector<UpdateTensor> UpdateTensors(const model::TrainableSet& trainable) const;

  // The adapters and their base as a round spec publishes them; nullopt for a whole model.
  std::optional<v1::AdapterSpec> AdapterSpec() const;

  // The values of the tensor called `name`, or nullopt when there is none.
  std::optional<std::span<float>> Tensor(std::string_view name);
  std::optional<std::span<const float>> Tensor(std::string_view name) const;

 private:
  std::variant<model::ModelParameters, model::LoraAdapters> state_;
  std::optional<BaseIdentity> base_;
};

// An adapter federation's base, opened (memory-mapped, as stored) and named. The coordinator
// holds it only while it checks or makes a version: what it keeps is the identity.
struct OpenedBase {
  model::FrozenBase base;
  BaseIdentity identity;
};

// Opens model.initial as stored and hashes it, and lists its files with their SHA-256 (two
// passes over its bytes: seconds for a 7B base).
absl::StatusOr<OpenedBase> OpenBase(const std::filesystem::path& directory);

// Version 1 of an adapter federation: FFA-LoRA of `lora` over the base (A drawn from lora.seed,
// or from a seed drawn from OpenSSL when it is 0; B zero; the routers the base's), so that it
// computes exactly what the base does.
absl::StatusOr<GlobalModel> NewAdapterModel(const OpenedBase& base, model::LoraConfig lora);

// A published adapter version, refused with FailedPrecondition when it was trained over another
// base, or has another shape than `lora` (rank, α, targets; the seed too unless `lora`'s is 0):
// the operator changed model.initial or model.adapters under a running federation.
absl::StatusOr<GlobalModel> LoadAdapterModel(const OpenedBase& base, const model::LoraConfig& lora,
                                             const std::filesystem::path& version_directory);

// The values of a round's update before the encoder pads them (UpdateLayout.plain_values), from
// model.initial's config alone: the trained tensors (for adapters, every lora_B and router), and
// each MoE layer's expert weights and routing histogram. What `privacy epsilon` and
// `check-config` price a round on without loading a model.
absl::StatusOr<int64_t> PlannedUpdateValues(const RoundPolicy& policy);

// Writes `global`'s weights into a directory: a whole model's checkpoint, or the adapters in
// PEFT's layout with their base's content hash.
absl::Status SaveGlobalModel(const GlobalModel& global, const std::filesystem::path& directory);

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_ROUND_GLOBAL_MODEL_H_
