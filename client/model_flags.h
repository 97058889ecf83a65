// Flags that every command over a model directory reads the same way: the format the base is
// held in (--int8, --bf16) and the CPU threads (--threads).
#ifndef FEDMOE_CLIENT_MODEL_FLAGS_H_
#define FEDMOE_CLIENT_MODEL_FLAGS_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "config/command_line.h"
#include "model/frozen_base.h"

namespace fedmoe::client {

inline constexpr int64_t kMaxThreads = 1024;

// --int8 or --bf16: the format to hold the base in; nullopt (as stored) when neither.
// InvalidArgument when both are given.
absl::StatusOr<std::optional<model::WeightFormat>> HeldWeightFormat(
    const config::CommandLine& flags);

// --threads T (0 or absent: all cores) for the CPU products.
absl::Status ApplyThreads(const config::CommandLine& flags);

// The text given as --NAME TEXT or --NAME-file FILE (exactly one of the two), e.g. generate's
// prompt and explain's text.
absl::StatusOr<std::string> TextFlag(const config::CommandLine& flags, const std::string& name);

}  // namespace fedmoe::client

#endif  // FEDMOE_CLIENT_MODEL_FLAGS_H_
