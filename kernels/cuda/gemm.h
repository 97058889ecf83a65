// Matrix products on the GPU through cuBLAS, in the row-major terms of the CPU kernels
// (kernels/cpu/bf16.h's Bf16MatMul): c[m, n] = a[m, k] · b[k, n], or c += that, with each
// operand stored as itself or as its transpose, in fp32 or bf16, accumulated and returned in
// fp32. The grouped form runs every expert's product of a layer in one cuBLAS call.
#ifndef FEDMOE_KERNELS_CUDA_GEMM_H_
#define FEDMOE_KERNELS_CUDA_GEMM_H_

#include <cstdint>
#include <memory>
#include <span>

#include "absl/status/statusor.h"

namespace fedmoe::kernels::cuda {

enum class ElementType { kFloat32, kBfloat16 };

struct MatrixOperand {
  const void* data = nullptr;
  ElementType type = ElementType::kFloat32;
  // Stored as its transpose: a [k, m] array for a, [n, k] for b (a linear layer's weight).
  bool transposed = false;
};

// One product of a group: its own operands and sizes; the types and storage come from the
// group's first problem.
struct GemmProblem {
  MatrixOperand a;
  MatrixOperand b;
  float* c = nullptr;
  int64_t m = 0;
  int64_t n = 0;
  int64_t k = 0;
};

// How GroupedMatMul runs a group of products.
enum class GroupedProducts {
  // One cublasGemmGroupedBatchedEx call, or one cublasGemmEx per product where this cuBLAS has
  // no grouped product for the types.
  kGroupedCall,
  // One cublasGemmEx per product, spread over kProductLanes streams that run side by side, then
  // joined back into the default stream. cuBLAS's grouped kernels use warp-level MMA, not
  // Hopper's warpgroup MMA, while one expert's product alone (some 768 rows in `medium`) covers
  // only about half an H200's SMs; side by side, several fill it. Which is faster is for a GPU
  // to say (bench/train_step --expert-products).
  kConcurrentStreams,
};

inline constexpr int kProductLanes = 4;

// A cuBLAS handle and the device scratch for grouped pointer arrays. One per thread that
// queues work.
class Blas {
 public:
  static absl::StatusOr<Blas> Create(GroupedProducts grouped = GroupedProducts::kGroupedCall);
  Blas(Blas&&) noexcept;
  Blas& operator=(Blas&&) noexcept;
  ~Blas();

  absl::Status MatMul(const GemmProblem& problem, bool accumulate);
  // Every problem, as the handle's GroupedProducts says. All share a, b's types and storage.
  // Problems with m or n of 0 are skipped; k of 0 zeroes c unless accumulating. Ordered with
  // the default stream's work before and after it, whichever way it runs.
  absl::Status GroupedMatMul(std::span<const GemmProblem> problems, bool accumulate);

 private:
  struct State;
  explicit Blas(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace fedmoe::kernels::cuda

#endif  // FEDMOE_KERNELS_CUDA_GEMM_H_
