// Flags that every command over a model directory reads the same way: the format the base is
// held in (--int8, --bf16), the CPU threads (--threads) and the device (--device).
#ifndef FEDMOE_CLIENT_MODEL_FLAGS_H_
#define FEDMOE_CLIENT_MODEL_FLAGS_H_

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "client/serve/engine.h"
#include "config/command_line.h"
#include "model/compute.h"
#include "model/frozen_base.h"

namespace fedmoe::client {

inline constexpr int64_t kMaxThreads = 1024;
// Real inputs are far below these; they only keep a typo from allocating the machine away.
inline constexpr int64_t kMaxSeqLen = int64_t{1} << 20;
inline constexpr int64_t kMaxBatch = 4096;

// --int8 or --bf16: the format to hold the base in; nullopt (as stored) when neither.
// InvalidArgument when both are given.
absl::StatusOr<std::optional<model::WeightFormat>> HeldWeightFormat(
    const config::CommandLine& flags);

// How to hold the base for inference: HeldWeightFormat's, and --int8-activations (an INT8
// base's products quantize their input too; refused when the opened base is not INT8).
absl::StatusOr<model::HeldFormat> HeldFormatFlags(const config::CommandLine& flags);

// --threads T (0 or absent: all cores) for the CPU products.
absl::Status ApplyThreads(const config::CommandLine& flags);

// --device auto|cpu|cuda (absent: auto), resolved for this machine (model::ResolveDevice).
absl::StatusOr<model::Device> DeviceFlag(const config::CommandLine& flags);

// A decoder factory for the serving engine on `device` (model/device_decoder.h).
serve::EngineOptions::DecoderFactory DecoderOn(model::Device device);

// One JSON line of a command's summary; bytes that are not UTF-8 become U+FFFD.
std::string JsonLine(const nlohmann::json& json);

// Copies `from`'s tokenizer.json, when it has one, into a model directory made from it.
absl::Status CopyTokenizer(const std::filesystem::path& from, const std::filesystem::path& to);

// The text given as --NAME TEXT or --NAME-file FILE (exactly one of the two), e.g. generate's
// prompt and explain's text.
absl::StatusOr<std::string> TextFlag(const config::CommandLine& flags, const std::string& name);

}  // namespace fedmoe::client

#endif  // FEDMOE_CLIENT_MODEL_FLAGS_H_
