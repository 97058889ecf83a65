// `fedmoe-coordinator backup` of a state directory whose federation has published no model
// yet, and of one missing a file: the first is a whole backup, the second leaves nothing.
#include "coordinator/state/backup.h"

#include <gtest/gtest.h>

#include <fstream>

#include "coordinator/state/store.h"
#include "tests/testing_temp_dir.h"

namespace fedmoe::coordinator {
namespace {

// A state directory as `init` leaves it before any model is published: the store, the PKI files
// and the config, and no models/ directory.
StateDir FreshStateDir(const std::filesystem::path& root) {
  const StateDir dir{root};
  std::filesystem::create_directories(root);
  EXPECT_TRUE(Store::Open(dir.store()).ok());
  for (const std::filesystem::path& file :
       {dir.ca_certificate(), dir.ca_key(), dir.server_certificate(), dir.server_key(),
        dir.admin_certificate(), dir.admin_key(), dir.config()}) {
    std::ofstream(file) << "contents of " << file.filename().string() << "\n";
  }
  return dir;
}

TEST(BackupTest, AFederationWithoutAModelBacksUpWhole) {
  fedmoe::testing::TempDir temp;
  const StateDir from = FreshStateDir(temp.path() / "state");
  const std::filesystem::path to = temp.path() / "backup";
  absl::StatusOr<BackupSummary> summary = BackupStateDir(from, to);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->model_versions, 0);
  const StateDir backup{to};
  EXPECT_TRUE(std::filesystem::exists(backup.store()));
  EXPECT_TRUE(std::filesystem::exists(backup.ca_key()));
  EXPECT_TRUE(std::filesystem::is_directory(backup.models()));
}

TEST(BackupTest, AFailedBackupLeavesNoPartialCopy) {
  fedmoe::testing::TempDir temp;
  const StateDir from = FreshStateDir(temp.path() / "state");
  std::filesystem::remove(from.server_key());
  const std::filesystem::path to = temp.path() / "backup";
  absl::StatusOr<BackupSummary> summary = BackupStateDir(from, to);
  ASSERT_FALSE(summary.ok());
  EXPECT_NE(summary.status().message().find("server"), std::string::npos) << summary.status();
  EXPECT_FALSE(std::filesystem::exists(to)) << "a half backup would restore half a federation";
}

}  // namespace
}  // namespace fedmoe::coordinator
