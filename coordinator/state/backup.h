// Backing up and restoring a coordinator's state directory (docs/operations.md). A backup can
// be taken while the coordinator runs: the store is copied with SQLite's online backup (one
// consistent snapshot), and published model versions never change once written. A version
// committed after the snapshot may be copied too; the restored coordinator deletes version
// directories its store does not name, as at every start.
#ifndef FEDMOE_COORDINATOR_STATE_BACKUP_H_
#define FEDMOE_COORDINATOR_STATE_BACKUP_H_

#include <cstdint>
#include <filesystem>

#include "absl/status/statusor.h"
#include "coordinator/config.h"

namespace fedmoe::coordinator {

struct BackupSummary {
  int64_t model_versions = 0;
  uint64_t bytes = 0;
};

// `to` must not exist; it is created 0700, with keys 0600.
absl::StatusOr<BackupSummary> BackupStateDir(const StateDir& from, const std::filesystem::path& to);

// Copies `backup` into `to` (which must not exist, or be empty), points the copied
// coordinator.yaml's state_dir at `to`, and checks that the config loads and the store opens.
absl::Status RestoreStateDir(const std::filesystem::path& backup, const StateDir& to);

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_STATE_BACKUP_H_
