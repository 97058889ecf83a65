#include "model/matmul_precision.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/bf16.h"

namespace fedmoe::model {

namespace cpu = kernels::cpu;

absl::StatusOr<MatMulPrecision> ResolveMatMulPrecision(std::string_view name,
                                                       kernels::Device device) {
  if (name == "fp32") return MatMulPrecision::kFloat32;
  if (device == kernels::Device::kCuda && (name == "auto" || name == "bf16")) {
    return MatMulPrecision::kBfloat16;
  }
  if (name == "auto") {
    return cpu::HasNativeBf16MatMul() && cpu::CheckBf16MatMul().ok() ? MatMulPrecision::kBfloat16
                                                                     : MatMulPrecision::kFloat32;
  }
  if (name == "bf16") {
    if (absl::Status status = cpu::CheckBf16MatMul(); !status.ok()) return status;
    return MatMulPrecision::kBfloat16;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown matmul precision '", std::string(name), "' (auto, fp32, bf16)"));
}

std::string_view MatMulPrecisionName(MatMulPrecision precision) {
  return precision == MatMulPrecision::kBfloat16 ? "bf16" : "fp32";
}

}  // namespace fedmoe::model
