// Whether a path exists, without exceptions. std::filesystem's one-argument exists() and
// is_directory() throw for a path the system cannot even look at (longer than PATH_MAX, a
// parent that is not searchable, a symlink loop), and a config or flag can name such a path: a
// fuzzed client.yaml took the daemon down that way. These answer false instead, and the open
// or read that follows reports the system's reason.
#ifndef FEDMOE_STORAGE_FILE_STATUS_H_
#define FEDMOE_STORAGE_FILE_STATUS_H_

#include <filesystem>

namespace fedmoe::storage {

bool PathExists(const std::filesystem::path& path);
bool IsDirectory(const std::filesystem::path& path);

}  // namespace fedmoe::storage

#endif  // FEDMOE_STORAGE_FILE_STATUS_H_
