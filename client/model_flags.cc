#include "client/model_flags.h"

#include "model/compute.h"

namespace fedmoe::client {

absl::StatusOr<std::optional<model::WeightFormat>> HeldWeightFormat(
    const config::CommandLine& flags) {
  if (flags.Has("int8") && flags.Has("bf16")) {
    return absl::InvalidArgumentError("--int8 and --bf16 exclude each other");
  }
  if (flags.Has("int8")) return model::WeightFormat::kInt8;
  if (flags.Has("bf16")) return model::WeightFormat::kBfloat16;
  return std::nullopt;
}

absl::Status ApplyThreads(const config::CommandLine& flags) {
  absl::StatusOr<int64_t> threads = flags.IntOr("threads", 0, 0, kMaxThreads);
  if (!threads.ok()) return threads.status();
  model::SetCpuThreads(static_cast<int>(*threads));
  return absl::OkStatus();
}

}  // namespace fedmoe::client
