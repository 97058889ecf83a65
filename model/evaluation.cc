#include "model/evaluation.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "model/forward.h"

namespace fedmoe::model {

absl::StatusOr<Evaluation> Evaluate(const ModelParameters& parameters,
                                    std::span<const int32_t> tokens, int64_t seq_len,
                                    int64_t batch) {
  ForwardPass pass;
  return EvaluateWindows(
      tokens, seq_len, batch, parameters.config().vocab_size,
      [&](std::span<const int32_t> chunk, int64_t windows,
          int64_t length) -> absl::StatusOr<const ForwardPass*> {
        if (absl::Status status = Forward(parameters, chunk, windows, length, pass); !status.ok()) {
          return status;
        }
        return &pass;
      });
}

absl::StatusOr<Evaluation> EvaluateWindows(std::span<const int32_t> tokens, int64_t seq_len,
                                           int64_t batch, int64_t vocab_size,
                                           const WindowForward& forward) {
  if (seq_len < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("--seq-len must be at least 2 (one prediction), got ", seq_len));
  }
  if (tokens.size() < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("the data has ", tokens.size(), " tokens; evaluation needs at least 2"));
  }
  const auto total = static_cast<int64_t>(tokens.size());
  const int64_t full_windows = total / seq_len;
  const int64_t tail = total % seq_len;

  double loss_sum = 0;
  int64_t predictions = 0;
  auto run = [&](int64_t first_token, int64_t windows, int64_t length) -> absl::Status {
    const std::span<const int32_t> chunk =
        tokens.subspan(static_cast<size_t>(first_token), static_cast<size_t>(windows * length));
    absl::StatusOr<const ForwardPass*> pass = forward(chunk, windows, length);
    if (!pass.ok()) return pass.status();
    const LossSum sum = CrossEntropy(**pass, NextTokenTargets(chunk, windows, length), vocab_size);
    loss_sum += sum.total;
    predictions += sum.predictions;
    return absl::OkStatus();
  };
  for (int64_t window = 0; window < full_windows; window += batch) {
    const int64_t windows = std::min(batch, full_windows - window);
    if (absl::Status status = run(window * seq_len, windows, seq_len); !status.ok()) return status;
  }
  if (tail >= 2) {
    if (absl::Status status = run(full_windows * seq_len, 1, tail); !status.ok()) return status;
  }
  return Evaluation{loss_sum / static_cast<double>(predictions), predictions};
}

}  // namespace fedmoe::model
