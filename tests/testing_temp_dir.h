// A temporary directory for a test, removed with everything in it when the test ends.
#ifndef FEDMOE_TESTS_TESTING_TEMP_DIR_H_
#define FEDMOE_TESTS_TESTING_TEMP_DIR_H_

#include <cstdlib>
#include <filesystem>
#include <string>

namespace fedmoe::testing {

class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "fedmoe-test-XXXXXX").string();
    path_ = ::mkdtemp(pattern.data());
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace fedmoe::testing

#endif  // FEDMOE_TESTS_TESTING_TEMP_DIR_H_
