#include "storage/atomic_file.h"

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "tests/testing_temp_dir.h"

namespace fedmoe::storage {
namespace {

namespace fs = std::filesystem;
constexpr fs::perms kOwnerOnly = fs::perms::owner_read | fs::perms::owner_write;

std::string ReadAll(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

int EntriesIn(const fs::path& directory) {
  int count = 0;
  for ([[maybe_unused]] const auto& entry : fs::directory_iterator(directory)) ++count;
  return count;
}

TEST(AtomicFileTest, WritesContentsWithTheRequestedMode) {
  testing::TempDir dir;
  const fs::path path = dir.path() / "key.pem";
  ASSERT_TRUE(WriteFileAtomically(path, "secret", kOwnerOnly).ok());
  EXPECT_EQ(ReadAll(path), "secret");
  struct stat info {};
  ASSERT_EQ(::stat(path.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);
  EXPECT_EQ(EntriesIn(dir.path()), 1) << "no temporary file is left behind";
}

TEST(AtomicFileTest, StreamedAppendsReplaceTheOldVersionOnlyAtCommit) {
  testing::TempDir dir;
  const fs::path path = dir.path() / "model.safetensors";
  ASSERT_TRUE(WriteFileAtomically(path, "old", kOwnerOnly).ok());
  absl::StatusOr<AtomicFileWriter> writer = AtomicFileWriter::Create(path, fs::perms(0644));
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE(writer->Append("new ").ok());
  ASSERT_TRUE(writer->Append("contents").ok());
  EXPECT_EQ(ReadAll(path), "old") << "readers see the old version until the commit";
  ASSERT_TRUE(writer->Commit().ok());
  EXPECT_EQ(ReadAll(path), "new contents");
  EXPECT_EQ(EntriesIn(dir.path()), 1);
  EXPECT_EQ(writer->Append("more").code(), absl::StatusCode::kFailedPrecondition);
}

TEST(AtomicFileTest, AnAbandonedWriterLeavesTheOldFileAndNoTemporary) {
  testing::TempDir dir;
  const fs::path path = dir.path() / "config.json";
  ASSERT_TRUE(WriteFileAtomically(path, "kept", kOwnerOnly).ok());
  {
    absl::StatusOr<AtomicFileWriter> writer = AtomicFileWriter::Create(path, kOwnerOnly);
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE(writer->Append("torn half of a new vers").ok());
    EXPECT_EQ(EntriesIn(dir.path()), 2);
  }
  EXPECT_EQ(ReadAll(path), "kept");
  EXPECT_EQ(EntriesIn(dir.path()), 1);
}

TEST(AtomicFileTest, AMissingDirectoryIsAClearError) {
  testing::TempDir dir;
  const absl::Status status = WriteFileAtomically(dir.path() / "absent" / "file", "x", kOwnerOnly);
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_NE(status.message().find("cannot create a temporary file beside"), std::string::npos)
      << status;
}

}  // namespace
}  // namespace fedmoe::storage
