// Next-token cross-entropy on the GPU: the CUDA twin of kernels/cpu/cross_entropy.h, one block
// per row. Device pointers; queued on the default stream.
#ifndef FEDMOE_KERNELS_CUDA_CROSS_ENTROPY_H_
#define FEDMOE_KERNELS_CUDA_CROSS_ENTROPY_H_

#include <cstdint>

#include "absl/status/status.h"

namespace fedmoe::kernels::cuda {

// losses[row] = logsumexp(logits[row]) − logits[row, targets[row]], or 0 where the target is
// negative (no prediction). Targets must be below vocab.
absl::Status CrossEntropyForward(const float* logits, const int32_t* targets, float* losses,
                                 int64_t rows, int64_t vocab);

// Writes d_logits[row] = scale·(softmax − onehot(target)) (0 for uncounted rows) and the
// losses as CrossEntropyForward does.
absl::Status CrossEntropyBackward(const float* logits, const int32_t* targets, float* d_logits,
                                  float* losses, int64_t rows, int64_t vocab, float scale);

}  // namespace fedmoe::kernels::cuda

#endif  // FEDMOE_KERNELS_CUDA_CROSS_ENTROPY_H_
