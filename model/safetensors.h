// The safetensors checkpoint format: an 8-byte little-endian header length, a JSON header that
// maps tensor names to {dtype, shape, data_offsets}, then the raw tensor bytes.
//
// The reader maps the file (mmap) and validates the whole header before handing out any
// tensor, so a corrupt, truncated or hostile file is an error, never a crash or an
// out-of-bounds read. The writer streams through AtomicFileWriter: readers see the old file or
// the complete new one.
#ifndef FEDMOE_MODEL_SAFETENSORS_H_
#define FEDMOE_MODEL_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fedmoe::model {

// The element types fedmoe converts from, and I8, which holds an INT8 base's weights (read as
// bytes, never as floats). Other safetensors dtypes (F64, I32, ...) are recognised by the
// validator and refused when read.
enum class DType { kF32, kF16, kBF16, kI8, kOther };

std::string_view DTypeName(DType dtype);

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::kOther;
  std::string dtype_name;
  std::vector<int64_t> shape;
  // Offsets into the data section, which starts right after the header.
  uint64_t begin = 0;
  uint64_t end = 0;

  int64_t element_count() const;
};

// A header is at most this long: it holds names and shapes, never data.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = uint64_t{100} << 20;

class SafetensorsFile {
 public:
  // Maps and validates `path`: the header length fits the file and the bound above; the header
  // is a JSON object of well-formed entries; each entry's byte length is its element count
  // times its dtype's size; the entries tile the data section exactly, without gaps, overlaps or
  // bytes past the end. Errors are InvalidArgument and begin with the path.
  static absl::StatusOr<SafetensorsFile> Open(const std::filesystem::path& path);

  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  const std::filesystem::path& path() const { return path_; }
  // Entries in the order of their data offsets.
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const SafetensorsEntry* Find(std::string_view name) const;

  // Converts an F32, F16 or BF16 tensor to floats. `out` must hold exactly its element count.
  absl::Status ReadFloats(const SafetensorsEntry& entry, std::span<float> out) const;
  // The tensor's bytes in the mapping, as stored (little-endian). Valid while this file is.
  std::span<const std::byte> Bytes(const SafetensorsEntry& entry) const;

 private:
  SafetensorsFile(std::filesystem::path path, const std::byte* mapping, size_t mapped_bytes,
                  const std::byte* data, std::vector<SafetensorsEntry> entries,
                  std::map<std::string, std::string> metadata);
  void Unmap();

  std::filesystem::path path_;
  const std::byte* mapping_ = nullptr;
  size_t mapped_bytes_ = 0;
  const std::byte* data_ = nullptr;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

struct TensorToWrite {
  std::string name;
  std::vector<int64_t> shape;
  std::span<const float> values;
};

// Writes `tensors`, in this order, as F32, F16 or BF16 (round to nearest even), with the given
// string metadata. Atomic: temp file, fsync, rename. InvalidArgument for a duplicate name or a
// shape that does not match the value count.
absl::Status WriteSafetensors(const std::filesystem::path& path,
                              std::span<const TensorToWrite> tensors, DType dtype,
                              const std::map<std::string, std::string>& metadata = {});

// A tensor given as its stored bytes: `bytes` holds exactly its element count in `dtype`
// (kOther is refused).
struct RawTensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::span<const std::byte> bytes;
};

// WriteSafetensors for tensors that are already in their stored form, each in its own dtype.
// Same atomicity and errors.
absl::Status WriteRawSafetensors(const std::filesystem::path& path,
                                 std::span<const RawTensorToWrite> tensors,
                                 const std::map<std::string, std::string>& metadata = {});

// IEEE half and bfloat16 conversions used by the reader and the writer.
float HalfToFloat(uint16_t bits);
float BFloat16ToFloat(uint16_t bits);
uint16_t FloatToHalf(float value);
uint16_t FloatToBFloat16(float value);

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_SAFETENSORS_H_
