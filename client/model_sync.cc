#include "client/model_sync.h"

#include <fstream>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/grpc_status.h"
#include "logging/log.h"
#include "storage/atomic_file.h"
#include "storage/file_status.h"

namespace fedmoe::client {
namespace {

bool PlainFileName(const std::string& name) {
  return !name.empty() && name.size() <= 255 && name.find('/') == std::string::npos &&
         name != "." && name != "..";
}

// `base`: a file of the frozen base (DownloadModelRequest.base) rather than of `version`.
absl::Status DownloadFile(v1::Federation::StubInterface& stub, uint64_t version, bool base,
                          const v1::ModelFile& file, const std::filesystem::path& path) {
  std::error_code error;
  uint64_t held =
      std::filesystem::exists(path, error) ? std::filesystem::file_size(path, error) : 0;
  if (held > file.size_bytes()) {
    std::filesystem::remove(path, error);
    held = 0;
  }
  if (held < file.size_bytes()) {
    v1::DownloadModelRequest request;
    request.set_version(version);
    request.set_base(base);
    request.set_file_name(file.name());
    request.set_offset(held);
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Minutes(30)));
    std::unique_ptr<grpc::ClientReaderInterface<v1::ModelChunk>> reader =
        stub.DownloadModel(&context, request);
    std::ofstream out(path, std::ios::binary | std::ios::app);
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", path.string()));
    v1::ModelChunk chunk;
    while (reader->Read(&chunk)) {
      if (chunk.offset() != held || chunk.file_sha256() != file.sha256() ||
          chunk.file_size() != file.size_bytes() ||
          held + chunk.data().size() > file.size_bytes()) {
        context.TryCancel();
        reader->Finish().IgnoreError();
        return absl::DataLossError(absl::StrCat("the coordinator sent a chunk of ", file.name(),
                                                " that does not continue the file"));
      }
      out.write(chunk.data().data(), static_cast<std::streamsize>(chunk.data().size()));
      held += chunk.data().size();
    }
    out.close();
    grpc::Status status = reader->Finish();
    if (!status.ok()) {
      return FromGrpc(status, absl::StrCat("downloading ", file.name(), " stopped at byte ", held));
    }
    if (held != file.size_bytes()) {
      return absl::UnavailableError(absl::StrCat("downloading ", file.name(), " stopped at byte ",
                                                 held, " of ", file.size_bytes()));
    }
  }
  absl::StatusOr<std::string> digest = storage::FileSha256(path);
  if (!digest.ok()) return digest.status();
  if (*digest != file.sha256()) {
    std::filesystem::remove(path, error);
    return absl::DataLossError(
        absl::StrCat(file.name(), " of ",
                     base ? std::string("the base") : absl::StrCat("model version ", version),
                     " does not match its SHA-256; discarded"));
  }
  return absl::OkStatus();
}

// Downloads the manifest's files into <root>/v<version>, by way of a hidden partial directory.
absl::StatusOr<std::filesystem::path> Sync(v1::Federation::StubInterface& stub,
                                           const v1::ModelManifest& manifest,
                                           const std::filesystem::path& models_root, bool base) {
  const std::filesystem::path final_directory = models_root / absl::StrCat("v", manifest.version());
  if (storage::PathExists(final_directory)) return final_directory;
  const std::filesystem::path partial =
      models_root / absl::StrCat(".v", manifest.version(), ".partial");
  std::error_code error;
  std::filesystem::create_directories(partial, error);
  if (error) {
    return absl::InternalError(
        absl::StrCat("cannot create ", partial.string(), ": ", error.message()));
  }
  for (const v1::ModelFile& file : manifest.files()) {
    if (!PlainFileName(file.name()) || file.sha256().size() != 32) {
      return absl::InvalidArgumentError(
          absl::StrCat("the manifest names an unsafe file: '", file.name(), "'"));
    }
    if (absl::Status status =
            DownloadFile(stub, manifest.version(), base, file, partial / file.name());
        !status.ok()) {
      return status;
    }
  }
  storage::SyncParentDirectory(partial / "config.json");
  if (absl::Status status = storage::RenameDurably(partial, final_directory); !status.ok()) {
    return status;
  }
  return final_directory;
}

}  // namespace

uint64_t NewestLocalVersion(const std::filesystem::path& models_root) {
  uint64_t newest = 0;
  std::error_code error;
  if (!std::filesystem::exists(models_root, error)) return 0;
  for (const auto& entry : std::filesystem::directory_iterator(models_root, error)) {
    const std::string name = entry.path().filename().string();
    uint64_t version = 0;
    if (name.starts_with("v") && absl::SimpleAtoi(name.substr(1), &version)) {
      newest = std::max(newest, version);
    }
  }
  return newest;
}

absl::StatusOr<std::filesystem::path> SyncModel(v1::Federation::StubInterface& stub,
                                                const v1::ModelManifest& manifest,
                                                const std::filesystem::path& models_root) {
  const bool held = storage::PathExists(models_root / absl::StrCat("v", manifest.version()));
  absl::StatusOr<std::filesystem::path> final_directory =
      Sync(stub, manifest, models_root, /*base=*/false);
  if (!final_directory.ok() || held) return final_directory;
  std::error_code error;
  // Keep this version and the one before it; older ones only take space.
  for (const auto& entry : std::filesystem::directory_iterator(models_root, error)) {
    const std::string name = entry.path().filename().string();
    uint64_t version = 0;
    if (name.starts_with("v") && absl::SimpleAtoi(name.substr(1), &version) &&
        version + 1 < manifest.version()) {
      std::filesystem::remove_all(entry.path(), error);
    }
  }
  LogEvent(LogLevel::kInfo, "model_synced").Field("version", manifest.version());
  return final_directory;
}

absl::StatusOr<std::filesystem::path> SyncBase(v1::Federation::StubInterface& stub,
                                               const v1::ModelManifest& files,
                                               const std::filesystem::path& directory) {
  if (files.files_size() == 0) {
    return absl::FailedPreconditionError("the coordinator lists no files of its base");
  }
  v1::ModelManifest base = files;
  base.set_version(0);
  return Sync(stub, base, directory, /*base=*/true);
}

}  // namespace fedmoe::client
