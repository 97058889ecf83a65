#include "kernels/cpu/embedding.h"

#include <cstring>

namespace fedmoe::kernels::cpu {

void EmbeddingForward(const int32_t* tokens, const float* table, float* out, int64_t rows,
                      int64_t width) {
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    std::memcpy(out + row * width, table + static_cast<int64_t>(tokens[row]) * width,
                static_cast<size_t>(width) * sizeof(float));
  }
}

void EmbeddingBackward(const int32_t* tokens, const float* d_out, float* d_table, int64_t rows,
                       int64_t width) {
  for (int64_t row = 0; row < rows; ++row) {
    float* destination = d_table + static_cast<int64_t>(tokens[row]) * width;
    const float* source = d_out + row * width;
    for (int64_t i = 0; i < width; ++i) destination[i] += source[i];
  }
}

}  // namespace fedmoe::kernels::cpu
