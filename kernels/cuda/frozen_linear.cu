#include <cuda_runtime.h>

#include "kernels/cuda/frozen_linear.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/reduce.cuh"

namespace fedmoe::kernels::cuda {
namespace {

__global__ void DecodeFrozenWeightKernel(FrozenWeight weight, float* __restrict__ out) {
  const int64_t n = weight.rows * weight.columns;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    out[i] = DecodeValue(weight, i / weight.columns, i % weight.columns);
  }
}

constexpr int kWarpsPerBlock = 8;

// out = in · ŵᵀ with int8 activations (FrozenWeight::int8_activations), the CPU's arithmetic:
// block (row, outputs) first quantizes its input row into shared memory, a warp per group at a
// time (QuantizeActivation, as the CPU rounds), then each warp takes one output row. A group's
// products are summed in integers (dp4a, four bytes at once, where columns and the group size
// are multiples of 4) and scaled once into fp32. Shared memory: the row's int8 values, then its
// scales.
__global__ void Int8ActivationForwardKernel(const float* __restrict__ in, FrozenWeight weight,
                                            float* __restrict__ out) {
  const int64_t row = blockIdx.x;
  const int64_t columns = weight.columns;
  const int64_t groups = weight.groups_per_row();
  const int64_t group_size = weight.group_size;
  auto* shared = DynamicSharedMemory<unsigned char>();
  auto* x_scales = reinterpret_cast<float*>(shared);
  auto* x = reinterpret_cast<int8_t*>(shared + groups * sizeof(float));
  const unsigned lane = threadIdx.x % 32;
  const unsigned warp = threadIdx.x / 32;
  const float* input = in + row * columns;
  for (int64_t g = warp; g < groups; g += kWarpsPerBlock) {
    const int64_t begin = g * group_size;
    const int64_t end = begin + group_size < columns ? begin + group_size : columns;
    float largest = 0.0F;
    for (int64_t c = begin + lane; c < end; c += 32) largest = fmaxf(largest, fabsf(input[c]));
    largest = WarpMax(largest);
    const float inverse = ActivationInverseScale(largest);
    if (lane == 0) x_scales[g] = ActivationScale(largest);
    for (int64_t c = begin + lane; c < end; c += 32) x[c] = QuantizeActivation(input[c], inverse);
  }
  __syncthreads();
  const int64_t o = static_cast<int64_t>(blockIdx.y) * kWarpsPerBlock + warp;
  if (o >= weight.rows) return;
  const auto* w = static_cast<const int8_t*>(weight.values) + o * columns;
  const float* w_scales = weight.scales + o * groups;
  float total = 0.0F;
  if (columns % 4 == 0 && group_size % 4 == 0) {
    const auto* w4 = reinterpret_cast<const int*>(w);
    const auto* x4 = reinterpret_cast<const int*>(x);
    for (int64_t k = lane; k < columns / 4; k += 32) {
      const int64_t g = 4 * k / group_size;
      total += w_scales[g] * x_scales[g] * static_cast<float>(__dp4a(w4[k], x4[k], 0));
    }
  } else {
    for (int64_t c = lane; c < columns; c += 32) {
      const int64_t g = c / group_size;
      total += w_scales[g] * x_scales[g] * static_cast<float>(int{w[c]} * int{x[c]});
    }
  }
  total = WarpSum(total);
  if (lane == 0) out[row * weight.rows + o] = total;
}

absl::Status Int8ActivationForward(const float* in, const FrozenWeight& weight, float* out,
                                   int64_t rows) {
  if (rows == 0 || weight.rows == 0) return absl::OkStatus();
  const int64_t output_blocks = (weight.rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  // Shared memory: the scales first (4-byte aligned), then the values (4-byte aligned, since the
  // scales take a multiple of 4 bytes), as the kernel reads them.
  const auto shared_bytes =
      static_cast<size_t>(weight.groups_per_row() * sizeof(float) + ((weight.columns + 3) / 4) * 4);
  return Launch("int8_activation_linear", Int8ActivationForwardKernel,
                {.grid = dim3(static_cast<unsigned>(rows), static_cast<unsigned>(output_blocks)),
                 .block = dim3(32 * kWarpsPerBlock),
                 .dynamic_shared_bytes = shared_bytes},
                in, weight, out);
}

// The weight as a product operand: itself when fp32, else its decoded copy in scratch.
absl::StatusOr<const float*> Operand(const FrozenWeight& weight, float* scratch) {
  if (weight.format == WeightFormat::kFloat32) return static_cast<const float*>(weight.values);
  if (absl::Status status = DecodeFrozenWeight(weight, scratch); !status.ok()) return status;
  return scratch;
}

}  // namespace

int64_t FrozenLinearScratch(const FrozenWeight& weight) {
  return weight.format == WeightFormat::kFloat32 ? 0 : weight.rows * weight.columns;
}

absl::Status DecodeFrozenWeight(const FrozenWeight& weight, float* out) {
  const int64_t n = weight.rows * weight.columns;
  if (n == 0) return absl::OkStatus();
  constexpr int kThreads = 256;
  return Launch("decode_frozen_weight", DecodeFrozenWeightKernel,
                {BlocksFor(n, kThreads), dim3(kThreads)}, weight, out);
}

absl::Status FrozenLinearForward(Blas& blas, const float* in, const FrozenWeight& weight,
                                 float* out, int64_t rows, float* scratch) {
  if (weight.format == WeightFormat::kInt8 && weight.int8_activations) {
    return Int8ActivationForward(in, weight, out, rows);
  }
  absl::StatusOr<const float*> decoded = Operand(weight, scratch);
  if (!decoded.ok()) return decoded.status();
  // out [rows, out] = in [rows, in] · w [out, in]ᵀ.
  return blas.MatMul({.a = {in, ElementType::kFloat32, false},
                      .b = {*decoded, ElementType::kFloat32, true},
                      .c = out,
                      .m = rows,
                      .n = weight.rows,
                      .k = weight.columns},
                     /*accumulate=*/false);
}

absl::Status FrozenLinearBackwardInput(Blas& blas, const float* d_out, const FrozenWeight& weight,
                                       float* d_in, int64_t rows, float* scratch) {
  absl::StatusOr<const float*> decoded = Operand(weight, scratch);
  if (!decoded.ok()) return decoded.status();
  // d_in [rows, in] += d_out [rows, out] · w [out, in].
  return blas.MatMul({.a = {d_out, ElementType::kFloat32, false},
                      .b = {*decoded, ElementType::kFloat32, false},
                      .c = d_in,
                      .m = rows,
                      .n = weight.columns,
                      .k = weight.rows},
                     /*accumulate=*/true);
}

}  // namespace fedmoe::kernels::cuda
