#include "storage/read_file.h"

#include <fstream>
#include <sstream>
#include <system_error>

#include "absl/strings/str_cat.h"

namespace fedmoe::storage {

absl::StatusOr<std::string> ReadSmallFile(const std::filesystem::path& path, uint64_t max_bytes) {
  std::error_code error;
  const uintmax_t size = std::filesystem::file_size(path, error);
  if (error) {
    return absl::NotFoundError(absl::StrCat("cannot read ", path.string(), ": ", error.message()));
  }
  if (size > max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path.string(), " is ", size, " bytes, more than the ", max_bytes, " allowed"));
  }
  std::ifstream in(path, std::ios::binary);
  std::ostringstream contents;
  contents << in.rdbuf();
  if (!in.good() && !in.eof()) {
    return absl::InternalError(absl::StrCat("cannot read ", path.string()));
  }
  return contents.str();
}

}  // namespace fedmoe::storage
