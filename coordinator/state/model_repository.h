// The published global models on the coordinator's disk: StateDir::models()/v<N>/, holding the
// weights (config.json and model.safetensors; or, in a federation of adapters, the PEFT
// directory's adapter_config.json and adapter_model.safetensors), tokenizer.json when the
// federation has one, and, for FedAdam, server_optimizer.safetensors (the server's moments,
// never sent to clients).
//
// A version is written whole into a hidden partial directory and renamed into place, and only
// then recorded in the store (DESIGN §6). A crash leaves at worst a directory that no store row
// names; RemoveUnpublished() deletes it at the next start.
#ifndef FEDMOE_COORDINATOR_STATE_MODEL_REPOSITORY_H_
#define FEDMOE_COORDINATOR_STATE_MODEL_REPOSITORY_H_

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/state/store.h"
#include "fedmoe/v1/common.pb.h"

namespace fedmoe::coordinator {

// FedAdam's moments, saved beside the weights; never part of a manifest.
inline constexpr const char* kServerOptimizerFile = "server_optimizer.safetensors";

class ModelRepository {
 public:
  explicit ModelRepository(std::filesystem::path root) : root_(std::move(root)) {}

  // Writes a version's weights into the directory it is given: model::SaveModel, or
  // model::SaveAdapters.
  using WeightsWriter = std::function<absl::Status(const std::filesystem::path& directory)>;

  // Writes version `version` and returns its record, not yet in the store. `tokenizer` is a
  // tokenizer.json to copy alongside, or empty. `server_moments`, when given, are FedAdam's
  // first and second moments.
  absl::StatusOr<ModelVersionRecord> Write(
      int64_t version, const WeightsWriter& write_weights, const std::filesystem::path& tokenizer,
      std::optional<int64_t> round_id,
      std::optional<std::pair<std::span<const float>, std::span<const float>>> server_moments);

  // Deletes version directories newer than `newest_published` and any partial ones.
  absl::Status RemoveUnpublished(int64_t newest_published);

  std::filesystem::path Directory(const ModelVersionRecord& record) const {
    return root_ / record.directory;
  }
  // FedAdam's moments saved with a version, or NotFound.
  absl::StatusOr<std::pair<std::vector<float>, std::vector<float>>> ReadServerMoments(
      const ModelVersionRecord& record) const;

  // The manifest clients see; InvalidArgument when the record's file list is corrupt.
  static absl::StatusOr<v1::ModelManifest> Manifest(const ModelVersionRecord& record);

 private:
  std::filesystem::path root_;
};

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_STATE_MODEL_REPOSITORY_H_
