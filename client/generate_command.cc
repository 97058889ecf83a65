#include "client/generate_command.h"

#include <cstdio>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>

#include "absl/strings/str_cat.h"
#include "client/model_flags.h"
#include "config/command_line.h"
#include "model/adapted_model.h"
#include "model/compute.h"
#include "model/device_decoder.h"
#include "model/frozen_base.h"
#include "model/generation.h"
#include "model/tokenizer.h"

namespace fedmoe::client {
namespace {

using config::CommandLine;

int Fail(const absl::Status& status) { return config::ReportFailure("fedmoe-client", status); }

constexpr int64_t kMaxTokens = int64_t{1} << 20;

absl::StatusOr<double> DoubleOr(const CommandLine& flags, const std::string& flag,
                                double fallback) {
  return flags.Has(flag) ? flags.RequireDouble(flag) : absl::StatusOr<double>(fallback);
}

}  // namespace

const char kGenerateUsage[] =
    R"(  model generate --model DIR (--prompt TEXT | --prompt-file FILE) [--adapter DIR]
        [--int8 [--int8-activations] | --bf16] [--max-tokens N] [--temperature T] [--top-p P]
        [--seed S] [--stop TEXT]... [--device auto|cpu|cuda] [--threads T]
      Generates text after the prompt with DIR's model (with a PEFT adapter directory over
      it; --int8 or --bf16 holds the base in that format, and --int8-activations has an INT8
      base quantize each product's input per token too, for faster decoding) and streams it
      to stdout as it comes, on the GPU when one answers (--device auto, the default) or
      where --device says.
      Sampling: temperature T (default 0.8; 0 is greedy) over the most likely tokens whose
      probabilities reach P (default 0.95), seeded by S (default: drawn, and reported).
      Ends at N tokens (default 128), the model's end-of-sequence token, or before the first
      --stop string. The last line on stderr is JSON {"prompt_tokens", "generated_tokens",
      "prefill_tokens_per_second", "decode_tokens_per_second", "finish_reason", "seed",
      "device", "format"}.
)";

int GenerateCommand(const std::vector<std::string>& args) {
  auto flags = CommandLine::Parse(args,
                                  {"model", "adapter", "prompt", "prompt-file", "max-tokens",
                                   "temperature", "top-p", "seed", "stop", "device", "threads"},
                                  {"int8", "bf16", "int8-activations"});
  if (!flags.ok()) return Fail(flags.status());
  absl::StatusOr<std::string> model_dir = flags->Require("model");
  if (!model_dir.ok()) return Fail(model_dir.status());
  absl::StatusOr<std::string> prompt = TextFlag(*flags, "prompt");
  if (!prompt.ok()) return Fail(prompt.status());
  model::GenerationOptions options;
  absl::StatusOr<int64_t> max_tokens = flags->IntOr("max-tokens", 128, 1, kMaxTokens);
  if (!max_tokens.ok()) return Fail(max_tokens.status());
  options.max_tokens = *max_tokens;
  absl::StatusOr<double> temperature = DoubleOr(*flags, "temperature", 0.8);
  if (!temperature.ok()) return Fail(temperature.status());
  absl::StatusOr<double> top_p = DoubleOr(*flags, "top-p", 0.95);
  if (!top_p.ok()) return Fail(top_p.status());
  options.sampling = {.temperature = *temperature, .top_p = *top_p};
  if (absl::Status status = options.sampling.Validate(); !status.ok()) return Fail(status);
  if (flags->Has("seed")) {
    absl::StatusOr<int64_t> seed =
        flags->RequireInt("seed", 0, std::numeric_limits<int64_t>::max());
    if (!seed.ok()) return Fail(seed.status());
    options.seed = static_cast<uint64_t>(*seed);
  } else {
    // Not a secret: only which of the likely continuations a run takes.
    options.seed = std::random_device()() & ((uint64_t{1} << 31) - 1);
  }
  options.stop = flags->GetAll("stop");
  if (absl::Status status = ApplyThreads(*flags); !status.ok()) return Fail(status);
  absl::StatusOr<model::Device> device = DeviceFlag(*flags);
  if (!device.ok()) return Fail(device.status());
  absl::StatusOr<model::HeldFormat> held = HeldFormatFlags(*flags);
  if (!held.ok()) return Fail(held.status());

  absl::StatusOr<model::FrozenBase> base = model::OpenForInference(*model_dir, *held);
  if (!base.ok()) return Fail(base.status());
  absl::StatusOr<model::LoraAdapters> adapters =
      flags->Has("adapter") ? model::LoadAdaptersFor(*base, *flags->Get("adapter"))
                            : absl::StatusOr<model::LoraAdapters>(model::BaseOnlyAdapters(*base));
  if (!adapters.ok()) return Fail(adapters.status());
  absl::StatusOr<std::unique_ptr<model::Tokenizer>> tokenizer =
      model::LoadTokenizer(*model_dir, base->config().vocab_size);
  if (!tokenizer.ok()) return Fail(tokenizer.status());
  absl::StatusOr<std::unique_ptr<model::Decoder>> decoder =
      model::CreateDecoder(*base, *adapters, *device);
  if (!decoder.ok()) return Fail(decoder.status());
  model::Generator generator(*std::move(decoder));

  absl::StatusOr<model::GenerationResult> result =
      model::Generate(generator, **tokenizer, *prompt, options, [](std::string_view piece) {
        std::fwrite(piece.data(), 1, piece.size(), stdout);
        std::fflush(stdout);
      });
  if (!result.ok()) return Fail(result.status());
  std::fputc('\n', stdout);
  std::fflush(stdout);
  const auto rate = [](size_t tokens, double seconds) {
    return seconds > 0 ? static_cast<double>(tokens) / seconds : 0.0;
  };
  // The first generated token comes from the prefill's logits; each later one costs a step.
  const size_t decoded = result->tokens.empty() ? 0 : result->tokens.size() - 1;
  const nlohmann::json summary = {
      {"prompt_tokens", result->prompt_tokens.size()},
      {"generated_tokens", result->tokens.size()},
      {"prefill_tokens_per_second", rate(result->prompt_tokens.size(), result->prefill_seconds)},
      {"decode_tokens_per_second", rate(decoded, result->decode_seconds)},
      {"finish_reason", result->finish_reason},
      {"seed", options.seed},
      {"device", std::string(generator.device())},
      {"format", model::HeldFormatName(*base)}};
  std::fprintf(stderr, "%s\n", summary.dump().c_str());
  return 0;
}

}  // namespace fedmoe::client
