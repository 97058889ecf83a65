#include "model/checkpoint.h"

#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "storage/atomic_file.h"
#include "storage/file_status.h"
#include "storage/read_file.h"

namespace fedmoe::model {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

constexpr char kConfigFile[] = "config.json";
constexpr char kSingleFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";

// Derived buffers that some exporters include; they hold nothing a loader needs.
bool IsDerivedBuffer(std::string_view name) { return name.ends_with(".rotary_emb.inv_freq"); }

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) absl::StrAppend(&text, i > 0 ? ", " : "", shape[i]);
  return text + "]";
}

// Reads the shard names of a sharded checkpoint, checking that each is a plain file name in the
// model directory.
absl::StatusOr<std::vector<std::string>> ShardFiles(const fs::path& index_path) {
  absl::StatusOr<std::string> text = storage::ReadSmallFile(index_path);
  if (!text.ok()) return text.status();
  const Json index = Json::parse(*text, nullptr, /*allow_exceptions=*/false);
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": ", std::string(why)));
  };
  if (index.is_discarded() || !index.is_object()) return bad("not a JSON object");
  if (!index.contains("weight_map") || !index.at("weight_map").is_object()) {
    return bad("has no \"weight_map\" object");
  }
  std::set<std::string> files;
  for (const auto& [tensor, file] : index.at("weight_map").items()) {
    if (!file.is_string())
      return bad(absl::StrCat("the shard of \"", tensor, "\" is not a string"));
    const auto name = file.get<std::string>();
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
      return bad(absl::StrCat("shard \"", name, "\" is not a file name inside the directory"));
    }
    files.insert(name);
  }
  return std::vector<std::string>(files.begin(), files.end());
}

}  // namespace

absl::StatusOr<std::vector<SafetensorsFile>> OpenWeightFiles(const fs::path& directory) {
  std::vector<SafetensorsFile> files;
  if (storage::PathExists(directory / kIndexFile)) {
    absl::StatusOr<std::vector<std::string>> shards = ShardFiles(directory / kIndexFile);
    if (!shards.ok()) return shards.status();
    for (const std::string& shard : *shards) {
      absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(directory / shard);
      if (!file.ok()) return file.status();
      files.push_back(*std::move(file));
    }
  } else {
    absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(directory / kSingleFile);
    if (!file.ok()) return file.status();
    files.push_back(*std::move(file));
  }
  return files;
}

absl::StatusOr<ModelParameters> LoadModel(const fs::path& directory) {
  absl::StatusOr<MoeConfig> config = LoadMoeConfig(directory / kConfigFile);
  if (!config.ok()) return config.status();
  ModelParameters parameters(*config);

  absl::StatusOr<std::vector<SafetensorsFile>> files = OpenWeightFiles(directory);
  if (!files.ok()) return files.status();

  std::set<std::string> loaded;
  for (const SafetensorsFile& file : *files) {
    for (const SafetensorsEntry& entry : file.entries()) {
      if (IsDerivedBuffer(entry.name)) continue;
      const TensorSpec* spec = parameters.layout().Find(entry.name);
      if (spec == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(
            file.path().string(), ": tensor \"", entry.name,
            "\" has no place in the Mixtral layout of this config.json (a config mismatch?)"));
      }
      if (entry.shape != spec->shape) {
        return absl::InvalidArgumentError(absl::StrCat(
            file.path().string(), ": tensor \"", entry.name, "\" has shape ",
            ShapeText(entry.shape), " but config.json needs ", ShapeText(spec->shape)));
      }
      if (!loaded.insert(entry.name).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor \"", entry.name, "\" appears in more than one shard"));
      }
      if (absl::Status status = file.ReadFloats(entry, parameters.tensor(*spec)); !status.ok()) {
        return status;
      }
    }
  }
  for (const TensorSpec& spec : parameters.layout().tensors()) {
    if (!loaded.contains(spec.name)) {
      return absl::InvalidArgumentError(absl::StrCat(directory.string(), ": tensor \"", spec.name,
                                                     "\" is missing from the checkpoint"));
    }
  }
  return parameters;
}

absl::Status SaveModel(const ModelParameters& parameters, const fs::path& directory,
                       const SaveOptions& options) {
  std::error_code error;
  fs::create_directories(directory, error);
  if (error) {
    return absl::InternalError(
        absl::StrCat("cannot create ", directory.string(), ": ", error.message()));
  }
  const fs::perms readable = fs::perms::owner_read | fs::perms::owner_write |
                             fs::perms::group_read | fs::perms::others_read;
  if (absl::Status status = storage::WriteFileAtomically(directory / kConfigFile,
                                                         parameters.config().ToJson(), readable);
      !status.ok()) {
    return status;
  }

  // Group tensors into shards in layout order.
  const uint64_t value_bytes = options.dtype == DType::kF32 ? 4 : 2;
  std::vector<std::vector<TensorToWrite>> shards(1);
  uint64_t shard_bytes = 0;
  for (const TensorSpec& spec : parameters.layout().tensors()) {
    const uint64_t bytes = static_cast<uint64_t>(spec.size) * value_bytes;
    if (options.max_shard_bytes > 0 && shard_bytes > 0 &&
        shard_bytes + bytes > options.max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(TensorToWrite{spec.name, spec.shape, parameters.tensor(spec)});
    shard_bytes += bytes;
  }
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  if (options.max_shard_bytes == 0) {
    // A stale index would shadow the new single file.
    fs::remove(directory / kIndexFile, error);
    return WriteSafetensors(directory / kSingleFile, shards.front(), options.dtype, metadata);
  }

  nlohmann::ordered_json index;
  uint64_t total_bytes = 0;
  for (size_t i = 0; i < shards.size(); ++i) {
    const std::string name =
        absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, shards.size());
    if (absl::Status status =
            WriteSafetensors(directory / name, shards[i], options.dtype, metadata);
        !status.ok()) {
      return status;
    }
    for (const TensorToWrite& tensor : shards[i]) {
      index["weight_map"][tensor.name] = name;
      total_bytes += tensor.values.size() * value_bytes;
    }
  }
  index["metadata"] = {{"total_size", total_bytes}};
  if (absl::Status status =
          storage::WriteFileAtomically(directory / kIndexFile, index.dump(2) + "\n", readable);
      !status.ok()) {
    return status;
  }
  fs::remove(directory / kSingleFile, error);
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> CheckpointBytes(const fs::path& directory) {
  std::vector<std::string> files = {kSingleFile};
  if (storage::PathExists(directory / kIndexFile)) {
    absl::StatusOr<std::vector<std::string>> shards = ShardFiles(directory / kIndexFile);
    if (!shards.ok()) return shards.status();
    files = *std::move(shards);
  }
  uint64_t bytes = 0;
  for (const std::string& file : files) {
    std::error_code error;
    bytes += fs::file_size(directory / file, error);
    if (error) {
      return absl::NotFoundError(
          absl::StrCat("cannot stat ", (directory / file).string(), ": ", error.message()));
    }
  }
  return bytes;
}

}  // namespace fedmoe::model
