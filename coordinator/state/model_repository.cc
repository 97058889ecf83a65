#include "coordinator/state/model_repository.h"

#include <google/protobuf/util/time_util.h>

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "model/checkpoint.h"
#include "model/safetensors.h"
#include "storage/atomic_file.h"
#include "storage/file_status.h"

namespace fedmoe::coordinator {
namespace {

constexpr const char* kClientFiles[] = {"adapter_config.json", "adapter_model.safetensors",
                                        "config.json", "model.safetensors", "tokenizer.json"};

// The file whose digest names a version: a whole model's weights, or an adapter's.
bool IsWeightsFile(std::string_view file) {
  return file == "model.safetensors" || file == "adapter_model.safetensors";
}

absl::Status CopyFileDurably(const std::filesystem::path& from, const std::filesystem::path& to) {
  std::error_code error;
  std::filesystem::copy_file(from, to, std::filesystem::copy_options::overwrite_existing, error);
  if (error) {
    return absl::InternalError(
        absl::StrCat("cannot copy ", from.string(), " to ", to.string(), ": ", error.message()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelVersionRecord> ModelRepository::Write(
    int64_t version, const WeightsWriter& write_weights, const std::filesystem::path& tokenizer,
    std::optional<int64_t> round_id,
    std::optional<std::pair<std::span<const float>, std::span<const float>>> server_moments) {
  const std::string name = absl::StrCat("v", version);
  const std::filesystem::path partial = root_ / absl::StrCat(".", name, ".partial");
  const std::filesystem::path final_directory = root_ / name;
  std::error_code error;
  std::filesystem::create_directories(root_, error);
  std::filesystem::remove_all(partial, error);
  std::filesystem::create_directories(partial, error);
  if (error) {
    return absl::InternalError(
        absl::StrCat("cannot create ", partial.string(), ": ", error.message()));
  }
  if (absl::Status status = write_weights(partial); !status.ok()) return status;
  if (!tokenizer.empty()) {
    if (absl::Status status = CopyFileDurably(tokenizer, partial / "tokenizer.json");
        !status.ok()) {
      return status;
    }
  }
  if (server_moments.has_value()) {
    const auto size = static_cast<int64_t>(server_moments->first.size());
    const model::TensorToWrite tensors[] = {{"m", {size}, server_moments->first},
                                            {"v", {size}, server_moments->second}};
    if (absl::Status status =
            model::WriteSafetensors(partial / kServerOptimizerFile, tensors, model::DType::kF32);
        !status.ok()) {
      return status;
    }
  }
  ModelVersionRecord record;
  record.version = version;
  record.directory = name;
  record.created_at = absl::Now();
  record.round_id = round_id;
  for (const char* file : kClientFiles) {
    const std::filesystem::path path = partial / file;
    if (!storage::PathExists(path)) continue;
    absl::StatusOr<std::string> digest = storage::FileSha256(path);
    if (!digest.ok()) return digest.status();
    const auto size = static_cast<int64_t>(std::filesystem::file_size(path, error));
    if (error) return absl::InternalError(absl::StrCat("cannot stat ", path.string()));
    absl::StrAppend(&record.files, file, " ", size, " ", absl::BytesToHexString(*digest), "\n");
    record.size_bytes += size;
    if (IsWeightsFile(file)) record.weights_sha256 = *digest;
  }
  storage::SyncParentDirectory(partial / kClientFiles[0]);
  std::filesystem::remove_all(final_directory, error);
  if (absl::Status status = storage::RenameDurably(partial, final_directory); !status.ok()) {
    return status;
  }
  return record;
}

absl::Status ModelRepository::RemoveUnpublished(int64_t newest_published) {
  std::error_code error;
  if (!std::filesystem::exists(root_, error)) return absl::OkStatus();
  for (const auto& entry : std::filesystem::directory_iterator(root_, error)) {
    const std::string name = entry.path().filename().string();
    int64_t version = 0;
    const bool partial = name.starts_with(".") && name.ends_with(".partial");
    const bool newer = name.starts_with("v") && absl::SimpleAtoi(name.substr(1), &version) &&
                       version > newest_published;
    if (partial || newer) std::filesystem::remove_all(entry.path(), error);
  }
  if (error) {
    return absl::InternalError(
        absl::StrCat("cannot clean up ", root_.string(), ": ", error.message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::pair<std::vector<float>, std::vector<float>>>
ModelRepository::ReadServerMoments(const ModelVersionRecord& record) const {
  const std::filesystem::path path = Directory(record) / kServerOptimizerFile;
  if (!storage::PathExists(path)) {
    return absl::NotFoundError(absl::StrCat(path.string(), " does not exist"));
  }
  absl::StatusOr<model::SafetensorsFile> file = model::SafetensorsFile::Open(path);
  if (!file.ok()) return file.status();
  std::pair<std::vector<float>, std::vector<float>> moments;
  for (auto [name, out] : {std::pair{"m", &moments.first}, std::pair{"v", &moments.second}}) {
    const model::SafetensorsEntry* entry = file->Find(name);
    if (entry == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(path.string(), " lacks tensor ", name));
    }
    out->resize(static_cast<size_t>(entry->element_count()));
    if (absl::Status status = file->ReadFloats(*entry, *out); !status.ok()) return status;
  }
  return moments;
}

absl::StatusOr<v1::ModelManifest> ModelRepository::Manifest(const ModelVersionRecord& record) {
  v1::ModelManifest manifest;
  manifest.set_version(static_cast<uint64_t>(record.version));
  manifest.set_weights_sha256(record.weights_sha256);
  *manifest.mutable_published_at() = google::protobuf::util::TimeUtil::MillisecondsToTimestamp(
      absl::ToUnixMillis(record.created_at));
  const std::vector<std::string> lines = absl::StrSplit(record.files, '\n', absl::SkipEmpty());
  for (const std::string& line : lines) {
    std::vector<std::string> parts = absl::StrSplit(line, ' ');
    uint64_t size = 0;
    if (parts.size() != 3 || !absl::SimpleAtoi(parts[1], &size) || parts[2].size() != 64 ||
        !std::all_of(parts[2].begin(), parts[2].end(),
                     [](char c) { return absl::ascii_isxdigit(static_cast<unsigned char>(c)); })) {
      return absl::InvalidArgumentError(
          absl::StrCat("model version ", record.version, " has a corrupt file list: ", line));
    }
    v1::ModelFile* file = manifest.add_files();
    file->set_name(std::string(parts[0]));
    file->set_size_bytes(size);
    file->set_sha256(absl::HexStringToBytes(parts[2]));
  }
  return manifest;
}

}  // namespace fedmoe::coordinator
