// Eigen views over the kernels' row-major float buffers. Internal to kernels/cpu.
#ifndef FEDMOE_KERNELS_CPU_EIGEN_MAPS_H_
#define FEDMOE_KERNELS_CPU_EIGEN_MAPS_H_

#include <Eigen/Core>
#include <cstdint>

namespace fedmoe::kernels::cpu::internal {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatrixMap = Eigen::Map<RowMatrix>;
using ConstMatrixMap = Eigen::Map<const RowMatrix>;
// A block of columns inside wider rows, such as one head of [tokens, heads·head_dim].
using StridedMap = Eigen::Map<RowMatrix, Eigen::Unaligned, Eigen::OuterStride<>>;
using ConstStridedMap = Eigen::Map<const RowMatrix, Eigen::Unaligned, Eigen::OuterStride<>>;

inline ConstMatrixMap View(const float* data, int64_t rows, int64_t cols) {
  return {data, static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols)};
}
inline MatrixMap View(float* data, int64_t rows, int64_t cols) {
  return {data, static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols)};
}

}  // namespace fedmoe::kernels::cpu::internal

#endif  // FEDMOE_KERNELS_CPU_EIGEN_MAPS_H_
