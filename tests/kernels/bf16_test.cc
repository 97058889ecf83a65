// bf16 rounding against the definition (nearest, ties to even), the bf16 matrix product against
// a double-precision product of the same rounded operands, and the bf16 expert MLP against the
// fp32 one. The products skip themselves where oneDNN has no bf16 matmul for the CPU.
#include "kernels/cpu/bf16.h"

#include <bit>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/dense.h"
#include "tests/kernels/gradient_check.h"

namespace fedmoe::kernels::cpu {
namespace {

using testing::RandomVector;
using testing::RelativeDifference;

Bf16 Round(float value) {
  Bf16 out = 0;
  ToBf16(&value, &out, 1);
  return out;
}

TEST(Bf16Test, RoundsToTheNearestBf16AndTiesToEven) {
  // Near 1 the bf16 spacing is 2^-7.
  EXPECT_EQ(Round(1.0f), 0x3f80);
  EXPECT_EQ(Round(1.0f + 0x1.0p-8f), 0x3f80) << "a tie goes to the even 1.0";
  EXPECT_EQ(Round(1.0f + 3 * 0x1.0p-8f), 0x3f82) << "a tie goes to the even 1 + 2^-6";
  EXPECT_EQ(Round(1.0f + 0x1.0p-8f + 0x1.0p-20f), 0x3f81) << "just above a tie goes up";
  EXPECT_EQ(Round(-2.5f), 0xc020);
  EXPECT_EQ(Round(std::numeric_limits<float>::max()), 0x7f80) << "overflows to +inf";
  EXPECT_EQ(Round(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_TRUE(std::isnan(FromBf16(Round(std::numeric_limits<float>::quiet_NaN()))));
  // A NaN whose payload lives only in the dropped bits must not become infinity.
  EXPECT_TRUE(std::isnan(FromBf16(Round(std::bit_cast<float>(0x7f800001U)))));

  // Random floats of every magnitude, subnormals included, against the two bf16 values that
  // bracket each.
  std::mt19937 generator(17);
  std::vector<float> values(1 << 16);
  for (float& v : values) {
    do {
      v = std::bit_cast<float>(static_cast<uint32_t>(generator()));
    } while (!std::isfinite(v));
  }
  std::vector<Bf16> rounded(values.size());
  ToBf16(values.data(), rounded.data(), static_cast<int64_t>(values.size()));
  for (size_t i = 0; i < values.size(); ++i) {
    const auto bits = std::bit_cast<uint32_t>(values[i]);
    const auto toward_zero = static_cast<Bf16>(bits >> 16);
    const auto away = static_cast<Bf16>(toward_zero + 1);
    const double x = values[i];
    const double low_error = std::abs(x - FromBf16(toward_zero));
    // Past the largest finite bf16 the value away from zero is infinity.
    const double high_error = std::isinf(FromBf16(away))
                                  ? std::abs(x)
                                  : std::abs(static_cast<double>(FromBf16(away)) - x);
    Bf16 expected = low_error < high_error ? toward_zero : away;
    if (low_error == high_error) expected = (toward_zero & 1) == 0 ? toward_zero : away;
    ASSERT_EQ(rounded[i], expected) << "value " << values[i] << " (bits " << bits << ")";
  }
}

std::vector<Bf16> RandomBf16(int64_t n, uint32_t seed) {
  const std::vector<float> values = RandomVector(n, seed);
  std::vector<Bf16> out(values.size());
  ToBf16(values.data(), out.data(), n);
  return out;
}

// Element (row, col) of a [rows, cols] operand stored as `storage`.
double At(const std::vector<Bf16>& m, Storage storage, int64_t rows, int64_t cols, int64_t row,
          int64_t col) {
  return FromBf16(storage == Storage::kRowMajor ? m[static_cast<size_t>(row * cols + col)]
                                                : m[static_cast<size_t>(col * rows + row)]);
}

struct Shape {
  int64_t m, n, k;
};

TEST(Bf16Test, MatMulMatchesADoublePrecisionProduct) {
  if (absl::Status status = CheckBf16MatMul(); !status.ok()) GTEST_SKIP() << status.message();
  uint32_t seed = 100;
  for (const Shape shape : {Shape{1, 1, 1}, Shape{37, 53, 29}, Shape{130, 64, 301}}) {
    for (const Storage a_storage : {Storage::kRowMajor, Storage::kTransposed}) {
      for (const Storage b_storage : {Storage::kRowMajor, Storage::kTransposed}) {
        for (const bool accumulate : {false, true}) {
          const auto [m, n, k] = shape;
          const std::vector<Bf16> a = RandomBf16(m * k, ++seed);
          const std::vector<Bf16> b = RandomBf16(k * n, ++seed);
          const std::vector<float> start = RandomVector(m * n, ++seed);
          std::vector<float> c = start;
          Bf16MatMul(a.data(), a_storage, b.data(), b_storage, c.data(), m, n, k, accumulate);
          for (int64_t i = 0; i < m; ++i) {
            for (int64_t j = 0; j < n; ++j) {
              double exact = accumulate ? start[static_cast<size_t>(i * n + j)] : 0.0;
              double magnitude = std::abs(exact);
              for (int64_t l = 0; l < k; ++l) {
                const double term = At(a, a_storage, m, k, i, l) * At(b, b_storage, k, n, l, j);
                exact += term;
                magnitude += std::abs(term);
              }
              // Products of bf16 values are exact in fp32; only the fp32 sum rounds.
              const double bound = static_cast<double>(k + 1) * 0x1.0p-23 * magnitude + 1e-30;
              ASSERT_NEAR(c[static_cast<size_t>(i * n + j)], exact, bound)
                  << m << "x" << n << "x" << k << " a " << static_cast<int>(a_storage) << " b "
                  << static_cast<int>(b_storage) << " accumulate " << accumulate << " at (" << i
                  << ", " << j << ")";
            }
          }
        }
      }
    }
  }
}

std::vector<float> Widened(const std::vector<Bf16>& values) {
  std::vector<float> out;
  out.reserve(values.size());
  for (const Bf16 v : values) out.push_back(FromBf16(v));
  return out;
}

// The bf16 MLP against the fp32 one on the same bf16-representable inputs and weights: they
// differ only where the bf16 path rounds an intermediate (act, d_out, d_gate, d_up) to 8 bits,
// so each result is within a few 2^-9 of the fp32 one in relative L2 norm. A misread operand
// (a transposition, an offset) would be off by order 1.
TEST(Bf16Test, SwiGluMlpMatchesTheFp32KernelToBf16Precision) {
  if (absl::Status status = CheckBf16MatMul(); !status.ok()) GTEST_SKIP() << status.message();
  const int64_t rows = 45, width = 24, inner = 40;
  const std::vector<Bf16> in = RandomBf16(rows * width, 1);
  const std::vector<Bf16> w1 = RandomBf16(inner * width, 2);
  const std::vector<Bf16> w3 = RandomBf16(inner * width, 3);
  const std::vector<Bf16> w2 = RandomBf16(width * inner, 4);
  const std::vector<Bf16> d_out = RandomBf16(rows * width, 5);

  std::vector<float> gate(rows * inner), up(rows * inner), act(rows * inner), out(rows * width);
  SwiGluMlpForward(Widened(in).data(), Widened(w1).data(), Widened(w3).data(), Widened(w2).data(),
                   gate.data(), up.data(), act.data(), out.data(), rows, width, inner);
  std::vector<float> d_in(rows * width, 0.0f), d_w1(inner * width, 0.0f), d_w3(inner * width, 0.0f),
      d_w2(width * inner, 0.0f), d_gate(rows * inner), d_up(rows * inner), d_act(rows * inner);
  SwiGluMlpBackward(Widened(in).data(), Widened(w1).data(), Widened(w3).data(), Widened(w2).data(),
                    gate.data(), up.data(), act.data(), Widened(d_out).data(), d_in.data(),
                    d_w1.data(), d_w3.data(), d_w2.data(), d_gate.data(), d_up.data(), d_act.data(),
                    rows, width, inner);

  std::vector<float> gate_b(rows * inner), up_b(rows * inner), out_b(rows * width);
  std::vector<Bf16> act_b(rows * inner);
  SwiGluMlpForwardBf16(in.data(), w1.data(), w3.data(), w2.data(), gate_b.data(), up_b.data(),
                       act_b.data(), out_b.data(), rows, width, inner);
  // Gradients add into what is there, as in fp32.
  std::vector<float> d_in_b(rows * width, 1.0f), d_w1_b(inner * width, 1.0f),
      d_w3_b(inner * width, 1.0f), d_w2_b(width * inner, 1.0f), d_act_b(rows * inner);
  std::vector<Bf16> d_gate_b(rows * inner), d_up_b(rows * inner);
  SwiGluMlpBackwardBf16(in.data(), w1.data(), w3.data(), w2.data(), gate_b.data(), up_b.data(),
                        act_b.data(), d_out.data(), d_in_b.data(), d_w1_b.data(), d_w3_b.data(),
                        d_w2_b.data(), d_act_b.data(), d_gate_b.data(), d_up_b.data(), rows, width,
                        inner);
  for (std::vector<float>* added : {&d_in_b, &d_w1_b, &d_w3_b, &d_w2_b}) {
    for (float& v : *added) v -= 1.0f;
  }

  // gate and up come from exact bf16 inputs: only the fp32 sums differ.
  EXPECT_LT(RelativeDifference(gate_b, gate), 1e-6);
  EXPECT_LT(RelativeDifference(up_b, up), 1e-6);
  constexpr double kBound = 4 * 0x1.0p-9;
  EXPECT_LT(RelativeDifference(Widened(act_b), act), kBound);
  EXPECT_LT(RelativeDifference(out_b, out), kBound);
  EXPECT_LT(RelativeDifference(d_act_b, d_act), 1e-6) << "d_out and w2 are exact in bf16";
  EXPECT_LT(RelativeDifference(Widened(d_gate_b), d_gate), kBound);
  EXPECT_LT(RelativeDifference(Widened(d_up_b), d_up), kBound);
  EXPECT_LT(RelativeDifference(d_in_b, d_in), kBound);
  EXPECT_LT(RelativeDifference(d_w1_b, d_w1), kBound);
  EXPECT_LT(RelativeDifference(d_w3_b, d_w3), kBound);
  EXPECT_LT(RelativeDifference(d_w2_b, d_w2), kBound);
}

}  // namespace
}  // namespace fedmoe::kernels::cpu
