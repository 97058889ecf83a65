#include "client/model_flags.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "model/compute.h"
#include "model/device_decoder.h"
#include "storage/file_status.h"

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

absl::StatusOr<model::HeldFormat> HeldFormatFlags(const config::CommandLine& flags) {
  absl::StatusOr<std::optional<model::WeightFormat>> weights = HeldWeightFormat(flags);
  if (!weights.ok()) return weights.status();
  return model::HeldFormat{.weights = *weights, .int8_activations = flags.Has("int8-activations")};
}

absl::Status ApplyThreads(const config::CommandLine& flags) {
  absl::StatusOr<int64_t> threads = flags.IntOr("threads", 0, 0, kMaxThreads);
  if (!threads.ok()) return threads.status();
  model::SetCpuThreads(static_cast<int>(*threads));
  return absl::OkStatus();
}

absl::StatusOr<model::Device> DeviceFlag(const config::CommandLine& flags) {
  return model::ResolveDevice(flags.Get("device").value_or("auto"));
}

serve::EngineOptions::DecoderFactory DecoderOn(model::Device device) {
  return [device](const model::FrozenBase& base, const model::LoraAdapters& adapters) {
    return model::CreateDecoder(base, adapters, device);
  };
}

std::string JsonLine(const nlohmann::json& json) {
  return json.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

absl::Status CopyTokenizer(const std::filesystem::path& from, const std::filesystem::path& to) {
  const std::filesystem::path tokenizer_file = from / "tokenizer.json";
  if (!storage::PathExists(tokenizer_file)) return absl::OkStatus();
  std::error_code error;
  std::filesystem::copy_file(tokenizer_file, to / "tokenizer.json",
                             std::filesystem::copy_options::overwrite_existing, error);
  if (error) {
    return absl::InternalError(absl::StrCat("cannot copy tokenizer.json: ", error.message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> TextFlag(const config::CommandLine& flags, const std::string& name) {
  const std::string file_flag = absl::StrCat(name, "-file");
  const std::optional<std::string> text = flags.Get(name);
  const std::optional<std::string> file = flags.Get(file_flag);
  if (text.has_value() == file.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("give the ", name, " as --", name, " TEXT or --", file_flag, " FILE"));
  }
  if (text.has_value()) return *text;
  std::ifstream in(*file, std::ios::binary);
  if (!in)
    return absl::NotFoundError(absl::StrCat("--", file_flag, " ", *file, ": cannot read it"));
  std::ostringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

}  // namespace fedmoe::client
