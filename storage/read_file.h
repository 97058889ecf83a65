// Reading small files whole (config.json, tokenizer.json, an index, PEM certificates and keys),
// with errors that name the file.
#ifndef FEDMOE_STORAGE_READ_FILE_H_
#define FEDMOE_STORAGE_READ_FILE_H_

#include <cstdint>
#include <filesystem>
#include <string>

#include "absl/status/statusor.h"

namespace fedmoe::storage {

// NotFound for a missing file; InvalidArgument for one larger than max_bytes (a config or a
// tokenizer is never gigabytes, so a huge one is a mistake, not something to read into memory).
absl::StatusOr<std::string> ReadSmallFile(const std::filesystem::path& path,
                                          uint64_t max_bytes = uint64_t{256} << 20);

}  // namespace fedmoe::storage

#endif  // FEDMOE_STORAGE_READ_FILE_H_
