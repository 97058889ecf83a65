// Held-out loss of a model over a token stream, as `fedmoe-client model eval` reports it
// (DESIGN §8).
#ifndef FEDMOE_MODEL_EVALUATION_H_
#define FEDMOE_MODEL_EVALUATION_H_

#include <cstdint>
#include <functional>
#include <span>

#include "absl/status/statusor.h"
#include "model/forward.h"
#include "model/parameters.h"

namespace fedmoe::model {

struct Evaluation {
  // Mean next-token cross-entropy in nats.
  double loss = 0;
  // The number of predictions the mean is over.
  int64_t predictions = 0;
};

// Cuts `tokens` into consecutive, non-overlapping windows of seq_len tokens; a last, shorter
// window is kept when it has at least 2 tokens. Inside a window each position predicts the
// next. Windows run `batch` at a time. InvalidArgument for fewer than 2 tokens, seq_len < 2,
// or seq_len above the model's max_position_embeddings.
absl::StatusOr<Evaluation> Evaluate(const ModelParameters& parameters,
                                    std::span<const int32_t> tokens, int64_t seq_len,
                                    int64_t batch = 8);

// Runs a model over `windows` sequences of `length` tokens ([windows, length], row-major) and
// returns the pass that holds its logits.
using WindowForward = std::function<absl::StatusOr<const ForwardPass*>(
    std::span<const int32_t> tokens, int64_t windows, int64_t length)>;

// Evaluate's windows and mean over any model that `forward` runs (an adapted one,
// adapted_model.h), with vocabulary `vocab_size`.
absl::StatusOr<Evaluation> EvaluateWindows(std::span<const int32_t> tokens, int64_t seq_len,
                                           int64_t batch, int64_t vocab_size,
                                           const WindowForward& forward);

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_EVALUATION_H_
