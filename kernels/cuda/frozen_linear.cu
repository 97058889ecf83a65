#include <cuda_runtime.h>

#include "kernels/cuda/frozen_linear.h"
#include "kernels/cuda/launch.h"

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
