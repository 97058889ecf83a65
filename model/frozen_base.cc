#include "model/frozen_base.h"

#include <openssl/evp.h>

#include <algorithm>
#include <memory>
#include <set>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "config/enum_names.h"
#include "model/checkpoint.h"
#include "storage/atomic_file.h"

namespace fedmoe::model {
namespace {

namespace cpu = kernels::cpu;

constexpr config::EnumName<WeightFormat> kFormatNames[] = {{WeightFormat::kFloat32, "fp32"},
                                                           {WeightFormat::kBfloat16, "bf16"},
                                                           {WeightFormat::kInt8, "int8"}};

}  // namespace

std::string_view WeightFormatName(WeightFormat format) {
  return config::NameOf(kFormatNames, format, "unknown");
}

absl::StatusOr<WeightFormat> ParseWeightFormat(std::string_view name) {
  const std::optional<WeightFormat> format = config::ValueOf(kFormatNames, name);
  if (!format.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat("unknown weight format \"", std::string(name),
                                                   "\"; expected fp32, bf16 or int8"));
  }
  return *format;
}

bool IsFrozenMatrix(TensorRole role) {
  return role != TensorRole::kNorm && role != TensorRole::kRouter;
}

FrozenBase::FrozenBase(const MoeConfig& config, WeightFormat format, int64_t group_size)
    : config_(config),
      layout_(config),
      format_(format),
      group_size_(format == WeightFormat::kInt8 ? std::max<int64_t>(group_size, 0) : 0) {}

absl::Status FrozenBase::QuantizeActivations() {
  if (format_ != WeightFormat::kInt8) {
    return absl::FailedPreconditionError(
        absl::StrCat("int8 activations need the base held in INT8 (--int8), not ",
                     std::string(WeightFormatName(format_))));
  }
  for (auto& [offset, matrix] : matrices_) matrix.int8_activations = true;
  int8_activations_ = true;
  return absl::OkStatus();
}

void FrozenBase::AddVector(const TensorSpec& spec, std::span<const float> values) {
  vectors_[spec.offset] = fp32_storage_.emplace_back(values.begin(), values.end()).data();
}

void FrozenBase::AddMatrix(const TensorSpec& spec, std::span<const float> values) {
  const int64_t rows = spec.shape[0];
  const int64_t columns = spec.shape[1];
  switch (format_) {
    case WeightFormat::kFloat32:
      matrices_[spec.offset] = FrozenWeight::Float32(
          fp32_storage_.emplace_back(values.begin(), values.end()).data(), rows, columns);
      return;
    case WeightFormat::kBfloat16: {
      cpu::AlignedBf16& rounded = bf16_storage_.emplace_back(values.size());
      cpu::ToBf16(values.data(), rounded.data(), static_cast<int64_t>(values.size()));
      matrices_[spec.offset] = FrozenWeight::Bfloat16(rounded.data(), rows, columns);
      return;
    }
    case WeightFormat::kInt8:
      matrices_[spec.offset] = FrozenWeight::Int8(
          int8_storage_.emplace_back(cpu::QuantizeInt8(values, rows, columns, group_size_)));
      return;
  }
}

absl::StatusOr<FrozenBase> FrozenBase::Build(const MoeConfig& config, WeightFormat format,
                                             int64_t group_size, const TensorSource& fill) {
  FrozenBase base(config, format, group_size);
  cpu::AlignedFloats values;
  for (const TensorSpec& spec : base.layout_.tensors()) {
    values.resize(static_cast<size_t>(spec.size));
    if (absl::Status status = fill(spec, values); !status.ok()) return status;
    if (IsFrozenMatrix(spec.role)) {
      base.AddMatrix(spec, values);
    } else {
      base.AddVector(spec, values);
    }
  }
  return base;
}

FrozenBase FrozenBase::FromParameters(const ModelParameters& parameters, WeightFormat format,
                                      int64_t group_size) {
  absl::StatusOr<FrozenBase> base =
      Build(parameters.config(), format, group_size,
            [&parameters](const TensorSpec& spec, std::span<float> out) {
              const std::span<const float> values = parameters.tensor(spec);
              std::copy(values.begin(), values.end(), out.begin());
              return absl::OkStatus();
            });
  return *std::move(base);  // copying cannot fail
}

namespace {

constexpr std::string_view kFormatKey = "fedmoe_weight_format";
constexpr std::string_view kGroupKey = "fedmoe_int8_group_size";
constexpr std::string_view kScaleSuffix = "_scale";

std::optional<WeightFormat> StoredFormat(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return WeightFormat::kFloat32;
    case DType::kBF16:
      return WeightFormat::kBfloat16;
    case DType::kI8:
      return WeightFormat::kInt8;
    default:
      return std::nullopt;
  }
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

bool AlignedFor(const void* pointer, size_t alignment) {
  return reinterpret_cast<uintptr_t>(pointer) % alignment == 0;
}

}  // namespace

absl::StatusOr<FrozenBase> FrozenBase::Open(const std::filesystem::path& directory,
                                            std::optional<WeightFormat> format,
                                            int64_t group_size) {
  absl::StatusOr<MoeConfig> config = LoadMoeConfig(directory / "config.json");
  if (!config.ok()) return config.status();
  absl::StatusOr<std::vector<SafetensorsFile>> files = OpenWeightFiles(directory);
  if (!files.ok()) return files.status();

  struct Stored {
    const SafetensorsFile* file;
    const SafetensorsEntry* entry;
  };
  std::unordered_map<std::string, Stored> stored;
  int64_t stored_group = -1;
  for (const SafetensorsFile& file : *files) {
    const auto group = file.metadata().find(std::string(kGroupKey));
    if (group != file.metadata().end()) {
      int64_t value = 0;
      if (!absl::SimpleAtoi(group->second, &value) || value < 0) {
        return absl::InvalidArgumentError(absl::StrCat(file.path().string(), ": ",
                                                       std::string(kGroupKey), " \"", group->second,
                                                       "\" is not a group size"));
      }
      stored_group = value;
    }
    for (const SafetensorsEntry& entry : file.entries()) {
      if (entry.name.ends_with(".rotary_emb.inv_freq")) continue;  // derived, not a weight
      if (!stored.emplace(entry.name, Stored{&file, &entry}).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor \"", entry.name, "\" appears in more than one shard"));
      }
    }
  }
  const ModelLayout layout(*config);
  const auto find = [&](const std::string& name) -> absl::StatusOr<Stored> {
    const auto found = stored.find(name);
    if (found == stored.end()) {
      return absl::InvalidArgumentError(absl::StrCat(directory.string(), ": tensor \"", name,
                                                     "\" is missing from the checkpoint"));
    }
    return found->second;
  };
  // As stored, unless asked otherwise: the first matrix's dtype says (F16 becomes bf16).
  if (!format.has_value()) {
    absl::StatusOr<Stored> embedding = find(layout.tensors().front().name);
    if (!embedding.ok()) return embedding.status();
    format = StoredFormat(embedding->entry->dtype).value_or(WeightFormat::kBfloat16);
    if (*format == WeightFormat::kInt8) group_size = stored_group;
  }
  FrozenBase base(*config, *format, group_size);
  std::set<std::string> used;
  cpu::AlignedFloats values;
  for (const TensorSpec& spec : layout.tensors()) {
    absl::StatusOr<Stored> tensor = find(spec.name);
    if (!tensor.ok()) return tensor.status();
    const SafetensorsFile& file = *tensor->file;
    const SafetensorsEntry& entry = *tensor->entry;
    used.insert(spec.name);
    if (entry.shape != spec.shape) {
      return absl::InvalidArgumentError(
          absl::StrCat(file.path().string(), ": tensor \"", spec.name, "\" has shape ",
                       ShapeText(entry.shape), " but config.json needs ", ShapeText(spec.shape)));
    }
    values.resize(static_cast<size_t>(spec.size));
    const std::byte* bytes = file.Bytes(entry).data();
    if (entry.dtype == DType::kI8) {
      const std::string scale_name = spec.name + std::string(kScaleSuffix);
      absl::StatusOr<Stored> scale = find(scale_name);
      if (!scale.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(file.path().string(), ": INT8 tensor \"",
                                                       spec.name, "\" has no \"", scale_name,
                                                       "\" beside it"));
      }
      used.insert(scale_name);
      const int64_t rows = spec.shape[0];
      const int64_t columns = spec.shape[1];
      const int64_t group = stored_group <= 0 || stored_group > columns ? columns : stored_group;
      const int64_t groups = (columns + group - 1) / group;
      const SafetensorsEntry& scale_entry = *scale->entry;
      if (scale_entry.dtype != DType::kF32 ||
          scale_entry.shape != std::vector<int64_t>{rows, groups}) {
        return absl::InvalidArgumentError(absl::StrCat(scale->file->path().string(), ": \"",
                                                       scale_name, "\" must be F32 [", rows, ", ",
                                                       groups, "] for a group size of ", group));
      }
      const std::byte* scale_bytes = scale->file->Bytes(scale_entry).data();
      const float* scales = reinterpret_cast<const float*>(scale_bytes);
      if (!AlignedFor(scale_bytes, alignof(float))) {
        scales = base.fp32_storage_
                     .emplace_back(reinterpret_cast<const float*>(scale_bytes),
                                   reinterpret_cast<const float*>(scale_bytes) + rows * groups)
                     .data();
      }
      const FrozenWeight weight =
          FrozenWeight::Int8(reinterpret_cast<const int8_t*>(bytes), scales, rows, columns, group);
      if (*format == WeightFormat::kInt8 && (group_size == stored_group || group_size == group)) {
        base.matrices_[spec.offset] = weight;
        continue;
      }
      cpu::DecodeRows(weight, 0, rows, values.data());
      base.AddMatrix(spec, values);
      continue;
    }
    if (!IsFrozenMatrix(spec.role)) {
      if (absl::Status status = file.ReadFloats(entry, values); !status.ok()) return status;
      base.AddVector(spec, values);
      continue;
    }
    const bool viewable = StoredFormat(entry.dtype) == format && *format != WeightFormat::kInt8 &&
                          AlignedFor(bytes, *format == WeightFormat::kFloat32 ? 4 : 2);
    if (viewable) {
      base.matrices_[spec.offset] =
          *format == WeightFormat::kFloat32
              ? FrozenWeight::Float32(reinterpret_cast<const float*>(bytes), spec.shape[0],
                                      spec.shape[1])
              : FrozenWeight::Bfloat16(reinterpret_cast<const cpu::Bf16*>(bytes), spec.shape[0],
                                       spec.shape[1]);
      continue;
    }
    if (absl::Status status = file.ReadFloats(entry, values); !status.ok()) return status;
    base.AddMatrix(spec, values);
  }
  for (const auto& [name, where] : stored) {
    if (!used.contains(name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          where.file->path().string(), ": tensor \"", name,
          "\" has no place in the Mixtral layout of this config.json (a config mismatch?)"));
    }
  }
  base.files_ = *std::move(files);
  return base;
}

int64_t FrozenBase::bytes() const {
  int64_t total = 0;
  for (const auto& [offset, matrix] : matrices_) total += matrix.bytes();
  for (const TensorSpec& spec : layout_.tensors()) {
    if (!IsFrozenMatrix(spec.role)) total += spec.size * static_cast<int64_t>(sizeof(float));
  }
  return total;
}

absl::StatusOr<FrozenBase> OpenForInference(const std::filesystem::path& directory,
                                            const HeldFormat& held) {
  absl::StatusOr<FrozenBase> base = FrozenBase::Open(directory, held.weights);
  if (!base.ok() || !held.int8_activations) return base;
  if (absl::Status status = base->QuantizeActivations(); !status.ok()) return status;
  return base;
}

std::string HeldFormatName(const FrozenBase& base) {
  std::string name(WeightFormatName(base.format()));
  if (base.int8_activations()) name += " with int8 activations";
  return name;
}

absl::StatusOr<WeightFormat> StoredWeightFormat(const std::filesystem::path& directory) {
  absl::StatusOr<std::vector<SafetensorsFile>> files = OpenWeightFiles(directory);
  if (!files.ok()) return files.status();
  for (const SafetensorsFile& file : *files) {
    if (const SafetensorsEntry* entry = file.Find("model.embed_tokens.weight")) {
      return StoredFormat(entry->dtype).value_or(WeightFormat::kBfloat16);
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(
      directory.string(), ": tensor \"model.embed_tokens.weight\" is missing from the checkpoint"));
}

ModelParameters DecodeBase(const FrozenBase& base) {
  ModelParameters parameters(base.config());
  for (const TensorSpec& spec : parameters.layout().tensors()) {
    std::span<float> out = parameters.tensor(spec);
    if (IsFrozenMatrix(spec.role)) {
      cpu::DecodeRows(base.matrix(spec.offset), 0, spec.shape[0], out.data());
    } else {
      std::copy(base.vector(spec.offset), base.vector(spec.offset) + spec.size, out.begin());
    }
  }
  return parameters;
}

std::string BaseContentHash(const FrozenBase& base) {
  const std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> context(EVP_MD_CTX_new(),
                                                                        &EVP_MD_CTX_free);
  EVP_DigestInit_ex(context.get(), EVP_sha256(), nullptr);
  // Each item length-prefixed, so that no two different sequences of items hash alike.
  const auto add = [&](const void* data, uint64_t bytes) {
    unsigned char length[8];
    for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(bytes >> (8 * i));
    EVP_DigestUpdate(context.get(), length, sizeof(length));
    if (bytes > 0) EVP_DigestUpdate(context.get(), data, bytes);
  };
  const auto add_text = [&](std::string_view text) { add(text.data(), text.size()); };
  add_text("fedmoe-base-v1");
  add_text(base.config().ToJson());
  add_text(WeightFormatName(base.format()));
  add_text(absl::StrCat(base.group_size()));
  for (const TensorSpec& spec : base.layout().tensors()) {
    add_text(spec.name);
    if (!IsFrozenMatrix(spec.role)) {
      add(base.vector(spec.offset), static_cast<uint64_t>(spec.size) * sizeof(float));
      continue;
    }
    const FrozenWeight& weight = base.matrix(spec.offset);
    const uint64_t value_bytes = weight.format == WeightFormat::kFloat32    ? sizeof(float)
                                 : weight.format == WeightFormat::kBfloat16 ? sizeof(cpu::Bf16)
                                                                            : 1;
    add(weight.values, static_cast<uint64_t>(spec.size) * value_bytes);
    if (weight.format == WeightFormat::kInt8) {
      add(weight.scales,
          static_cast<uint64_t>(weight.rows * weight.groups_per_row()) * sizeof(float));
    }
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_DigestFinal_ex(context.get(), digest, &length);
  std::string hex;
  for (unsigned int i = 0; i < length; ++i)
    absl::StrAppend(&hex, absl::Hex(digest[i], absl::kZeroPad2));
  return hex;
}

absl::Status CheckBaseContentHash(const FrozenBase& base, std::string_view expected,
                                  const std::filesystem::path& where) {
  return CheckBaseContentHash(BaseContentHash(base), base.format(), expected, where);
}

absl::Status CheckBaseContentHash(std::string_view actual, WeightFormat format,
                                  std::string_view expected, const std::filesystem::path& where) {
  if (actual == expected) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "the base at ", where.string(), " held as ", std::string(WeightFormatName(format)),
      " has content hash ", std::string(actual), ", not the federation's ", std::string(expected),
      ": provision the federation's base there (fedmoe-client model hash --model DIR shows a "
      "base's hash)"));
}

absl::Status SaveFrozenBase(const FrozenBase& base, const std::filesystem::path& directory) {
  std::error_code error;
  std::filesystem::create_directories(directory, error);
  if (error) {
    return absl::InternalError(
        absl::StrCat("cannot create ", directory.string(), ": ", error.message()));
  }
  const auto readable = std::filesystem::perms::owner_read | std::filesystem::perms::owner_write |
                        std::filesystem::perms::group_read | std::filesystem::perms::others_read;
  if (absl::Status status =
          storage::WriteFileAtomically(directory / "config.json", base.config().ToJson(), readable);
      !status.ok()) {
    return status;
  }
  const auto bytes_of = [](const void* data, int64_t count, size_t size) {
    return std::span<const std::byte>(static_cast<const std::byte*>(data),
                                      static_cast<size_t>(count) * size);
  };
  std::vector<std::string> scale_names;
  scale_names.reserve(base.layout().tensors().size());
  std::vector<RawTensorToWrite> tensors;
  for (const TensorSpec& spec : base.layout().tensors()) {
    if (!IsFrozenMatrix(spec.role)) {
      tensors.push_back({.name = spec.name,
                         .dtype = DType::kF32,
                         .shape = spec.shape,
                         .bytes = bytes_of(base.vector(spec.offset), spec.size, sizeof(float))});
      continue;
    }
    const FrozenWeight& weight = base.matrix(spec.offset);
    switch (weight.format) {
      case WeightFormat::kFloat32:
        tensors.push_back({.name = spec.name,
                           .dtype = DType::kF32,
                           .shape = spec.shape,
                           .bytes = bytes_of(weight.values, spec.size, sizeof(float))});
        break;
      case WeightFormat::kBfloat16:
        tensors.push_back({.name = spec.name,
                           .dtype = DType::kBF16,
                           .shape = spec.shape,
                           .bytes = bytes_of(weight.values, spec.size, sizeof(cpu::Bf16))});
        break;
      case WeightFormat::kInt8:
        tensors.push_back({.name = spec.name,
                           .dtype = DType::kI8,
                           .shape = spec.shape,
                           .bytes = bytes_of(weight.values, spec.size, 1)});
        tensors.push_back({.name = spec.name + std::string(kScaleSuffix),
                           .dtype = DType::kF32,
                           .shape = {weight.rows, weight.groups_per_row()},
                           .bytes = bytes_of(weight.scales, weight.rows * weight.groups_per_row(),
                                             sizeof(float))});
        break;
    }
  }
  std::map<std::string, std::string> metadata = {{"format", "pt"}};
  if (base.format() == WeightFormat::kInt8) {
    metadata[std::string(kFormatKey)] = "int8";
    metadata[std::string(kGroupKey)] = absl::StrCat(base.group_size());
  }
  // A stale index would shadow the new single file.
  std::filesystem::remove(directory / "model.safetensors.index.json", error);
  return WriteRawSafetensors(directory / "model.safetensors", tensors, metadata);
}

}  // namespace fedmoe::model
