#include "coordinator/state/backup.h"

#include <fstream>
#include <sstream>
#include <string>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "coordinator/state/sqlite.h"
#include "coordinator/state/store.h"
#include "storage/atomic_file.h"
#include "storage/file_status.h"

namespace fedmoe::coordinator {
namespace {

namespace fs = std::filesystem;

constexpr fs::perms kOwnerOnly = fs::perms::owner_all;
constexpr fs::perms kOwnerReadWrite = fs::perms::owner_read | fs::perms::owner_write;

absl::Status FromError(const std::error_code& error, const std::string& doing) {
  return absl::UnavailableError(absl::StrCat(doing, ": ", error.message()));
}

absl::Status CreatePrivateDirectory(const fs::path& path) {
  std::error_code error;
  if (fs::exists(path, error) && !fs::is_empty(path, error)) {
    return absl::AlreadyExistsError(
        absl::StrCat(path.string(), " exists and is not empty; choose a new directory"));
  }
  fs::create_directories(path, error);
  if (error) return FromError(error, absl::StrCat("cannot create ", path.string()));
  fs::permissions(path, kOwnerOnly, error);
  if (error) return FromError(error, absl::StrCat("cannot make ", path.string(), " private"));
  return absl::OkStatus();
}

// Copies a file and gives the copy `permissions` (keys stay 0600 whatever the umask).
absl::Status CopyPrivate(const fs::path& from, const fs::path& to, fs::perms permissions,
                         uint64_t& bytes) {
  std::error_code error;
  fs::copy_file(from, to, fs::copy_options::overwrite_existing, error);
  if (error) return FromError(error, absl::StrCat("cannot copy ", from.string()));
  fs::permissions(to, permissions, error);
  if (error) return FromError(error, absl::StrCat("cannot set the mode of ", to.string()));
  bytes += fs::file_size(to, error);
  return absl::OkStatus();
}

bool IsVersionDirectory(const fs::directory_entry& entry) {
  const std::string name = entry.path().filename().string();
  return entry.is_directory() && name.size() > 1 && name[0] == 'v' &&
         name.find_first_not_of("0123456789", 1) == std::string::npos;
}

// Copies everything into `to`, which exists and is empty.
absl::StatusOr<BackupSummary> WriteBackup(const StateDir& from, const fs::path& to) {
  const StateDir target{to};
  BackupSummary summary;
  // The store first: every version it names was written before its commit, so it is on disk
  // by the time the versions are copied.
  {
    absl::StatusOr<std::unique_ptr<sqlite::Database>> store = sqlite::Database::Open(from.store());
    if (!store.ok()) return store.status();
    if (absl::Status status = (*store)->BackupTo(target.store()); !status.ok()) return status;
    std::error_code error;
    fs::permissions(target.store(), kOwnerReadWrite, error);
    summary.bytes += fs::file_size(target.store(), error);
  }
  const std::pair<fs::path, fs::path> files[] = {
      {from.ca_certificate(), target.ca_certificate()},
      {from.ca_key(), target.ca_key()},
      {from.server_certificate(), target.server_certificate()},
      {from.server_key(), target.server_key()},
      {from.admin_certificate(), target.admin_certificate()},
      {from.admin_key(), target.admin_key()},
      {from.config(), target.config()}};
  for (const auto& [source, destination] : files) {
    if (absl::Status status = CopyPrivate(source, destination, kOwnerReadWrite, summary.bytes);
        !status.ok()) {
      return status;
    }
  }
  // A CA rotation in progress (coordinator/identity/ca_rotation.h) is part of the state too.
  const std::pair<fs::path, fs::path> rotation_files[] = {
      {from.next_ca_certificate(), target.next_ca_certificate()},
      {from.next_ca_key(), target.next_ca_key()},
      {from.previous_ca_certificate(), target.previous_ca_certificate()},
      {from.ca_switch_marker(), target.ca_switch_marker()}};
  for (const auto& [source, destination] : rotation_files) {
    if (!storage::PathExists(source)) continue;
    if (absl::Status status = CopyPrivate(source, destination, kOwnerReadWrite, summary.bytes);
        !status.ok()) {
      return status;
    }
  }
  std::error_code error;
  fs::create_directory(target.models(), error);
  if (error) return FromError(error, absl::StrCat("cannot create ", target.models().string()));
  fs::permissions(target.models(), kOwnerOnly, error);
  if (error)
    return FromError(error, absl::StrCat("cannot make ", target.models().string(), " private"));
  // A federation that has published no model yet has no versions to copy.
  if (!storage::IsDirectory(from.models())) return summary;
  for (const fs::directory_entry& entry : fs::directory_iterator(from.models(), error)) {
    // Hidden .v<N>.partial directories are unfinished writes: never part of a backup.
    if (!IsVersionDirectory(entry)) continue;
    const fs::path version = target.models() / entry.path().filename();
    fs::create_directory(version, error);
    fs::permissions(version, kOwnerOnly, error);
    for (const fs::directory_entry& file : fs::directory_iterator(entry.path(), error)) {
      if (absl::Status status = CopyPrivate(file.path(), version / file.path().filename(),
                                            kOwnerReadWrite, summary.bytes);
          !status.ok()) {
        return status;
      }
    }
    ++summary.model_versions;
  }
  if (error) return FromError(error, absl::StrCat("cannot list ", from.models().string()));
  return summary;
}

}  // namespace

absl::StatusOr<BackupSummary> BackupStateDir(const StateDir& from, const fs::path& to) {
  if (!storage::PathExists(from.store())) {
    return absl::NotFoundError(
        absl::StrCat(from.root.string(), " holds no store (state.db); is it a state directory?"));
  }
  if (absl::Status status = CreatePrivateDirectory(to); !status.ok()) return status;
  absl::StatusOr<BackupSummary> summary = WriteBackup(from, to);
  // Half a backup restores into half a federation: a failed one leaves nothing behind.
  if (!summary.ok()) {
    std::error_code ignored;
    fs::remove_all(to, ignored);
  }
  return summary;
}

absl::Status RestoreStateDir(const fs::path& backup, const StateDir& to) {
  const StateDir source{backup};
  if (!storage::PathExists(source.store()) || !storage::PathExists(source.config())) {
    return absl::NotFoundError(
        absl::StrCat(backup.string(), " is not a backup (no state.db or coordinator.yaml)"));
  }
  if (absl::Status status = CreatePrivateDirectory(to.root); !status.ok()) return status;
  std::error_code error;
  fs::copy(backup, to.root, fs::copy_options::recursive | fs::copy_options::overwrite_existing,
           error);
  if (error) return FromError(error, absl::StrCat("cannot copy ", backup.string()));
  for (const fs::path& key : {to.ca_key(), to.server_key(), to.admin_key(), to.store()}) {
    fs::permissions(key, kOwnerReadWrite, error);
  }
  if (storage::PathExists(to.next_ca_key()))
    fs::permissions(to.next_ca_key(), kOwnerReadWrite, error);
  // The copied config still names the old directory.
  std::ifstream in(to.config());
  std::ostringstream rewritten;
  bool found = false;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("state_dir:", 0) == 0) {
      line = absl::StrCat("state_dir: ", to.root.string());
      found = true;
    }
    rewritten << line << '\n';
  }
  if (!found) {
    return absl::FailedPreconditionError(
        absl::StrCat(to.config().string(), " has no state_dir line to point at the restore"));
  }
  if (absl::Status status =
          storage::WriteFileAtomically(to.config(), rewritten.str(), kOwnerReadWrite);
      !status.ok()) {
    return status;
  }
  absl::StatusOr<CoordinatorConfig> config = CoordinatorConfig::Load(to.config());
  if (!config.ok()) return config.status();
  absl::StatusOr<std::unique_ptr<Store>> store =
      Store::OpenExisting(to.store(), config->federation);
  if (!store.ok()) return store.status();
  return absl::OkStatus();
}

}  // namespace fedmoe::coordinator
