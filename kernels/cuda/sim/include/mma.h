// The simulator's warp matrix operations (nvcuda::wmma), for the one shape fedmoe's kernels use:
// m16n16k8 with TF32 operands and fp32 accumulators.
//
// CUDA leaves unspecified which lane holds which element of a fragment, and so does this: the
// elements are spread over the lanes by a scrambled map, so a kernel that assumed CUDA's
// actual layout would compute garbage here rather than pass by luck. What CUDA does specify is
// checked, as the GPU would fault or misbehave without it:
// - every lane of the warp takes part, with the same pointer and leading dimension;
// - pointers are 256-bit aligned, leading dimensions a multiple of 16 bytes;
// - a store is not seen by other lanes until the kernel synchronises the warp: a store writes
//   only after every lane has reached it, and a load reads before waiting for the others.
// The product rounds each TF32 operand by dropping its low 13 mantissa bits, as the tensor
// cores ignore them (kernels round first, with __float_to_tf32), and accumulates in double.
#ifndef FEDMOE_KERNELS_CUDA_SIM_MMA_H_
#define FEDMOE_KERNELS_CUDA_SIM_MMA_H_

// This header stands in for the CUDA toolkit's, so it declares CUDA's own names.
// NOLINTBEGIN(bugprone-reserved-identifier,readability-identifier-naming)

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cuda_runtime.h"

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}  // namespace precision

namespace sim {

// A fragment's matrix is kRows × kCols; lane `lane`'s element i sits at position
// (i·32 + lane)·kScramble mod kRows·kCols, row-major. kScramble is odd, so that is a bijection.
template <int kRows, int kCols, int kScramble>
struct Shape {
  static constexpr int rows = kRows;
  static constexpr int cols = kCols;
  static constexpr int elements = kRows * kCols / 32;
  static int Position(int lane, int i) { return ((i * 32 + lane) * kScramble) % (kRows * kCols); }
  static int Row(int lane, int i) { return Position(lane, i) / kCols; }
  static int Col(int lane, int i) { return Position(lane, i) % kCols; }
};
using ShapeA = Shape<16, 8, 37>;
using ShapeB = Shape<8, 16, 91>;
using ShapeC = Shape<16, 16, 53>;

template <typename S>
struct Storage {
  static constexpr int num_elements = S::elements;
  float x[S::elements];
};

inline float DropLowTf32Bits(float value) {
  uint32_t bits = 0;
  std::memcpy(&bits, &value, sizeof(bits));
  bits &= 0xFFFFE000U;
  std::memcpy(&value, &bits, sizeof(bits));
  return value;
}

// The warp's common pointer and leading dimension: every lane must pass the same, aligned ones.
inline void CheckOperand(const void* pointer, unsigned ldm) {
  struct Operand {
    const void* pointer;
    uint64_t ldm;
  };
  const Operand mine{pointer, ldm};
  Operand all[32];
  fedmoe::cuda_sim::GatherInWarp(&mine, sizeof(mine), all);
  for (const Operand& lane : all) {
    if (lane.pointer != pointer || lane.ldm != ldm) {
      fedmoe::cuda_sim::FailKernel("wmma: the warp's lanes passed different pointers or ldm");
    }
  }
  if (reinterpret_cast<uintptr_t>(pointer) % 32 != 0) {
    fedmoe::cuda_sim::FailKernel("wmma: a matrix pointer that is not 256-bit aligned");
  }
  if (ldm % 4 != 0) fedmoe::cuda_sim::FailKernel("wmma: ldm is not a multiple of 16 bytes");
}

template <typename S>
void Load(Storage<S>& fragment, const float* pointer, unsigned ldm, bool row_major) {
  const auto lane = static_cast<int>(fedmoe::cuda_sim::LaneOf());
  for (int i = 0; i < S::elements; ++i) {
    const int r = S::Row(lane, i);
    const int c = S::Col(lane, i);
    fragment.x[i] = row_major ? pointer[r * ldm + c] : pointer[c * ldm + r];
  }
  CheckOperand(pointer, ldm);
}

}  // namespace sim

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
class fragment;
template <typename Layout>
class fragment<matrix_a, 16, 16, 8, precision::tf32, Layout> : public sim::Storage<sim::ShapeA> {};
template <typename Layout>
class fragment<matrix_b, 16, 16, 8, precision::tf32, Layout> : public sim::Storage<sim::ShapeB> {};
template <>
class fragment<accumulator, 16, 16, 8, float, void> : public sim::Storage<sim::ShapeC> {};

inline float __float_to_tf32(float value) {
  // Round to nearest, ties away from zero (cvt.rna.tf32.f32), on the magnitude's bits.
  uint32_t bits = 0;
  std::memcpy(&bits, &value, sizeof(bits));
  if ((bits & 0x7F800000U) != 0x7F800000U) bits += 0x1000U;
  bits &= 0xFFFFE000U;
  std::memcpy(&value, &bits, sizeof(bits));
  return value;
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, float value) {
  for (float& element : f.x) element = value;
}

template <typename Layout>
void load_matrix_sync(fragment<matrix_a, 16, 16, 8, precision::tf32, Layout>& a,
                      const float* pointer, unsigned ldm) {
  sim::Load(a, pointer, ldm, std::is_same_v<Layout, row_major>);
}
template <typename Layout>
void load_matrix_sync(fragment<matrix_b, 16, 16, 8, precision::tf32, Layout>& b,
                      const float* pointer, unsigned ldm) {
  sim::Load(b, pointer, ldm, std::is_same_v<Layout, row_major>);
}
inline void store_matrix_sync(float* pointer, const fragment<accumulator, 16, 16, 8, float>& c,
                              unsigned ldm, layout_t layout) {
  sim::CheckOperand(pointer, ldm);
  const auto lane = static_cast<int>(fedmoe::cuda_sim::LaneOf());
  for (int i = 0; i < sim::ShapeC::elements; ++i) {
    const int r = sim::ShapeC::Row(lane, i);
    const int col = sim::ShapeC::Col(lane, i);
    pointer[layout == mem_row_major ? r * ldm + col : col * ldm + r] = c.x[i];
  }
}

// d = a·b + c (d may be c).
template <typename LayoutA, typename LayoutB>
void mma_sync(fragment<accumulator, 16, 16, 8, float>& d,
              const fragment<matrix_a, 16, 16, 8, precision::tf32, LayoutA>& a,
              const fragment<matrix_b, 16, 16, 8, precision::tf32, LayoutB>& b,
              const fragment<accumulator, 16, 16, 8, float>& c) {
  using sim::ShapeA;
  using sim::ShapeB;
  using sim::ShapeC;
  struct Operands {
    float a[ShapeA::elements];
    float b[ShapeB::elements];
  };
  Operands mine;
  std::memcpy(mine.a, a.x, sizeof(mine.a));
  std::memcpy(mine.b, b.x, sizeof(mine.b));
  Operands all[32];
  fedmoe::cuda_sim::GatherInWarp(&mine, sizeof(mine), all);
  float matrix_a_values[16][8];
  float matrix_b_values[8][16];
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < ShapeA::elements; ++i) {
      matrix_a_values[ShapeA::Row(lane, i)][ShapeA::Col(lane, i)] =
          sim::DropLowTf32Bits(all[lane].a[i]);
    }
    for (int i = 0; i < ShapeB::elements; ++i) {
      matrix_b_values[ShapeB::Row(lane, i)][ShapeB::Col(lane, i)] =
          sim::DropLowTf32Bits(all[lane].b[i]);
    }
  }
  const auto lane = static_cast<int>(fedmoe::cuda_sim::LaneOf());
  float result[ShapeC::elements];
  for (int i = 0; i < ShapeC::elements; ++i) {
    const int r = ShapeC::Row(lane, i);
    const int col = ShapeC::Col(lane, i);
    double sum = c.x[i];
    for (int k = 0; k < 8; ++k) {
      sum += static_cast<double>(matrix_a_values[r][k]) * matrix_b_values[k][col];
    }
    result[i] = static_cast<float>(sum);
  }
  std::memcpy(d.x, result, sizeof(result));
}

}  // namespace nvcuda::wmma

// NOLINTEND(bugprone-reserved-identifier,readability-identifier-naming)

#endif  // FEDMOE_KERNELS_CUDA_SIM_MMA_H_
