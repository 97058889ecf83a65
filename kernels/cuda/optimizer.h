// The optimizer step on the GPU: the global gradient norm and AdamW with decoupled weight decay
// and global-norm clipping, over the trainable ranges of one parameter buffer, the twin of
// kernels/cpu/optimizer.h's AdamWUpdate, with the same step (kernels/shared/adamw.h). The clip
// factor is computed on the device from the norm, so a step needs no round trip to the host.
#ifndef FEDMOE_KERNELS_CUDA_OPTIMIZER_H_
#define FEDMOE_KERNELS_CUDA_OPTIMIZER_H_

#include <cstdint>
#include <span>

#include "absl/status/statusor.h"
#include "kernels/cuda/dense.h"
#include "kernels/cuda/device_memory.h"
#include "kernels/shared/adamw.h"

namespace fedmoe::kernels::cuda {

// Ranges of a parameter buffer on the device, adjacent ones with the same decay merged (a
// layer's tensors mostly are), for kernels that walk them as one index space.
class DeviceRanges {
 public:
  // InvalidArgument for a negative or overlapping range.
  static absl::StatusOr<DeviceRanges> Create(std::span<const ParameterRange> ranges);

  int64_t count() const { return count_; }
  // The number of values in all ranges.
  int64_t total() const { return total_; }
  const int64_t* offsets() const { return offsets_.data(); }
  // firsts()[r] is range r's first index in the joint space; count() + 1 entries.
  const int64_t* firsts() const { return firsts_.data(); }
  const uint8_t* decay() const { return decay_.data(); }

 private:
  DeviceRanges(DeviceArray<int64_t> offsets, DeviceArray<int64_t> firsts,
               DeviceArray<uint8_t> decay, int64_t count, int64_t total)
      : offsets_(std::move(offsets)),
        firsts_(std::move(firsts)),
        decay_(std::move(decay)),
        count_(count),
        total_(total) {}

  DeviceArray<int64_t> offsets_;
  DeviceArray<int64_t> firsts_;
  DeviceArray<uint8_t> decay_;
  int64_t count_;
  int64_t total_;
};

// The partial sums SumOfSquares keeps, in doubles.
inline constexpr int64_t kSumOfSquaresPartials = 256;

// *norm_squared = Σ over the ranges of values² in double, in a fixed order (the same bits every
// run, on any GPU). partials holds kSumOfSquaresPartials doubles.
absl::Status SumOfSquares(const float* values, const DeviceRanges& ranges, double* partials,
                          double* norm_squared);

// θ ← θ − decay·θ − step_size·m̂/(√v/root_correction2 + ε), with m and v updated from the
// clipped gradient, over the ranges. Writes θ rounded to bf16 into parameters_bf16 (same
// layout) unless null: the working copy of the next forward pass. norm_squared is the device
// value SumOfSquares wrote, read only when step.max_norm > 0.
absl::Status AdamWUpdate(float* parameters, DeviceBf16* parameters_bf16, const float* gradients,
                         float* first_moment, float* second_moment, const DeviceRanges& ranges,
                         const AdamWStep& step, const double* norm_squared);

}  // namespace fedmoe::kernels::cuda

#endif  // FEDMOE_KERNELS_CUDA_OPTIMIZER_H_
