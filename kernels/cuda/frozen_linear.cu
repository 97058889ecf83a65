#include <cuda_runtime.h>

#include <algorithm>

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
// Input rows each warp carries through one pass over its weight row.
constexpr int kRowsPerPass = 8;

// Where a chunk of quantized input rows lives in scratch: each row's int8 values, padded to a
// multiple of 4 bytes so that every row starts aligned for dp4a, then the rows' scales.
struct QuantizedLayout {
  int64_t stride = 0;  // bytes per row of values
  int64_t groups = 0;

  explicit QuantizedLayout(const FrozenWeight& weight)
      : stride((weight.columns + 3) / 4 * 4), groups(weight.groups_per_row()) {}
  int64_t bytes_per_row() const { return stride + groups * static_cast<int64_t>(sizeof(float)); }
};

// Quantizes rows [0, gridDim.x) of `in` per group (QuantizeActivation, as the CPU rounds), a warp
// per group, into values [rows, stride] and scales [rows, groups].
__global__ void QuantizeRowsKernel(const float* __restrict__ in, FrozenWeight weight,
                                   QuantizedLayout layout, int8_t* __restrict__ values,
                                   float* __restrict__ scales) {
  const int64_t row = blockIdx.x;
  const unsigned lane = threadIdx.x % 32;
  const float* input = in + row * weight.columns;
  for (int64_t g = threadIdx.x / 32; g < layout.groups; g += kWarpsPerBlock) {
    const int64_t begin = g * weight.group_size;
    const int64_t end =
        begin + weight.group_size < weight.columns ? begin + weight.group_size : weight.columns;
    float largest = 0.0F;
    for (int64_t c = begin + lane; c < end; c += 32) largest = fmaxf(largest, fabsf(input[c]));
    largest = WarpMax(largest);
    const float inverse = ActivationInverseScale(largest);
    if (lane == 0) scales[row * layout.groups + g] = ActivationScale(largest);
    for (int64_t c = begin + lane; c < end; c += 32) {
      values[row * layout.stride + c] = QuantizeActivation(input[c], inverse);
    }
  }
  // The padding multiplies as zeros.
  if (threadIdx.x < layout.stride - weight.columns) {
    values[row * layout.stride + weight.columns + threadIdx.x] = 0;
  }
}

// out [rows, weight.rows] = the quantized rows · ŵᵀ, the CPU's arithmetic: a warp per output
// row, which reads its int8 weights once per kRowsPerPass input rows and multiplies them into
// each row's sums, four bytes at once (dp4a) where columns and the group size are multiples of
// 4. Each product is scaled into fp32 by its group's two scales.
__global__ void Int8ActivationLinearKernel(FrozenWeight weight, QuantizedLayout layout,
                                           const int8_t* __restrict__ values,
                                           const float* __restrict__ scales, int64_t rows,
                                           float* __restrict__ out) {
  __shared__ float partial[kWarpsPerBlock][kRowsPerPass][32];
  const unsigned warp = threadIdx.x / 32;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (o >= weight.rows) return;
  const unsigned lane = threadIdx.x % 32;
  const int64_t columns = weight.columns;
  const int64_t group_size = weight.group_size;
  const auto* w = static_cast<const int8_t*>(weight.values) + o * columns;
  const float* w_scales = weight.scales + o * layout.groups;
  const bool packed = columns % 4 == 0 && group_size % 4 == 0;
  for (int64_t first = 0; first < rows; first += kRowsPerPass) {
    const int count = rows - first < kRowsPerPass ? static_cast<int>(rows - first) : kRowsPerPass;
    float total[kRowsPerPass];
    FEDMOE_UNROLL
    for (int r = 0; r < kRowsPerPass; ++r) total[r] = 0.0F;
    if (packed) {
      const auto* w4 = reinterpret_cast<const int*>(w);
      for (int64_t k = lane; k < columns / 4; k += 32) {
        const int64_t g = 4 * k / group_size;
        const int weights = w4[k];
        const float w_scale = w_scales[g];
        for (int r = 0; r < count; ++r) {
          const int64_t row = first + r;
          const int inputs = reinterpret_cast<const int*>(values + row * layout.stride)[k];
          total[r] += w_scale * scales[row * layout.groups + g] *
                      static_cast<float>(__dp4a(weights, inputs, 0));
        }
      }
    } else {
      for (int64_t c = lane; c < columns; c += 32) {
        const int64_t g = c / group_size;
        const int weight_value = w[c];
        for (int r = 0; r < count; ++r) {
          const int64_t row = first + r;
          total[r] += w_scales[g] * scales[row * layout.groups + g] *
                      static_cast<float>(weight_value * values[row * layout.stride + c]);
        }
      }
    }
    // Each row's 32 partial sums are added by one lane, through shared memory: one barrier per
    // pass rather than a shuffle tree per row (which the simulator pays for lane by lane).
    for (int r = 0; r < count; ++r) partial[warp][r][lane] = total[r];
    __syncwarp();
    if (static_cast<int>(lane) < count) {
      float sum = 0.0F;
      for (int l = 0; l < 32; ++l) sum += partial[warp][lane][l];
      out[(first + lane) * weight.rows + o] = sum;
    }
    __syncwarp();  // the next pass overwrites `partial`
  }
}

// Quantizes the input into scratch as many rows at a time as it holds (FrozenLinearScratch
// leaves room for at least one), then multiplies them.
absl::Status Int8ActivationForward(const float* in, const FrozenWeight& weight, float* out,
                                   int64_t rows, float* scratch) {
  if (rows == 0 || weight.rows == 0) return absl::OkStatus();
  const QuantizedLayout layout(weight);
  const int64_t scratch_bytes = FrozenLinearScratch(weight) * static_cast<int64_t>(sizeof(float));
  const int64_t chunk = std::min(rows, scratch_bytes / layout.bytes_per_row());
  if (chunk < 1) {
    return absl::InternalError("the product's scratch holds no quantized input row");
  }
  auto* values = reinterpret_cast<int8_t*>(scratch);
  // The scales start 4-byte aligned, since the stride is a multiple of 4.
  auto* scales = reinterpret_cast<float*>(values + chunk * layout.stride);
  const auto output_blocks =
      static_cast<unsigned>((weight.rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
  for (int64_t first = 0; first < rows; first += chunk) {
    const int64_t count = std::min(chunk, rows - first);
    absl::Status status = Launch("quantize_activation_rows", QuantizeRowsKernel,
                                 {dim3(static_cast<unsigned>(count)), dim3(32 * kWarpsPerBlock)},
                                 in + first * weight.columns, weight, layout, values, scales);
    status.Update(Launch("int8_activation_linear", Int8ActivationLinearKernel,
                         {dim3(output_blocks), dim3(32 * kWarpsPerBlock)}, weight, layout, values,
                         scales, count, out + first * weight.rows));
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

// The weight as a product operand: itself when fp32, else its decoded copy in scratch.
absl::StatusOr<const float*> Operand(const FrozenWeight& weight, float* scratch) {
  if (weight.format == WeightFormat::kFloat32) return static_cast<const float*>(weight.values);
  if (absl::Status status = DecodeFrozenWeight(weight, scratch); !status.ok()) return status;
  return scratch;
}

}  // namespace

int64_t FrozenLinearScratch(const FrozenWeight& weight) {
  if (weight.format == WeightFormat::kInt8 && weight.int8_activations) {
    // Quantized input rows rather than the decoded weight; at least two rows of floats hold one
    // input row's int8 values, padding and scales.
    return std::max<int64_t>(weight.rows, 2) * (weight.columns + 4);
  }
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
    return Int8ActivationForward(in, weight, out, rows, scratch);
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
