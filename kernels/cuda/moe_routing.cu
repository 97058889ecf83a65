#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/moe_routing.h"
#include "kernels/cuda/reduce.cuh"
#include "kernels/shared/moe_routing_rows.h"

namespace fedmoe::kernels::cuda {
namespace {

constexpr int kRowThreads = 128;
// The permutation sorts slots in chunks of this many, one per thread of a block.
constexpr int kChunk = 256;

__device__ __forceinline__ __nv_bfloat16* AsBf16(DeviceBf16* bits) {
  return reinterpret_cast<__nv_bfloat16*>(bits);
}

// One thread per row: top_k is small and experts a few hundred at most, so the repeated scans
// cost little, and the row math is the CPU kernel's own (kernels/shared/moe_routing_rows.h).
__global__ void RouterTopKForwardKernel(const float* __restrict__ logits, float* __restrict__ probs,
                                        int32_t* __restrict__ expert_index,
                                        float* __restrict__ expert_weight, int64_t rows,
                                        int64_t experts, int64_t top_k) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  RouterTopKForwardRow(logits + row * experts, probs + row * experts, expert_index + row * top_k,
                       expert_weight + row * top_k, experts, top_k);
}

__global__ void RouterTopKBackwardKernel(const float* __restrict__ probs,
                                         const int32_t* __restrict__ expert_index,
                                         const float* __restrict__ d_expert_weight,
                                         const float* __restrict__ d_probs,
                                         float* __restrict__ d_logits, int64_t rows,
                                         int64_t experts, int64_t top_k) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  RouterTopKBackwardRow(probs + row * experts, expert_index + row * top_k,
                        d_expert_weight + row * top_k,
                        d_probs != nullptr ? d_probs + row * experts : nullptr,
                        d_logits + row * experts, experts, top_k);
}

// counts[chunk, e]: the chunk's slots routed to e.
__global__ void CountChunksKernel(const int32_t* __restrict__ expert_index, int64_t slots,
                                  int64_t experts, int32_t* __restrict__ counts) {
  __shared__ int32_t chunk_counts[kMaxExperts];
  for (int64_t e = threadIdx.x; e < experts; e += blockDim.x) chunk_counts[e] = 0;
  __syncthreads();
  const int64_t slot = static_cast<int64_t>(blockIdx.x) * kChunk + threadIdx.x;
  if (slot < slots) atomicAdd(&chunk_counts[expert_index[slot]], 1);
  __syncthreads();
  for (int64_t e = threadIdx.x; e < experts; e += blockDim.x) {
    counts[static_cast<int64_t>(blockIdx.x) * experts + e] = chunk_counts[e];
  }
}

// One block: turns counts[chunk, e] into each chunk's first position for e, and writes the
// experts' offsets.
__global__ void ChunkStartsKernel(int32_t* __restrict__ counts, int64_t chunks, int64_t experts,
                                  int32_t* __restrict__ offsets) {
  __shared__ int32_t totals[kMaxExperts];
  __shared__ int32_t starts[kMaxExperts + 1];
  for (int64_t e = threadIdx.x; e < experts; e += blockDim.x) {
    int32_t running = 0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const int32_t count = counts[chunk * experts + e];
      counts[chunk * experts + e] = running;
      running += count;
    }
    totals[e] = running;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    starts[0] = 0;
    for (int64_t e = 0; e < experts; ++e) starts[e + 1] = starts[e] + totals[e];
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e <= experts; e += blockDim.x) offsets[e] = starts[e];
  for (int64_t e = threadIdx.x; e < experts; e += blockDim.x) {
    for (int64_t chunk = 0; chunk < chunks; ++chunk) counts[chunk * experts + e] += starts[e];
  }
}

// Each slot's place: its chunk's start for its expert, plus the earlier slots of the chunk
// with the same expert.
__global__ void ScatterSlotsKernel(const int32_t* __restrict__ expert_index, int64_t slots,
                                   int64_t experts, int64_t top_k,
                                   const int32_t* __restrict__ chunk_starts,
                                   int32_t* __restrict__ slot_token,
                                   int32_t* __restrict__ permuted_slot) {
  __shared__ int32_t chunk_experts[kChunk];
  const int64_t slot = static_cast<int64_t>(blockIdx.x) * kChunk + threadIdx.x;
  const int32_t expert = slot < slots ? expert_index[slot] : -1;
  chunk_experts[threadIdx.x] = expert;
  __syncthreads();
  if (slot >= slots) return;
  int32_t rank = 0;
  for (unsigned t = 0; t < threadIdx.x; ++t) rank += chunk_experts[t] == expert ? 1 : 0;
  const int32_t position = chunk_starts[static_cast<int64_t>(blockIdx.x) * experts + expert] + rank;
  slot_token[position] = static_cast<int32_t>(slot / top_k);
  permuted_slot[slot] = position;
}

__global__ void AddExpertCountsKernel(const int32_t* __restrict__ offsets, int64_t experts,
                                      int64_t* __restrict__ counts) {
  for (int64_t e = threadIdx.x; e < experts; e += blockDim.x)
    counts[e] += offsets[e + 1] - offsets[e];
}

__global__ void GatherByExpertKernel(const float* __restrict__ in,
                                     const int32_t* __restrict__ slot_token,
                                     float* __restrict__ permuted,
                                     DeviceBf16* __restrict__ permuted_bf16, int64_t width) {
  const int64_t slot = blockIdx.x;
  const float* source = in + static_cast<int64_t>(slot_token[slot]) * width;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    if (permuted != nullptr) permuted[slot * width + i] = source[i];
    if (permuted_bf16 != nullptr)
      AsBf16(permuted_bf16)[slot * width + i] = __float2bfloat16(source[i]);
  }
}

__global__ void GatherByExpertBackwardKernel(const float* __restrict__ d_permuted,
                                             const int32_t* __restrict__ permuted_slot,
                                             float* __restrict__ d_in, int64_t top_k,
                                             int64_t width) {
  const int64_t row = blockIdx.x;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    float value = d_in[row * width + i];
    for (int64_t j = 0; j < top_k; ++j) {
      value += d_permuted[static_cast<int64_t>(permuted_slot[row * top_k + j]) * width + i];
    }
    d_in[row * width + i] = value;
  }
}

__global__ void CombineExpertOutputsKernel(const float* __restrict__ expert_out,
                                           const float* __restrict__ expert_weight,
                                           const int32_t* __restrict__ permuted_slot,
                                           float* __restrict__ out, int64_t top_k, int64_t width) {
  const int64_t row = blockIdx.x;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    float value = out[row * width + i];
    for (int64_t j = 0; j < top_k; ++j) {
      const int64_t slot = row * top_k + j;
      value +=
          expert_weight[slot] * expert_out[static_cast<int64_t>(permuted_slot[slot]) * width + i];
    }
    out[row * width + i] = value;
  }
}

__global__ void CombineExpertOutputsBackwardKernel(
    const float* __restrict__ expert_out, const float* __restrict__ expert_weight,
    const int32_t* __restrict__ permuted_slot, const float* __restrict__ d_out,
    float* __restrict__ d_expert_out, DeviceBf16* __restrict__ d_expert_out_bf16,
    float* __restrict__ d_expert_weight, int64_t top_k, int64_t width) {
  const int64_t row = blockIdx.x;
  const float* upstream = d_out + row * width;
  for (int64_t j = 0; j < top_k; ++j) {
    const int64_t slot = row * top_k + j;
    const int64_t permuted = permuted_slot[slot];
    const float w = expert_weight[slot];
    float dot = 0.0F;
    for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
      const float g = w * upstream[i];
      if (d_expert_out != nullptr) d_expert_out[permuted * width + i] = g;
      if (d_expert_out_bf16 != nullptr)
        AsBf16(d_expert_out_bf16)[permuted * width + i] = __float2bfloat16(g);
      dot += upstream[i] * expert_out[permuted * width + i];
    }
    dot = BlockSum(dot);
    if (threadIdx.x == 0) d_expert_weight[slot] = dot;
  }
}

LaunchShape PerRow(int64_t rows) { return {dim3(static_cast<unsigned>(rows)), dim3(kRowThreads)}; }
LaunchShape ThreadPerRow(int64_t rows) {
  return {dim3(static_cast<unsigned>((rows + kRowThreads - 1) / kRowThreads)), dim3(kRowThreads)};
}
int64_t ChunksOf(int64_t slots) { return (slots + kChunk - 1) / kChunk; }

}  // namespace

absl::Status RouterTopKForward(const float* logits, float* probs, int32_t* expert_index,
                               float* expert_weight, int64_t rows, int64_t experts, int64_t top_k) {
  if (rows == 0) return absl::OkStatus();
  return Launch("router top-k forward", RouterTopKForwardKernel, ThreadPerRow(rows), logits, probs,
                expert_index, expert_weight, rows, experts, top_k);
}

absl::Status RouterTopKBackward(const float* probs, const int32_t* expert_index,
                                const float* d_expert_weight, const float* d_probs, float* d_logits,
                                int64_t rows, int64_t experts, int64_t top_k) {
  if (rows == 0) return absl::OkStatus();
  return Launch("router top-k backward", RouterTopKBackwardKernel, ThreadPerRow(rows), probs,
                expert_index, d_expert_weight, d_probs, d_logits, rows, experts, top_k);
}

int64_t ExpertPermutationScratch(int64_t slots, int64_t experts) {
  return ChunksOf(slots) * experts;
}

absl::Status BuildExpertPermutation(const int32_t* expert_index, int64_t rows, int64_t top_k,
                                    int64_t experts, int32_t* offsets, int32_t* slot_token,
                                    int32_t* permuted_slot, int32_t* scratch) {
  const int64_t slots = rows * top_k;
  if (experts < 1 || experts > kMaxExperts || slots >= (int64_t{1} << 31)) {
    return absl::InvalidArgumentError(absl::StrCat("a device permutation takes 1 to ", kMaxExperts,
                                                   " experts and under 2^31 slots, not ", experts,
                                                   " experts and ", slots, " slots"));
  }
  const int64_t chunks = ChunksOf(slots);
  if (chunks > 0) {
    if (absl::Status status = Launch("permutation counts", CountChunksKernel,
                                     {dim3(static_cast<unsigned>(chunks)), dim3(kChunk)},
                                     expert_index, slots, experts, scratch);
        !status.ok()) {
      return status;
    }
  }
  if (absl::Status status = Launch("permutation offsets", ChunkStartsKernel, {dim3(1), dim3(256)},
                                   scratch, chunks, experts, offsets);
      !status.ok()) {
    return status;
  }
  if (chunks == 0) return absl::OkStatus();
  return Launch("permutation scatter", ScatterSlotsKernel,
                {dim3(static_cast<unsigned>(chunks)), dim3(kChunk)}, expert_index, slots, experts,
                top_k, static_cast<const int32_t*>(scratch), slot_token, permuted_slot);
}

absl::Status AddExpertCounts(const int32_t* offsets, int64_t experts, int64_t* counts) {
  return Launch("expert counts", AddExpertCountsKernel, {dim3(1), dim3(256)}, offsets, experts,
                counts);
}

absl::Status GatherByExpert(const float* in, const int32_t* slot_token, float* permuted,
                            DeviceBf16* permuted_bf16, int64_t slots, int64_t width) {
  if (slots == 0) return absl::OkStatus();
  return Launch("gather by expert", GatherByExpertKernel, PerRow(slots), in, slot_token, permuted,
                permuted_bf16, width);
}

absl::Status GatherByExpertBackward(const float* d_permuted, const int32_t* permuted_slot,
                                    float* d_in, int64_t rows, int64_t top_k, int64_t width) {
  if (rows == 0) return absl::OkStatus();
  return Launch("gather by expert backward", GatherByExpertBackwardKernel, PerRow(rows), d_permuted,
                permuted_slot, d_in, top_k, width);
}

absl::Status CombineExpertOutputs(const float* expert_out, const float* expert_weight,
                                  const int32_t* permuted_slot, float* out, int64_t rows,
                                  int64_t top_k, int64_t width) {
  if (rows == 0) return absl::OkStatus();
  return Launch("combine expert outputs", CombineExpertOutputsKernel, PerRow(rows), expert_out,
                expert_weight, permuted_slot, out, top_k, width);
}

absl::Status CombineExpertOutputsBackward(const float* expert_out, const float* expert_weight,
                                          const int32_t* permuted_slot, const float* d_out,
                                          float* d_expert_out, DeviceBf16* d_expert_out_bf16,
                                          float* d_expert_weight, int64_t rows, int64_t top_k,
                                          int64_t width) {
  if (rows == 0) return absl::OkStatus();
  return Launch("combine expert outputs backward", CombineExpertOutputsBackwardKernel, PerRow(rows),
                expert_out, expert_weight, permuted_slot, d_out, d_expert_out, d_expert_out_bf16,
                d_expert_weight, top_k, width);
}

}  // namespace fedmoe::kernels::cuda
