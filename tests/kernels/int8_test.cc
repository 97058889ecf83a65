// Weight-only INT8 against its definition (every value within half a step of the weight, the
// scales as the formula gives them), and the frozen-weight products in fp32, bf16 and INT8 equal
// to plain double loops over the decoded weight, on sizes that leave a partial tile and a
// partial group.
#include "kernels/cpu/int8.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/cpu/frozen_linear.h"
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

// Each format's products against plain double loops over the weight as that format decodes it
// (for INT8 and bf16, the rounded weight; for fp32, the weight itself).
TEST(FrozenLinearTest, ProductsInEveryFormatEqualPlainLoopsOverTheDecodedWeight) {
  // 150 output rows: two whole tiles and a partial one; 70 input columns: a partial group.
  constexpr int64_t kRows = 5, kIn = 70, kOut = 150;
  const std::vector<float> weights = RandomVector(kOut * kIn, 4);
  const Int8Matrix matrix = QuantizeInt8(weights, kOut, kIn, 32);
  AlignedBf16 rounded(weights.size());
  ToBf16(weights.data(), rounded.data(), static_cast<int64_t>(weights.size()));
  const std::vector<float> in = RandomVector(kRows * kIn, 5);
  const std::vector<float> d_out = RandomVector(kRows * kOut, 6);
  for (const FrozenWeight& weight :
       {FrozenWeight::Float32(weights.data(), kOut, kIn),
        FrozenWeight::Bfloat16(rounded.data(), kOut, kIn), FrozenWeight::Int8(matrix)}) {
    const int format = static_cast<int>(weight.format);
    std::vector<float> decoded(weights.size());
    DecodeRows(weight, 0, kOut, decoded.data());
    for (size_t i = 0; i < weights.size(); ++i) {
      // Decoding is within the format's rounding of the weight: bf16 keeps 8 significant bits.
      const float bound = weight.format == WeightFormat::kFloat32 ? 0.0F
                          : weight.format == WeightFormat::kBfloat16
                              ? std::abs(weights[i]) / 256.0F
                              : 0.5F * matrix.scales[(i / kIn) * 3 + (i % kIn) / 32] * 1.0001F;
      ASSERT_LE(std::abs(decoded[i] - weights[i]), bound) << format << " at " << i;
    }
    std::vector<float> out(kRows * kOut, 9.0F);
    std::vector<float> d_in(kRows * kIn, 0.25F);
    FrozenLinearForward(in.data(), weight, out.data(), kRows);
    FrozenLinearBackwardInput(d_out.data(), weight, d_in.data(), kRows);
    for (int64_t r = 0; r < kRows; ++r) {
      for (int64_t o = 0; o < kOut; ++o) {
        double expected = 0;
        for (int64_t i = 0; i < kIn; ++i)
          expected += double{in[r * kIn + i]} * decoded[o * kIn + i];
        ASSERT_NEAR(out[r * kOut + o], expected, 1e-5 + 1e-5 * std::abs(expected))
            << format << " " << r << "," << o;
      }
      for (int64_t i = 0; i < kIn; ++i) {
        double expected = 0.25;  // d_in is added into
        for (int64_t o = 0; o < kOut; ++o) {
          expected += double{d_out[r * kOut + o]} * decoded[o * kIn + i];
        }
        ASSERT_NEAR(d_in[r * kIn + i], expected, 1e-5 + 1e-5 * std::abs(expected))
            << format << " " << r << "," << i;
      }
    }
  }
  EXPECT_EQ(FrozenWeight::Int8(matrix).bytes(), matrix.bytes());
  EXPECT_EQ(FrozenWeight::Bfloat16(rounded.data(), kOut, kIn).bytes(), kOut * kIn * 2);
}

}  // namespace
}  // namespace fedmoe::kernels::cpu
