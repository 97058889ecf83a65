#include "client/train_command.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/model_flags.h"
#include "client/train_options.h"
#include "config/command_line.h"
#include "model/adapted_model.h"
#include "model/checkpoint.h"
#include "model/frozen_base.h"
#include "model/peft.h"
#include "model/trainer.h"

namespace fedmoe::client {
namespace {

using config::CommandLine;
using Json = nlohmann::json;

int Fail(const absl::Status& status) { return config::ReportFailure("fedmoe-client", status); }

std::string Duration(double seconds) {
  const auto whole = static_cast<int64_t>(std::max(0.0, seconds));
  if (whole >= 3600) return absl::StrFormat("%dh%02dm", whole / 3600, (whole / 60) % 60);
  if (whole >= 60) return absl::StrFormat("%dm%02ds", whole / 60, whole % 60);
  return absl::StrFormat("%ds", whole);
}

Json NumberOrNull(double value) { return std::isfinite(value) ? Json(value) : Json(nullptr); }

// Progress lines on stdout, data warnings on stderr.
model::TrainCallbacks ProgressCallbacks(int64_t log_every) {
  model::TrainCallbacks callbacks;
  callbacks.on_data_warning = [](std::string_view warning) {
    std::fprintf(stderr, "fedmoe-client: warning: %s\n", std::string(warning).c_str());
  };
  callbacks.on_step = [log_every](const model::StepReport& report) {
    if (report.step != 1 && report.step != report.steps && report.step % log_every != 0) return;
    const double eta = report.elapsed_seconds / static_cast<double>(report.step) *
                       static_cast<double>(report.steps - report.step);
    std::printf("step %lld/%lld  loss %.4f  balance %.3f  lr %.2e  grad %.3f  tok/s %.0f  eta %s\n",
                static_cast<long long>(report.step), static_cast<long long>(report.steps),
                report.loss, report.balance, report.learning_rate, report.gradient_norm,
                report.tokens_per_second, Duration(eta).c_str());
    std::fflush(stdout);
  };
  callbacks.on_validation = [](int64_t step, double loss) {
    std::printf("validation at step %lld: loss %.4f\n", static_cast<long long>(step), loss);
    std::fflush(stdout);
  };
  return callbacks;
}

// The last line of train: what the run did, as JSON.
Json TrainSummary(const model::TrainResult& result, const model::TrainOptions& options) {
  return {{"steps", result.steps},
          {"train_loss", NumberOrNull(result.train_loss)},
          {"val_loss", NumberOrNull(result.val_loss)},
          {"tokens_per_second", result.tokens_per_second},
          {"device", model::DeviceName(options.device)},
          {"matmul_precision", model::MatMulPrecisionName(options.matmul_precision)},
          {"tokens", result.tokens},
          {"files", result.data.files},
          {"documents", result.data.documents},
          {"sft_examples", result.data.sft_examples},
          {"skipped_files", result.data.skipped_files},
          {"skipped_lines", result.data.skipped_lines}};
}

// train --lora: adapters over the model held frozen, written to out_dir as PEFT writes them.
int TrainAdaptersCommand(const std::string& model_dir, const std::string& out_dir,
                         const CommandLine& flags, model::TrainOptions options,
                         ComputeSettings compute, const model::TrainCallbacks& callbacks) {
  absl::StatusOr<model::FrozenBase> base =
      model::FrozenBase::Open(model_dir, options.adapters.base_format);
  if (!base.ok()) return Fail(base.status());
  absl::StatusOr<std::string> fallback = compute.FitToModel(base->config());
  if (!fallback.ok()) return Fail(fallback.status());
  if (!fallback->empty()) std::fprintf(stderr, "%s\n", fallback->c_str());
  options.device = compute.device;
  // The base's products are fp32 on its decoded weights, whatever the precision setting says.
  options.matmul_precision = model::MatMulPrecision::kFloat32;
  absl::StatusOr<std::unique_ptr<model::Tokenizer>> tokenizer =
      model::LoadTokenizer(model_dir, base->config().vocab_size);
  if (!tokenizer.ok()) return Fail(tokenizer.status());
  absl::StatusOr<model::LoraAdapters> adapters = model::NewAdapters(*base, options.adapters.lora);
  if (!adapters.ok()) return Fail(adapters.status());
  const model::LoraConfig& lora = options.adapters.lora;
  const std::string where = options.device == model::Device::kCuda
                                ? std::string("the GPU")
                                : absl::StrCat(model::CpuThreads(), " CPU threads");
  std::printf("training %s adapters (rank %lld, alpha %g, %s) over a frozen %s base on %s\n",
              lora.train_a ? "LoRA" : "FFA-LoRA", static_cast<long long>(lora.rank), lora.alpha,
              absl::StrJoin(model::LoraTargetNames(lora.targets), ",").c_str(),
              std::string(model::WeightFormatName(base->format())).c_str(), where.c_str());
  absl::StatusOr<model::TrainResult> result =
      model::TrainAdapters(*base, *adapters, **tokenizer, *flags.Get("data"), options, callbacks);
  if (!result.ok()) return Fail(result.status());
  if (absl::Status status = model::SaveAdapters(
          *adapters, out_dir, std::filesystem::absolute(model_dir).lexically_normal().string());
      !status.ok()) {
    return Fail(status);
  }
  std::printf("adapters: %s\n", out_dir.c_str());
  int64_t trained_values = 0;
  for (const model::TrainedRange& range : model::AdapterTrainedRanges(*adapters)) {
    trained_values += range.size;
  }
  Json summary = TrainSummary(*result, options);
  summary["adapters"] = {{"rank", lora.rank},
                         {"alpha", lora.alpha},
                         {"ffa", !lora.train_a},
                         {"targets", model::LoraTargetNames(lora.targets)},
                         {"base_format", model::WeightFormatName(base->format())},
                         {"base_bytes", base->bytes()},
                         {"trained_values", trained_values}};
  std::printf("%s\n", JsonLine(summary).c_str());
  return 0;
}

}  // namespace

const char kTrainUsage[] =
    R"(  train --model DIR --data DIR --steps N --out DIR [--batch-size B] [--seq-len T]
        [--lr LR] [--seed S] [--threads T] [--log-every K] [--device cpu|cuda|auto]
        [--config FILE] [--lora [--int8 | --bf16]]
      Fine-tune DIR's model on the .txt, .md and .jsonl files under --data and write the
      result to --out, on the GPU (cuda) or the CPU; auto, the default, takes the GPU when one
      answers. Settings come from --config (YAML, see deploy/examples/train.yaml), then the
      flags. Prints progress; the last line is JSON
      {"steps", "train_loss", "val_loss", "tokens_per_second", ...}.
      --lora trains LoRA adapters over DIR held frozen (int8 or bf16 with --int8, --bf16;
      the config's lora: block sets rank, alpha, targets and FFA) on the device chosen as
      above (one GPU), and writes a PEFT adapter directory to --out.
)";

int TrainCommand(const std::vector<std::string>& args) {
  auto flags = CommandLine::Parse(args,
                                  {"model", "data", "steps", "out", "batch-size", "seq-len", "lr",
                                   "seed", "threads", "log-every", "device", "config"},
                                  {"lora", "int8", "bf16"});
  if (!flags.ok()) return Fail(flags.status());
  model::TrainOptions options;
  // Without a config file, as with one that leaves them out: auto, resolved for this machine.
  ComputeSettings compute;
  int64_t threads = 0;
  if (auto path = flags->Get("config")) {
    absl::StatusOr<config::YamlConfigReader> reader = config::YamlConfigReader::FromFile(*path);
    if (!reader.ok()) return Fail(reader.status());
    ReadTrainOptions(*reader, "", &options, &threads, &compute);
    ReadAdapterTrainingOptions(*reader, "", &options);
    if (absl::Status status = reader->Finish(); !status.ok()) return Fail(status);
  }
  if (flags->Has("lora")) options.adapters.enabled = true;
  if (flags->Has("int8") && flags->Has("bf16")) {
    return Fail(absl::InvalidArgumentError("--int8 and --bf16 exclude each other"));
  }
  if (flags->Has("int8") || flags->Has("bf16")) {
    if (!options.adapters.enabled) {
      return Fail(absl::InvalidArgumentError(
          "--int8 and --bf16 hold a frozen base for --lora; without it every weight trains in "
          "fp32"));
    }
    options.adapters.base_format =
        flags->Has("int8") ? model::WeightFormat::kInt8 : model::WeightFormat::kBfloat16;
  }
  const std::optional<std::string> device_flag = flags->Get("device");
  if (device_flag) compute.device_name = *device_flag;
  if (absl::Status status = compute.Resolve(); !status.ok()) {
    if (!device_flag) return Fail(status);
    return Fail(absl::Status(status.code(),
                             absl::StrCat("--device ", *device_flag, ": ", status.message())));
  }
  options.device = compute.device;
  options.matmul_precision = compute.matmul_precision;
  for (const char* required : {"model", "data", "out"}) {
    if (!flags->Has(required)) {
      return Fail(absl::InvalidArgumentError(absl::StrCat("--", required, " is required")));
    }
  }
  if (!flags->Has("steps") && !flags->Has("config")) {
    return Fail(absl::InvalidArgumentError("--steps is required"));
  }
  struct IntFlag {
    const char* name;
    int64_t* out;
    int64_t min;
    int64_t max;
  };
  auto seed = static_cast<int64_t>(options.seed);
  int64_t log_every = 10;
  for (const IntFlag& flag : {IntFlag{"steps", &options.steps, 1, int64_t{1} << 40},
                              IntFlag{"batch-size", &options.batch_size, 1, kMaxBatch},
                              IntFlag{"seq-len", &options.seq_len, 2, kMaxSeqLen},
                              IntFlag{"seed", &seed, 0, std::numeric_limits<int64_t>::max()},
                              IntFlag{"threads", &threads, 0, kMaxThreads},
                              IntFlag{"log-every", &log_every, 1, int64_t{1} << 40}}) {
    absl::StatusOr<int64_t> value = flags->IntOr(flag.name, *flag.out, flag.min, flag.max);
    if (!value.ok()) return Fail(value.status());
    *flag.out = *value;
  }
  options.seed = static_cast<uint64_t>(seed);
  if (flags->Has("lr")) {
    absl::StatusOr<double> lr = flags->RequireDouble("lr");
    if (!lr.ok()) return Fail(lr.status());
    if (*lr <= 0) return Fail(absl::InvalidArgumentError("--lr must be positive"));
    options.learning_rate = *lr;
  }
  model::SetCpuThreads(static_cast<int>(threads));

  const std::string model_dir = *flags->Get("model");
  const std::string out_dir = *flags->Get("out");
  model::TrainCallbacks callbacks = ProgressCallbacks(log_every);
  if (options.adapters.enabled)
    return TrainAdaptersCommand(model_dir, out_dir, *flags, options, compute, callbacks);
  absl::StatusOr<model::ModelParameters> parameters = model::LoadModel(model_dir);
  if (!parameters.ok()) return Fail(parameters.status());
  absl::StatusOr<std::unique_ptr<model::Tokenizer>> tokenizer =
      model::LoadTokenizer(model_dir, parameters->config().vocab_size);
  if (!tokenizer.ok()) return Fail(tokenizer.status());
  absl::StatusOr<std::string> fallback = compute.FitToModel(parameters->config());
  if (!fallback.ok()) return Fail(fallback.status());
  if (!fallback->empty()) std::fprintf(stderr, "%s\n", fallback->c_str());
  options.device = compute.device;
  options.matmul_precision = compute.matmul_precision;

  // Which arithmetic the products use decides both speed and the last bits of the result.
  const char* precision = options.matmul_precision == model::MatMulPrecision::kBfloat16
                              ? "bf16 with fp32 accumulation (mixed precision)"
                              : "fp32";
  if (options.device == model::Device::kCuda) {
    std::printf("training on the GPU, weight products in %s\n", precision);
  } else {
    std::printf("training on %d CPU threads, weight products in %s\n", model::CpuThreads(),
                precision);
  }
  absl::StatusOr<model::TrainResult> result =
      model::Train(*parameters, **tokenizer, *flags->Get("data"), options, callbacks);
  if (!result.ok()) return Fail(result.status());
  if (absl::Status status = model::SaveModel(*parameters, out_dir); !status.ok()) {
    return Fail(status);
  }
  if (absl::Status status = CopyTokenizer(model_dir, out_dir); !status.ok()) return Fail(status);
  std::printf("checkpoint: %s\n", out_dir.c_str());
  std::printf("%s\n", JsonLine(TrainSummary(*result, options)).c_str());
  return 0;
}

}  // namespace fedmoe::client
