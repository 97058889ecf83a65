// The shape of a LoRA branch, as both devices' kernels take it (kernels/cpu/lora.h,
// kernels/cuda/lora.h).
#ifndef FEDMOE_KERNELS_SHARED_LORA_SHAPE_H_
#define FEDMOE_KERNELS_SHARED_LORA_SHAPE_H_

#include <cstdint>

namespace fedmoe::kernels {

struct LoraShape {
  int64_t rows = 0;
  int64_t in_features = 0;
  int64_t out_features = 0;
  int64_t rank = 0;
  // α / rank.
  float scale = 1.0F;
};

}  // namespace fedmoe::kernels

#endif  // FEDMOE_KERNELS_SHARED_LORA_SHAPE_H_
