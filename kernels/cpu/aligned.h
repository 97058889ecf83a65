// Buffers whose start is aligned to 64 bytes (one cache line, one AVX-512 register).
//
// Eigen's vectorised reductions (sums, norms, dot products) peel scalar elements until they reach
// an aligned address, so their summation order, and hence their last bits, depend on where a
// buffer happens to start. Activations, gradients and parameters live in these buffers so the
// same computation gives the same bits from run to run, which a reproducible training run needs.
#ifndef FEDMOE_KERNELS_CPU_ALIGNED_H_
#define FEDMOE_KERNELS_CPU_ALIGNED_H_

#include <cstddef>
#include <new>
#include <vector>

namespace fedmoe::kernels::cpu {

inline constexpr std::size_t kBufferAlignment = 64;

template <typename T>
struct AlignedAllocator {
  using value_type = T;
  AlignedAllocator() = default;
  template <typename U>
  explicit AlignedAllocator(const AlignedAllocator<U>& /*other*/) {}

  T* allocate(std::size_t n) {
    return static_cast<T*>(::operator new (n * sizeof(T), std::align_val_t{kBufferAlignment}));
  }
  void deallocate(T* pointer, std::size_t /*n*/) {
    ::operator delete (pointer, std::align_val_t{kBufferAlignment});
  }
  template <typename U>
  bool operator==(const AlignedAllocator<U>& /*other*/) const {
    return true;
  }
};

using AlignedFloats = std::vector<float, AlignedAllocator<float>>;

}  // namespace fedmoe::kernels::cpu

#endif  // FEDMOE_KERNELS_CPU_ALIGNED_H_
