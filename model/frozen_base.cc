#include "model/frozen_base.h"

#include "absl/strings/str_cat.h"
#include "config/enum_names.h"

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

FrozenBase::FrozenBase(const MoeConfig& config, WeightFormat format)
    : config_(config), layout_(config), format_(format) {}

FrozenBase FrozenBase::FromParameters(const ModelParameters& parameters, WeightFormat format,
                                      int64_t group_size) {
  FrozenBase base(parameters.config(), format);
  for (const TensorSpec& spec : base.layout_.tensors()) {
    const std::span<const float> values = parameters.tensor(spec);
    if (!IsFrozenMatrix(spec.role)) {
      base.vectors_[spec.offset] =
          base.fp32_storage_.emplace_back(values.begin(), values.end()).data();
      continue;
    }
    if (base.matrices_.contains(spec.offset)) continue;  // tied output head
    const int64_t rows = spec.shape[0];
    const int64_t columns = spec.shape[1];
    switch (format) {
      case WeightFormat::kFloat32:
        base.matrices_[spec.offset] = FrozenWeight::Float32(
            base.fp32_storage_.emplace_back(values.begin(), values.end()).data(), rows, columns);
        break;
      case WeightFormat::kBfloat16: {
        cpu::AlignedBf16& rounded = base.bf16_storage_.emplace_back(values.size());
        cpu::ToBf16(values.data(), rounded.data(), static_cast<int64_t>(values.size()));
        base.matrices_[spec.offset] = FrozenWeight::Bfloat16(rounded.data(), rows, columns);
        break;
      }
      case WeightFormat::kInt8:
        base.matrices_[spec.offset] = FrozenWeight::Int8(
            base.int8_storage_.emplace_back(cpu::QuantizeInt8(values, rows, columns, group_size)));
        break;
    }
  }
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

}  // namespace fedmoe::model
