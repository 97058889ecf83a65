#include "kernels/cpu/axpy.h"

#include <Eigen/Core>

#include "absl/strings/str_cat.h"

namespace fedmoe::kernels::cpu {

absl::Status Axpy(float alpha, std::span<const float> x, std::span<float> y) {
  if (x.size() != y.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("axpy: x has ", x.size(), " values but y has ", y.size()));
  }
  const auto n = static_cast<Eigen::Index>(x.size());
  Eigen::Map<Eigen::VectorXf> y_vec(y.data(), n);
  y_vec += alpha * Eigen::Map<const Eigen::VectorXf>(x.data(), n);
  return absl::OkStatus();
}

}  // namespace fedmoe::kernels::cpu
