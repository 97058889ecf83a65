// A frozen linear weight held compactly (issue [peft]): a view of one [out_features, in_features]
// weight in fp32, bf16 or weight-only INT8, in host or device memory, and the decoding of one
// value, which the CPU's tiles and the GPU's decode kernel share. The memory behind a view
// belongs to someone else (a memory-mapped safetensors file, the owner's buffers, a device
// array).
#ifndef FEDMOE_KERNELS_SHARED_FROZEN_WEIGHT_H_
#define FEDMOE_KERNELS_SHARED_FROZEN_WEIGHT_H_

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/shared/host_device.h"

namespace fedmoe::kernels {

enum class WeightFormat { kFloat32, kBfloat16, kInt8 };

struct FrozenWeight {
  WeightFormat format = WeightFormat::kFloat32;
  int64_t rows = 0;
  int64_t columns = 0;
  // INT8 only: columns per scale, and the scales [rows, groups_per_row()].
  int64_t group_size = 0;
  const void* values = nullptr;
  const float* scales = nullptr;
  // INT8 only: forward products quantize their input too, per row and group of group_size
  // columns (QuantizeActivation below), and multiply in integers: dynamic activation quantization
  // for inference, where the int8 products are what decoding is bound by. The gradient products
  // ignore it. FrozenBase::QuantizeActivations sets it on a whole base.
  bool int8_activations = false;

  static FrozenWeight Float32(const float* values, int64_t rows, int64_t columns) {
    return {WeightFormat::kFloat32, rows, columns, 0, values, nullptr};
  }
  // bf16 as its bits: the top half of an IEEE float.
  static FrozenWeight Bfloat16(const uint16_t* values, int64_t rows, int64_t columns) {
    return {WeightFormat::kBfloat16, rows, columns, 0, values, nullptr};
  }
  static FrozenWeight Int8(const int8_t* values, const float* scales, int64_t rows, int64_t columns,
                           int64_t group_size) {
    return {WeightFormat::kInt8, rows, columns, group_size, values, scales};
  }
  // A view of an owning INT8 matrix (kernels/cpu/int8.h's Int8Matrix, or any type with its
  // fields), so that this header needs neither device's.
  template <typename Matrix>
  static FrozenWeight Int8(const Matrix& matrix) {
    return Int8(matrix.values.data(), matrix.scales.data(), matrix.rows, matrix.columns,
                matrix.group_size);
  }

  FEDMOE_HOST_DEVICE int64_t groups_per_row() const {
    return (columns + group_size - 1) / group_size;
  }
  // The bytes of the values and scales behind the view.
  int64_t bytes() const {
    switch (format) {
      case WeightFormat::kFloat32:
        return rows * columns * static_cast<int64_t>(sizeof(float));
      case WeightFormat::kBfloat16:
        return rows * columns * static_cast<int64_t>(sizeof(uint16_t));
      case WeightFormat::kInt8:
        return rows * columns + rows * groups_per_row() * static_cast<int64_t>(sizeof(float));
    }
    return 0;
  }
};

// The weight's value at [row, column] as fp32: the value itself, the bf16 bits widened, or
// scale[row, column / group] · q[row, column].
FEDMOE_HOST_DEVICE inline float DecodeValue(const FrozenWeight& weight, int64_t row,
                                            int64_t column) {
  const int64_t index = row * weight.columns + column;
  switch (weight.format) {
    case WeightFormat::kFloat32:
      return static_cast<const float*>(weight.values)[index];
    case WeightFormat::kBfloat16: {
      const uint32_t bits =
          static_cast<uint32_t>(static_cast<const uint16_t*>(weight.values)[index]) << 16;
      float value;
      memcpy(&value, &bits, sizeof(value));
      return value;
    }
    case WeightFormat::kInt8:
      return weight.scales[row * weight.groups_per_row() + column / weight.group_size] *
             static_cast<float>(static_cast<const int8_t*>(weight.values)[index]);
  }
  return 0.0F;
}

// Dynamic activation quantization's rounding, shared so that the CPU and the GPU round alike:
// a group of an input row whose largest magnitude is `largest` has scale largest / 127 and
// values round-half-even(value · (127 / largest)) in [−127, 127] (−128 never occurs, which the
// CPU's sign trick needs); a group of zeros has scale 0 and zeros. `inverse` is 127 / largest,
// or 0 for a group of zeros.
FEDMOE_HOST_DEVICE inline float ActivationInverseScale(float largest) {
  return largest > 0.0F ? 127.0F / largest : 0.0F;
}
FEDMOE_HOST_DEVICE inline float ActivationScale(float largest) { return largest / 127.0F; }
FEDMOE_HOST_DEVICE inline int8_t QuantizeActivation(float value, float inverse) {
  const float level = rintf(value * inverse);
  return static_cast<int8_t>(level > 127.0F ? 127.0F : level < -127.0F ? -127.0F : level);
}

}  // namespace fedmoe::kernels

#endif  // FEDMOE_KERNELS_SHARED_FROZEN_WEIGHT_H_
