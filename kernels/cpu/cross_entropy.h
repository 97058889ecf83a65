// Next-token cross-entropy on the host.
#ifndef FEDMOE_KERNELS_CPU_CROSS_ENTROPY_H_
#define FEDMOE_KERNELS_CPU_CROSS_ENTROPY_H_

#include <cstdint>

namespace fedmoe::kernels::cpu {

// losses[row] = logsumexp(logits[row]) − logits[row, targets[row]] in nats, for logits
// [rows, vocab]. A negative target marks a position without a prediction (padding, or a prompt
// token in supervised fine-tuning): its loss is 0 and it is not counted. Returns the number of
// counted rows. Targets must be below vocab.
int64_t CrossEntropyForward(const float* logits, const int32_t* targets, float* losses,
                            int64_t rows, int64_t vocab);

// d_logits[row] = scale·(softmax(logits[row]) − onehot(target)) for counted rows and 0 for
// the others (writes, does not add). scale is usually 1 / (counted rows in the whole batch).
// The softmax it needs also gives the loss, so it writes losses[rows] as CrossEntropyForward
// does and returns the number of counted rows, sparing a training step a second pass over the
// logits.
int64_t CrossEntropyBackward(const float* logits, const int32_t* targets, float* d_logits,
                             float* losses, int64_t rows, int64_t vocab, float scale);

}  // namespace fedmoe::kernels::cpu

#endif  // FEDMOE_KERNELS_CPU_CROSS_ENTROPY_H_
