#include "kernels/cpu/bf16.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstdio>
#include <cstdlib>
#include <oneapi/dnnl/dnnl.hpp>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"

namespace fedmoe::kernels::cpu {
namespace {

using dnnl::memory;

constexpr memory::dim kAnySize = DNNL_RUNTIME_DIM_VAL;

// Row-major strides of a [rows, cols] matrix stored as `storage` says.
memory::dims StridesOf(Storage storage, memory::dim rows, memory::dim cols) {
  return storage == Storage::kRowMajor ? memory::dims{cols, 1} : memory::dims{1, rows};
}

// The oneDNN engine, the matmul primitives (one per storage pair and accumulation, their sizes
// left to run time) and, when oneDNN could not build one, why. oneDNN reports failures by
// throwing; they are caught here and kept as a status.
class MatMulPrimitives {
 public:
  static MatMulPrimitives& Get() {
    static auto* primitives = new MatMulPrimitives();
    return *primitives;
  }

  const absl::Status& status() const { return status_; }
  const dnnl::engine& engine() const { return *engine_; }
  const dnnl::matmul& For(Storage a, Storage b, bool accumulate) const {
    return *primitives_[IndexOf(a, b, accumulate)];
  }

 private:
  static size_t IndexOf(Storage a, Storage b, bool accumulate) {
    return (a == Storage::kTransposed ? 4 : 0) + (b == Storage::kTransposed ? 2 : 0) +
           (accumulate ? 1 : 0);
  }

  MatMulPrimitives() {
    try {
      engine_.emplace(dnnl::engine::kind::cpu, 0);
      for (const Storage a : {Storage::kRowMajor, Storage::kTransposed}) {
        for (const Storage b : {Storage::kRowMajor, Storage::kTransposed}) {
          for (const bool accumulate : {false, true}) {
            const memory::desc a_md({kAnySize, kAnySize}, memory::data_type::bf16,
                                    StridesOf(a, kAnySize, kAnySize));
            const memory::desc b_md({kAnySize, kAnySize}, memory::data_type::bf16,
                                    StridesOf(b, kAnySize, kAnySize));
            const memory::desc c_md({kAnySize, kAnySize}, memory::data_type::f32,
                                    StridesOf(Storage::kRowMajor, kAnySize, kAnySize));
            dnnl::primitive_attr attributes;
            if (accumulate) {
              dnnl::post_ops sum;
              sum.append_sum(1.0f);
              attributes.set_post_ops(sum);
            }
            const dnnl::matmul::primitive_desc description(dnnl::matmul::desc(a_md, b_md, c_md),
                                                           attributes, *engine_);
            primitives_[IndexOf(a, b, accumulate)].emplace(description);
          }
        }
      }
    } catch (const dnnl::error& error) {
      status_ = absl::UnimplementedError(
          absl::StrCat("oneDNN has no bf16 matrix product for this CPU: ", error.what()));
    }
  }

  absl::Status status_;
  std::optional<dnnl::engine> engine_;
  std::array<std::optional<dnnl::matmul>, 8> primitives_;
};

}  // namespace

bool HasNativeBf16MatMul() {
  const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
  return isa == dnnl::cpu_isa::avx512_core_bf16 || isa == dnnl::cpu_isa::avx512_core_amx;
}

absl::Status CheckBf16MatMul() { return MatMulPrimitives::Get().status(); }

void ToBf16(const float* src, Bf16* dst, int64_t n) {
  constexpr int64_t kBlock = 16384;
#pragma omp parallel for schedule(static) if (n > 4 * kBlock)
  for (int64_t first = 0; first < n; first += kBlock) {
    const int64_t end = std::min(n, first + kBlock);
#pragma omp simd
    for (int64_t i = first; i < end; ++i) {
      const auto bits = std::bit_cast<uint32_t>(src[i]);
      // Adding 0x7fff, plus the lowest kept bit, carries into the kept half exactly when the
      // dropped half is above one half, or is one half and the kept half is odd.
      const uint32_t rounded = (bits + 0x7fffU + ((bits >> 16) & 1U)) >> 16;
      // A NaN keeps its sign and high payload bits and is made quiet, so it cannot round to inf.
      const uint32_t quiet_nan = (bits >> 16) | 0x40U;
      dst[i] = static_cast<Bf16>((bits & 0x7fffffffU) > 0x7f800000U ? quiet_nan : rounded);
    }
  }
}

float FromBf16(Bf16 value) { return std::bit_cast<float>(static_cast<uint32_t>(value) << 16); }

void Bf16MatMul(const Bf16* a, Storage a_storage, const Bf16* b, Storage b_storage, float* c,
                int64_t m, int64_t n, int64_t k, bool accumulate) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    if (!accumulate) std::fill(c, c + m * n, 0.0f);
    return;
  }
  const MatMulPrimitives& primitives = MatMulPrimitives::Get();
  if (!primitives.status().ok()) {
    std::fprintf(stderr, "Bf16MatMul without CheckBf16MatMul: %s\n",
                 std::string(primitives.status().message()).c_str());
    std::abort();
  }
  try {
    // A stream per thread: experts multiply concurrently, one per OpenMP thread.
    thread_local dnnl::stream stream(primitives.engine());
    // oneDNN takes inputs through non-const handles; it does not write them.
    const memory a_memory({{m, k}, memory::data_type::bf16, StridesOf(a_storage, m, k)},
                          primitives.engine(), const_cast<Bf16*>(a));
    const memory b_memory({{k, n}, memory::data_type::bf16, StridesOf(b_storage, k, n)},
                          primitives.engine(), const_cast<Bf16*>(b));
    const memory c_memory({{m, n}, memory::data_type::f32, StridesOf(Storage::kRowMajor, m, n)},
                          primitives.engine(), c);
    primitives.For(a_storage, b_storage, accumulate)
        .execute(
            stream,
            {{DNNL_ARG_SRC, a_memory}, {DNNL_ARG_WEIGHTS, b_memory}, {DNNL_ARG_DST, c_memory}});
    stream.wait();
  } catch (const dnnl::error& error) {
    // Only malformed arguments get here, which are the caller's bug.
    std::fprintf(stderr, "Bf16MatMul %lldx%lldx%lld: %s\n", static_cast<long long>(m),
                 static_cast<long long>(n), static_cast<long long>(k), error.what());
    std::abort();
  }
}

}  // namespace fedmoe::kernels::cpu
