// Durable file replacement: a file at a path is either its old contents or its complete new
// contents, never a torn mix, whatever crashes in between.
//
// This lives in its own small library because keys (pki/), checkpoints (model/), configs and
// status files (client/, coordinator/) all need exactly the same guarantee, and model/ may not
// depend on pki/.
#ifndef FEDMOE_STORAGE_ATOMIC_FILE_H_
#define FEDMOE_STORAGE_ATOMIC_FILE_H_

#include <filesystem>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fedmoe::storage {

// Streams a new version of `path` into a temporary file beside it. Commit() fsyncs, renames it
// into place and fsyncs the directory. Destroying an uncommitted writer removes the temporary
// file and leaves `path` as it was. The temporary file is created 0600 (mkstemp), so a secret
// is never readable by others even before the final mode is applied. Move-only.
class AtomicFileWriter {
 public:
  static absl::StatusOr<AtomicFileWriter> Create(const std::filesystem::path& path,
                                                 std::filesystem::perms mode);

  AtomicFileWriter(AtomicFileWriter&& other) noexcept;
  AtomicFileWriter& operator=(AtomicFileWriter&& other) noexcept;
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
  ~AtomicFileWriter();

  absl::Status Append(std::string_view bytes);
  // Makes the new contents durable and visible at `path`. The writer is spent afterwards,
  // whether or not it succeeded.
  absl::Status Commit();

 private:
  AtomicFileWriter(std::filesystem::path path, std::filesystem::path temp_path, int fd,
                   std::filesystem::perms mode);
  void Abandon();

  std::filesystem::path path_;
  std::filesystem::path temp_path_;
  int fd_ = -1;
  std::filesystem::perms mode_;
};

// Writes `contents` to `path` atomically with the given mode (AtomicFileWriter in one call).
absl::Status WriteFileAtomically(const std::filesystem::path& path, std::string_view contents,
                                 std::filesystem::perms mode);

// fsyncs the directory holding `path`, so that a rename or creation there is durable.
void SyncParentDirectory(const std::filesystem::path& path);

// rename(2), then fsync of the target's directory. Renames whole directories too, which is how
// a model version appears all at once.
absl::Status RenameDurably(const std::filesystem::path& from, const std::filesystem::path& to);

// The raw 32-byte SHA-256 of a file's contents, read in 1 MiB blocks.
absl::StatusOr<std::string> FileSha256(const std::filesystem::path& path);

}  // namespace fedmoe::storage

#endif  // FEDMOE_STORAGE_ATOMIC_FILE_H_
