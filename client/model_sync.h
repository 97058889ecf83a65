// Keeps the client's copy of the global model (DESIGN §3.2): a published version is downloaded
// file by file as a stream of chunks into a hidden partial directory, resumed from the bytes
// already held after any interruption, checked against the manifest's SHA-256, and renamed into
// place as <models>/v<N>. Only the newest two versions are kept.
#ifndef FEDMOE_CLIENT_MODEL_SYNC_H_
#define FEDMOE_CLIENT_MODEL_SYNC_H_

#include <filesystem>

#include "absl/status/statusor.h"
#include "fedmoe/v1/federation.grpc.pb.h"

namespace fedmoe::client {

// Returns the version's directory, downloading what is missing. DataLoss when a file's
// digest disagrees with the manifest (the partial file is discarded, so a retry starts over).
absl::StatusOr<std::filesystem::path> SyncModel(v1::Federation::StubInterface& stub,
                                                const v1::ModelManifest& manifest,
                                                const std::filesystem::path& models_root);

// An adapter federation's frozen base (AdapterSpec.base_files), downloaded as a version is and
// resumed the same way, into <directory>/v0, which it returns.
absl::StatusOr<std::filesystem::path> SyncBase(v1::Federation::StubInterface& stub,
                                               const v1::ModelManifest& files,
                                               const std::filesystem::path& directory);

// The newest complete version under `models_root`, or 0.
uint64_t NewestLocalVersion(const std::filesystem::path& models_root);

}  // namespace fedmoe::client

#endif  // FEDMOE_CLIENT_MODEL_SYNC_H_
