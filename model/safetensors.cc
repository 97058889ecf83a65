#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "storage/atomic_file.h"

namespace fedmoe::model {
namespace {

using Json = nlohmann::json;

struct DTypeInfo {
  std::string_view name;
  DType dtype;
  uint64_t bytes;
};

constexpr DTypeInfo kDTypes[] = {
    {"F32", DType::kF32, 4},    {"F16", DType::kF16, 2},       {"BF16", DType::kBF16, 2},
    {"F64", DType::kOther, 8},  {"I64", DType::kOther, 8},     {"I32", DType::kOther, 4},
    {"I16", DType::kOther, 2},  {"I8", DType::kI8, 1},         {"U64", DType::kOther, 8},
    {"U32", DType::kOther, 4},  {"U16", DType::kOther, 2},     {"U8", DType::kOther, 1},
    {"BOOL", DType::kOther, 1}, {"F8_E4M3", DType::kOther, 1}, {"F8_E5M2", DType::kOther, 1},
};

const DTypeInfo* FindDType(std::string_view name) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.name == name) return &info;
  }
  return nullptr;
}

uint64_t DTypeBytes(DType dtype) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.dtype == dtype) return info.bytes;
  }
  return 0;
}

uint64_t ReadLittleEndian64(const std::byte* bytes) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | static_cast<uint8_t>(bytes[i]);
  return value;
}

absl::Status Corrupt(const std::filesystem::path& path, std::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat(path.string(), ": not a valid safetensors file: ", std::string(why)));
}

// Parses one tensor entry of the header, checking everything that does not need the others.
absl::StatusOr<SafetensorsEntry> ParseEntry(const std::string& name, const Json& value) {
  auto bad = [&name](std::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("tensor \"", name, "\" ", std::string(why)));
  };
  if (!value.is_object()) return bad("is not a JSON object");
  if (!value.contains("dtype") || !value.at("dtype").is_string()) return bad("has no dtype");
  if (!value.contains("shape") || !value.at("shape").is_array()) return bad("has no shape");
  if (!value.contains("data_offsets") || !value.at("data_offsets").is_array() ||
      value.at("data_offsets").size() != 2 || !value.at("data_offsets")[0].is_number_unsigned() ||
      !value.at("data_offsets")[1].is_number_unsigned()) {
    return bad("needs data_offsets [begin, end] of two non-negative integers");
  }
  SafetensorsEntry entry;
  entry.name = name;
  entry.dtype_name = value.at("dtype").get<std::string>();
  const DTypeInfo* dtype = FindDType(entry.dtype_name);
  if (dtype == nullptr) return bad(absl::StrCat("has an unknown dtype \"", entry.dtype_name, "\""));
  entry.dtype = dtype->dtype;
  uint64_t elements = 1;
  for (const Json& dimension : value.at("shape")) {
    if (!dimension.is_number_unsigned())
      return bad("has a shape that is not non-negative integers");
    const auto size = dimension.get<uint64_t>();
    if (size > (uint64_t{1} << 48) || __builtin_mul_overflow(elements, size, &elements) ||
        elements > (uint64_t{1} << 48)) {
      return bad("has an impossibly large shape");
    }
    entry.shape.push_back(static_cast<int64_t>(size));
  }
  entry.begin = value.at("data_offsets")[0].get<uint64_t>();
  entry.end = value.at("data_offsets")[1].get<uint64_t>();
  if (entry.end < entry.begin) return bad("has data_offsets that end before they begin");
  if (entry.end - entry.begin != elements * dtype->bytes) {
    return bad(absl::StrCat("has ", entry.end - entry.begin, " bytes, but dtype ", entry.dtype_name,
                            " and its shape make ", elements * dtype->bytes));
  }
  return entry;
}

}  // namespace

std::string_view DTypeName(DType dtype) {
  // The first entry of a dtype fedmoe computes in is its name; every other dtype is "other".
  if (dtype == DType::kOther) return "other";
  for (const DTypeInfo& info : kDTypes) {
    if (info.dtype == dtype) return info.name;
  }
  return "other";
}

int64_t SafetensorsEntry::element_count() const {
  int64_t count = 1;
  for (const int64_t dimension : shape) count *= dimension;
  return count;
}

float HalfToFloat(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  const uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0) {
    // Zero or subnormal: mantissa · 2^−24, exact in a float.
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign != 0 ? -magnitude : magnitude;
  }
  if (exponent == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

float BFloat16ToFloat(uint16_t bits) {
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}

uint16_t FloatToHalf(float value) {
  const auto bits = std::bit_cast<uint32_t>(value);
  const auto sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude >= 0x7f800000u) {  // Infinity stays infinity; every NaN becomes a quiet NaN.
    return static_cast<uint16_t>(sign | 0x7c00u | (magnitude > 0x7f800000u ? 0x200u : 0u));
  }
  // 65520 is halfway between the largest half (65504) and the next power of two; ties go to
  // even, which is infinity.
  if (magnitude >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);
  if (magnitude < 0x38800000u) {  // Below 2^−14: a subnormal half, in units of 2^−24.
    const float units = std::nearbyint(std::ldexp(std::bit_cast<float>(magnitude), 24));
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(units));
  }
  const uint32_t rebiased = magnitude - (uint32_t{112} << 23);
  const uint32_t rounded = (rebiased + 0xfffu + ((rebiased >> 13) & 1u)) >> 13;
  return static_cast<uint16_t>(sign | rounded);
}

uint16_t FloatToBFloat16(float value) {
  const auto bits = std::bit_cast<uint32_t>(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(
        absl::StrCat("cannot open ", path.string(), ": ", std::strerror(errno)));
  }
  struct stat info {};
  if (::fstat(fd, &info) != 0) {
    ::close(fd);
    return absl::InternalError(absl::StrCat("cannot stat ", path.string()));
  }
  const auto file_bytes = static_cast<uint64_t>(info.st_size);
  if (file_bytes < 8) {
    ::close(fd);
    return Corrupt(
        path, absl::StrCat("it is ", file_bytes, " bytes, shorter than the 8-byte header length"));
  }
  void* mapping = ::mmap(nullptr, file_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (mapping == MAP_FAILED) {
    return absl::InternalError(
        absl::StrCat("cannot map ", path.string(), ": ", std::strerror(errno)));
  }
  const auto* bytes = static_cast<const std::byte*>(mapping);
  auto fail = [&](std::string_view why) {
    ::munmap(mapping, file_bytes);
    return Corrupt(path, why);
  };

  const uint64_t header_bytes = ReadLittleEndian64(bytes);
  if (header_bytes > kMaxSafetensorsHeaderBytes) {
    return fail(absl::StrCat("its header length ", header_bytes, " is over the ",
                             kMaxSafetensorsHeaderBytes, "-byte limit"));
  }
  if (header_bytes > file_bytes - 8) {
    return fail(absl::StrCat("its header length ", header_bytes, " runs past the end of the ",
                             file_bytes, "-byte file (truncated?)"));
  }
  const auto* header_begin = reinterpret_cast<const char*>(bytes + 8);
  const Json header = Json::parse(header_begin, header_begin + header_bytes, nullptr,
                                  /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) {
    return fail("its header is not a JSON object");
  }

  std::vector<SafetensorsEntry> entries;
  std::map<std::string, std::string> metadata;
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) return fail("__metadata__ is not an object");
      for (const auto& [key, text] : value.items()) {
        if (!text.is_string())
          return fail(absl::StrCat("__metadata__ \"", key, "\" is not a string"));
        metadata[key] = text.get<std::string>();
      }
      continue;
    }
    absl::StatusOr<SafetensorsEntry> entry = ParseEntry(name, value);
    if (!entry.ok()) return fail(std::string(entry.status().message()));
    entries.push_back(*std::move(entry));
  }

  // The entries must tile the data section exactly: no overlaps, no gaps, nothing past the end.
  const uint64_t data_bytes = file_bytes - 8 - header_bytes;
  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) {
    return std::tie(a.begin, a.end) < std::tie(b.begin, b.end);
  });
  uint64_t cursor = 0;
  for (const SafetensorsEntry& entry : entries) {
    if (entry.begin < cursor) {
      return fail(absl::StrCat("tensor \"", entry.name, "\" overlaps the tensor before it"));
    }
    if (entry.begin > cursor) {
      return fail(absl::StrCat("there is a gap of ", entry.begin - cursor,
                               " bytes before tensor \"", entry.name, "\""));
    }
    if (entry.end > data_bytes) {
      return fail(absl::StrCat("tensor \"", entry.name, "\" ends at byte ", entry.end,
                               " but the data section has only ", data_bytes, " (truncated?)"));
    }
    cursor = entry.end;
  }
  if (cursor != data_bytes) {
    return fail(absl::StrCat(data_bytes - cursor, " bytes after the last tensor belong to none"));
  }
  return SafetensorsFile(path, bytes, file_bytes, bytes + 8 + header_bytes, std::move(entries),
                         std::move(metadata));
}

SafetensorsFile::SafetensorsFile(std::filesystem::path path, const std::byte* mapping,
                                 size_t mapped_bytes, const std::byte* data,
                                 std::vector<SafetensorsEntry> entries,
                                 std::map<std::string, std::string> metadata)
    : path_(std::move(path)),
      mapping_(mapping),
      mapped_bytes_(mapped_bytes),
      data_(data),
      entries_(std::move(entries)),
      metadata_(std::move(metadata)) {}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept
    : path_(std::move(other.path_)),
      mapping_(std::exchange(other.mapping_, nullptr)),
      mapped_bytes_(std::exchange(other.mapped_bytes_, 0)),
      data_(std::exchange(other.data_, nullptr)),
      entries_(std::move(other.entries_)),
      metadata_(std::move(other.metadata_)) {}

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this != &other) {
    Unmap();
    path_ = std::move(other.path_);
    mapping_ = std::exchange(other.mapping_, nullptr);
    mapped_bytes_ = std::exchange(other.mapped_bytes_, 0);
    data_ = std::exchange(other.data_, nullptr);
    entries_ = std::move(other.entries_);
    metadata_ = std::move(other.metadata_);
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() { Unmap(); }

void SafetensorsFile::Unmap() {
  if (mapping_ != nullptr) {
    // munmap takes a non-const pointer; the mapping was made by this object.
    ::munmap(const_cast<std::byte*>(mapping_), mapped_bytes_);
    mapping_ = nullptr;
  }
}

const SafetensorsEntry* SafetensorsFile::Find(std::string_view name) const {
  for (const SafetensorsEntry& entry : entries_) {
    if (entry.name == name) return &entry;
  }
  return nullptr;
}

absl::Status SafetensorsFile::ReadFloats(const SafetensorsEntry& entry,
                                         std::span<float> out) const {
  if (entry.dtype == DType::kOther || entry.dtype == DType::kI8) {
    return absl::InvalidArgumentError(absl::StrCat(path_.string(), ": tensor \"", entry.name,
                                                   "\" is ", entry.dtype_name,
                                                   "; only F32, F16 and BF16 can be loaded"));
  }
  if (static_cast<int64_t>(out.size()) != entry.element_count()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor \"", entry.name, "\" has ", entry.element_count(), " values, not ", out.size()));
  }
  const std::byte* source = data_ + entry.begin;
  if (entry.dtype == DType::kF32) {
    std::memcpy(out.data(), source, out.size() * sizeof(float));
    return absl::OkStatus();
  }
  const bool is_half = entry.dtype == DType::kF16;
  for (size_t i = 0; i < out.size(); ++i) {
    uint16_t bits = 0;
    std::memcpy(&bits, source + 2 * i, sizeof(bits));
    out[i] = is_half ? HalfToFloat(bits) : BFloat16ToFloat(bits);
  }
  return absl::OkStatus();
}

namespace {

// A tensor's header entry, and how to append its bytes to the file.
struct TensorWriter {
  std::string_view name;
  DType dtype;
  std::span<const int64_t> shape;
  uint64_t elements;
  std::function<absl::Status(storage::AtomicFileWriter&)> append;
};

// The header, then each tensor's bytes, through one atomic file.
absl::Status WriteTensors(const std::filesystem::path& path, std::span<const TensorWriter> tensors,
                          const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string_view> names;
  uint64_t offset = 0;
  for (const TensorWriter& tensor : tensors) {
    if (!names.insert(tensor.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("duplicate tensor name \"", std::string(tensor.name), "\""));
    }
    int64_t elements = 1;
    for (const int64_t dimension : tensor.shape) elements *= dimension;
    if (static_cast<uint64_t>(elements) != tensor.elements) {
      return absl::InvalidArgumentError(absl::StrCat("tensor \"", std::string(tensor.name),
                                                     "\" has ", tensor.elements,
                                                     " values but its shape holds ", elements));
    }
    const uint64_t bytes = static_cast<uint64_t>(elements) * DTypeBytes(tensor.dtype);
    header[std::string(tensor.name)] = {
        {"dtype", DTypeName(tensor.dtype)},
        {"shape", std::vector<int64_t>(tensor.shape.begin(), tensor.shape.end())},
        {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string header_text = header.dump();
  // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  absl::StatusOr<storage::AtomicFileWriter> writer = storage::AtomicFileWriter::Create(
      path, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write |
                std::filesystem::perms::group_read | std::filesystem::perms::others_read);
  if (!writer.ok()) return writer.status();
  std::string length(8, '\0');
  for (size_t i = 0; i < 8; ++i)
    length[i] = static_cast<char>((header_text.size() >> (8 * i)) & 0xff);
  if (absl::Status status = writer->Append(length); !status.ok()) return status;
  if (absl::Status status = writer->Append(header_text); !status.ok()) return status;
  for (const TensorWriter& tensor : tensors) {
    if (absl::Status status = tensor.append(*writer); !status.ok()) return status;
  }
  return writer->Commit();
}

}  // namespace

absl::Status WriteSafetensors(const std::filesystem::path& path,
                              std::span<const TensorToWrite> tensors, DType dtype,
                              const std::map<std::string, std::string>& metadata) {
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) {
    return absl::InvalidArgumentError("can write only F32, F16 or BF16");
  }
  std::vector<TensorWriter> writers;
  for (const TensorToWrite& tensor : tensors) {
    writers.push_back(
        {.name = tensor.name,
         .dtype = dtype,
         .shape = tensor.shape,
         .elements = tensor.values.size(),
         .append = [&tensor, dtype](storage::AtomicFileWriter& writer) -> absl::Status {
           constexpr size_t kChunkValues = size_t{1} << 20;
           std::string chunk;
           for (size_t start = 0; start < tensor.values.size(); start += kChunkValues) {
             const size_t count = std::min(kChunkValues, tensor.values.size() - start);
             const float* values = tensor.values.data() + start;
             chunk.resize(count * DTypeBytes(dtype));
             if (dtype == DType::kF32) {
               std::memcpy(chunk.data(), values, count * sizeof(float));
             } else {
               for (size_t i = 0; i < count; ++i) {
                 const uint16_t bits =
                     dtype == DType::kF16 ? FloatToHalf(values[i]) : FloatToBFloat16(values[i]);
                 std::memcpy(chunk.data() + 2 * i, &bits, sizeof(bits));
               }
             }
             if (absl::Status status = writer.Append(chunk); !status.ok()) return status;
           }
           return absl::OkStatus();
         }});
  }
  return WriteTensors(path, writers, metadata);
}

absl::Status WriteRawSafetensors(const std::filesystem::path& path,
                                 std::span<const RawTensorToWrite> tensors,
                                 const std::map<std::string, std::string>& metadata) {
  std::vector<TensorWriter> writers;
  for (const RawTensorToWrite& tensor : tensors) {
    const uint64_t value_bytes = DTypeBytes(tensor.dtype);
    if (tensor.dtype == DType::kOther || value_bytes == 0 ||
        tensor.bytes.size() % value_bytes != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor \"", tensor.name, "\" has ", tensor.bytes.size(),
                       " bytes, not whole ", std::string(DTypeName(tensor.dtype)), " values"));
    }
    writers.push_back({.name = tensor.name,
                       .dtype = tensor.dtype,
                       .shape = tensor.shape,
                       .elements = tensor.bytes.size() / value_bytes,
                       .append = [&tensor](storage::AtomicFileWriter& writer) {
                         return writer.Append(
                             std::string_view(reinterpret_cast<const char*>(tensor.bytes.data()),
                                              tensor.bytes.size()));
                       }});
  }
  return WriteTensors(path, writers, metadata);
}

std::span<const std::byte> SafetensorsFile::Bytes(const SafetensorsEntry& entry) const {
  return {data_ + entry.begin, static_cast<size_t>(entry.end - entry.begin)};
}

}  // namespace fedmoe::model
