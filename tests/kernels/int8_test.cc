// Weight-only INT8 against its definition: every value within half a step of the weight, the
// scales as the formula gives them, and per-group scales against per-row ones on a heavy-tailed
// weight. The products on INT8 weights are checked with the other formats' in
// backend_ops_test.cc, on both devices.
#include "kernels/cpu/int8.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "tests/kernels/gradient_check.h"

namespace fedmoe::kernels::cpu {
namespace {

using testing::RandomVector;

// Gaussian weights with one outlier 40σ out in each row, as trained LLM weights have.
std::vector<float> HeavyTailed(int64_t rows, int64_t columns, uint32_t seed) {
  std::mt19937 generator(seed);
  std::normal_distribution<float> normal(0.0F, 0.02F);
  std::vector<float> weights(static_cast<size_t>(rows * columns));
  for (float& w : weights) w = normal(generator);
  for (int64_t row = 0; row < rows; ++row) weights[row * columns + (row * 7) % columns] = 0.8F;
  return weights;
}

TEST(Int8Test, EveryValueIsWithinHalfAStepAndZerosStayZero) {
  constexpr int64_t kRows = 9, kColumns = 300;
  std::vector<float> weights = RandomVector(kRows * kColumns, 1);
  for (int64_t c = 0; c < kColumns; ++c) weights[3 * kColumns + c] = 0.0F;  // an all-zero row
  for (const int64_t group : {int64_t{0}, int64_t{128}, int64_t{7}}) {
    const Int8Matrix matrix = QuantizeInt8(weights, kRows, kColumns, group);
    const int64_t group_size = group == 0 ? kColumns : group;
    ASSERT_EQ(matrix.group_size, group_size);
    ASSERT_EQ(matrix.groups_per_row(), (kColumns + group_size - 1) / group_size);
    EXPECT_EQ(matrix.bytes(), kRows * kColumns + kRows * matrix.groups_per_row() *
                                                     static_cast<int64_t>(sizeof(float)));
    std::vector<float> restored(weights.size());
    DequantizeInt8(matrix, restored);
    for (int64_t row = 0; row < kRows; ++row) {
      for (int64_t c = 0; c < kColumns; ++c) {
        const int64_t g = c / group_size;
        float largest = 0;
        for (int64_t k = g * group_size; k < std::min((g + 1) * group_size, kColumns); ++k) {
          largest = std::max(largest, std::abs(weights[row * kColumns + k]));
        }
        const float scale = matrix.scales[row * matrix.groups_per_row() + g];
        ASSERT_FLOAT_EQ(scale, largest / 127.0F) << row << "," << c;
        const int8_t q = matrix.values[row * kColumns + c];
        ASSERT_GE(q, -127);
        ASSERT_LE(std::abs(restored[row * kColumns + c] - weights[row * kColumns + c]),
                  0.5F * scale * (1 + 1e-5F))
            << "group " << group_size << " at " << row << "," << c;
      }
    }
    for (int64_t c = 0; c < kColumns; ++c) EXPECT_EQ(restored[3 * kColumns + c], 0.0F);
  }
}

TEST(Int8Test, GroupsOf128KeepMoreOfAHeavyTailedWeightThanOneScalePerRow) {
  constexpr int64_t kRows = 64, kColumns = 1024;
  const std::vector<float> weights = HeavyTailed(kRows, kColumns, 2);
  const double per_row = RelativeSquaredError(weights, QuantizeInt8(weights, kRows, kColumns, 0));
  const double per_group =
      RelativeSquaredError(weights, QuantizeInt8(weights, kRows, kColumns, 128));
  // One outlier sets its row's step at 40σ/127, about σ/3, so every weight of the row rounds that
  // coarsely; with groups it coarsens one group of eight. Measured: 3.2e-3 against 4.1e-4.
  EXPECT_LT(per_group, per_row / 4);
  EXPECT_LT(per_group, 1e-3);
  // Gaussian weights without outliers: rounding noise of a step about 4σ/127, some 1e-4 of the
  // weight's energy.
  const std::vector<float> gaussian = RandomVector(kRows * kColumns, 3);
  EXPECT_LT(RelativeSquaredError(gaussian, QuantizeInt8(gaussian, kRows, kColumns, 0)), 3e-4);
  EXPECT_EQ(RelativeSquaredError(std::vector<float>(16, 0.0F),
                                 QuantizeInt8(std::vector<float>(16, 0.0F), 4, 4, 0)),
            0.0);
}

}  // namespace
}  // namespace fedmoe::kernels::cpu
