// The safetensors reader on arbitrary files: Open either refuses with an error that begins with
// the path, or hands out entries that keep its promises (model/safetensors.h): in offset order,
// tiling the data section exactly, each as long as its element count times its dtype's size,
// and readable as floats when F32, F16 or BF16.
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "model/safetensors.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

uint64_t DTypeBytes(const fedmoe::model::SafetensorsEntry& entry) {
  using fedmoe::model::DType;
  switch (entry.dtype) {
    case DType::kF32:
      return 4;
    case DType::kF16:
    case DType::kBF16:
      return 2;
    case DType::kI8:  // bytes, not floats: checked through Bytes below
    case DType::kOther:
      return 0;
  }
  return 0;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using fedmoe::model::SafetensorsFile;
  const std::filesystem::path path =
      fedmoe::fuzz::WriteScratchFile("input.safetensors", {data, size});
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  if (!file.ok()) {
    FEDMOE_FUZZ_CHECK(absl::StartsWith(file.status().message(), path.string()),
                      absl::StrCat("an Open error that does not begin with the path: ",
                                   file.status().ToString()));
    return 0;
  }
  uint64_t expected_begin = 0;
  for (const fedmoe::model::SafetensorsEntry& entry : file->entries()) {
    FEDMOE_FUZZ_CHECK(entry.begin == expected_begin && entry.begin <= entry.end,
                      absl::StrCat("entry ", entry.name, " does not follow the one before"));
    expected_begin = entry.end;
    FEDMOE_FUZZ_CHECK(entry.end <= size, absl::StrCat("entry ", entry.name, " ends past the file"));
    FEDMOE_FUZZ_CHECK(file->Find(entry.name) == &entry,
                      absl::StrCat("Find does not return entry ", entry.name));
    FEDMOE_FUZZ_CHECK(file->Bytes(entry).size() == entry.end - entry.begin,
                      absl::StrCat("entry ", entry.name, "'s bytes are not its data_offsets'"));
    const uint64_t element_bytes = DTypeBytes(entry);
    if (element_bytes == 0) continue;
    FEDMOE_FUZZ_CHECK(
        entry.end - entry.begin == static_cast<uint64_t>(entry.element_count()) * element_bytes,
        absl::StrCat("entry ", entry.name, "'s byte length is not its element count's"));
    std::vector<float> values(static_cast<size_t>(entry.element_count()));
    const absl::Status read = file->ReadFloats(entry, values);
    FEDMOE_FUZZ_CHECK(read.ok(),
                      absl::StrCat("a validated entry does not read: ", read.ToString()));
  }
  return 0;
}
