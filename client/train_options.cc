#include "client/train_options.h"

#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace fedmoe::client {

void ReadTrainOptions(config::YamlConfigReader& reader, const std::string& prefix,
                      model::TrainOptions* options, int64_t* threads, ComputeSettings* compute) {
  auto key = [&prefix](const char* name) { return prefix + name; };
  auto at_least = [&](const char* name, int64_t value, int64_t minimum) {
    if (value < minimum) reader.Invalid(key(name), "must be at least " + std::to_string(minimum));
  };
  reader.Read(key("steps"), &options->steps);
  at_least("steps", options->steps, 1);
  reader.Read(key("batch_size"), &options->batch_size);
  at_least("batch_size", options->batch_size, 1);
  reader.Read(key("seq_len"), &options->seq_len);
  at_least("seq_len", options->seq_len, 2);
  reader.Read(key("gradient_accumulation"), &options->gradient_accumulation);
  at_least("gradient_accumulation", options->gradient_accumulation, 1);
  reader.Read(key("learning_rate"), &options->learning_rate);
  if (!(options->learning_rate > 0)) reader.Invalid(key("learning_rate"), "must be positive");
  reader.Read(key("warmup_steps"), &options->warmup_steps);
  std::string schedule = options->schedule == model::Schedule::kCosine ? "cosine" : "constant";
  reader.Read(key("schedule"), &schedule);
  if (schedule == "cosine") {
    options->schedule = model::Schedule::kCosine;
  } else if (schedule == "constant") {
    options->schedule = model::Schedule::kConstant;
  } else {
    reader.Invalid(key("schedule"), "must be cosine or constant");
  }
  const std::string ratio_key = reader.Renamed(
      key("min_learning_rate_ratio"), key("min_learning_rate"), "as a share of learning_rate");
  if (ratio_key == key("min_learning_rate_ratio")) {
    reader.Read(ratio_key, &options->min_learning_rate_ratio);
  } else {
    double min_learning_rate = options->min_learning_rate_ratio * options->learning_rate;
    reader.Read(ratio_key, &min_learning_rate);
    options->min_learning_rate_ratio = min_learning_rate / options->learning_rate;
  }
  if (!(options->min_learning_rate_ratio >= 0 && options->min_learning_rate_ratio <= 1)) {
    reader.Invalid(ratio_key, "must be in [0, 1] (of learning_rate)");
  }
  reader.Read(key("weight_decay"), &options->adamw.weight_decay);
  if (options->adamw.weight_decay < 0) reader.Invalid(key("weight_decay"), "must not be negative");
  reader.Read(key("beta1"), &options->adamw.beta1);
  reader.Read(key("beta2"), &options->adamw.beta2);
  reader.Read(key("epsilon"), &options->adamw.epsilon);
  if (!(options->adamw.epsilon > 0)) reader.Invalid(key("epsilon"), "must be positive");
  for (const auto& [name, beta] :
       {std::pair{"beta1", options->adamw.beta1}, std::pair{"beta2", options->adamw.beta2}}) {
    if (!(beta >= 0 && beta < 1)) reader.Invalid(key(name), "must be in [0, 1)");
  }
  reader.Read(reader.Renamed(key("max_gradient_norm"), key("gradient_clip_norm")),
              &options->max_gradient_norm);
  const std::string balance =
      reader.Renamed(key("load_balance_coefficient"), key("balance_coefficient"));
  reader.Read(balance, &options->balance_coefficient);
  if (options->balance_coefficient < 0 && options->balance_coefficient != -1) {
    reader.Invalid(balance, "must be -1 (the model's router_aux_loss_coef) or at least 0");
  }
  std::vector<std::string> trainable;
  reader.Read(key("trainable"), &trainable);
  if (!trainable.empty()) {
    absl::StatusOr<model::TrainableSet> set =
        model::TrainableSet::Parse(absl::StrJoin(trainable, ","));
    if (set.ok()) {
      options->trainable = *set;
    } else {
      reader.Invalid(key("trainable"), std::string(set.status().message()));
    }
  }
  auto seed = static_cast<int64_t>(options->seed);
  reader.Read(key("seed"), &seed);
  at_least("seed", seed, 0);
  options->seed = static_cast<uint64_t>(seed);
  reader.Read(key("eval_every"), &options->eval_every);
  at_least("eval_every", options->eval_every, 0);
  reader.Read(key("eval_batches"), &options->eval_batches);
  reader.Read(key("validation_fraction"), &options->validation_fraction);
  if (!(options->validation_fraction >= 0 && options->validation_fraction < 1)) {
    reader.Invalid(key("validation_fraction"), "must be in [0, 1)");
  }
  // DP-SGD: on with a positive multiplier.
  reader.Read(key("record_noise_multiplier"), &options->record_privacy.noise_multiplier);
  if (!(options->record_privacy.noise_multiplier >= 0) ||
      !std::isfinite(options->record_privacy.noise_multiplier)) {
    reader.Invalid(key("record_noise_multiplier"), "must be 0 (no DP-SGD) or positive");
  }
  options->record_privacy.enabled = options->record_privacy.noise_multiplier > 0;
  reader.Read(key("record_clip_norm"), &options->record_privacy.clip_norm);
  if (!(options->record_privacy.clip_norm > 0) ||
      !std::isfinite(options->record_privacy.clip_norm)) {
    reader.Invalid(key("record_clip_norm"), "must be positive");
  }
  std::string unit(model::RecordUnitName(options->record_privacy.unit));
  reader.Read(key("record_unit"), &unit);
  if (absl::StatusOr<model::RecordUnit> parsed = model::ParseRecordUnit(unit); parsed.ok()) {
    options->record_privacy.unit = *parsed;
  } else {
    reader.Invalid(key("record_unit"), std::string(parsed.status().message()));
  }
  reader.Read(key("max_record_windows"), &options->record_privacy.max_record_windows);
  at_least("max_record_windows", options->record_privacy.max_record_windows, 1);
  reader.Read(key("threads"), threads);
  at_least("threads", *threads, 0);
  ComputeSettings settings;
  ComputeSettings& resolved = compute != nullptr ? *compute : settings;
  ReadComputeSettings(reader, prefix, &resolved);
  options->device = resolved.device;
  options->matmul_precision = resolved.matmul_precision;
  // Per-record clipping runs in fp32: an automatic choice yields to it (the name changes, so
  // that a later Resolve() agrees), an explicit bf16 is an error.
  if (options->record_privacy.enabled) {
    if (resolved.matmul_precision_name == "auto") {
      resolved.matmul_precision_name = "fp32";
      resolved.matmul_precision = options->matmul_precision = model::MatMulPrecision::kFloat32;
    } else if (options->matmul_precision != model::MatMulPrecision::kFloat32) {
      reader.Invalid(key("matmul_precision"),
                     "DP-SGD (record_noise_multiplier > 0) needs fp32 products");
    }
  }
}

void ReadAdapterTrainingOptions(config::YamlConfigReader& reader, const std::string& prefix,
                                model::TrainOptions* options) {
  const std::string block = prefix + "lora.";
  model::AdapterTrainingOptions& adapters = options->adapters;
  reader.Read(block + "enabled", &adapters.enabled);
  reader.Read(block + "rank", &adapters.lora.rank);
  reader.Read(block + "alpha", &adapters.lora.alpha);
  std::vector<std::string> targets;
  reader.Read(block + "targets", &targets);
  if (!targets.empty()) {
    absl::StatusOr<std::vector<model::LoraModule>> parsed =
        model::ParseLoraTargets(absl::StrJoin(targets, ","));
    if (parsed.ok()) {
      adapters.lora.targets = *std::move(parsed);
    } else {
      reader.Invalid(block + "targets", std::string(parsed.status().message()));
    }
  }
  bool ffa = !adapters.lora.train_a;
  reader.Read(block + "ffa", &ffa);
  adapters.lora.train_a = !ffa;
  auto seed = static_cast<int64_t>(adapters.lora.seed);
  reader.Read(block + "seed", &seed);
  if (seed < 0) reader.Invalid(block + "seed", "must be at least 0");
  adapters.lora.seed = static_cast<uint64_t>(seed);
  if (absl::Status status = adapters.lora.Validate(); !status.ok()) {
    reader.Invalid(block + "rank", std::string(status.message()));
  }
  std::string base_format = "stored";
  reader.Read(block + "base_format", &base_format);
  if (base_format == "stored") {
    adapters.base_format.reset();
  } else if (absl::StatusOr<model::WeightFormat> format = model::ParseWeightFormat(base_format);
             format.ok()) {
    adapters.base_format = *format;
  } else {
    reader.Invalid(block + "base_format", "must be stored, fp32, bf16 or int8");
  }
}

absl::Status ComputeSettings::Resolve() {
  absl::StatusOr<model::Device> resolved_device = model::ResolveDevice(device_name);
  if (!resolved_device.ok()) return resolved_device.status();
  absl::StatusOr<model::MatMulPrecision> precision =
      model::ResolveMatMulPrecision(matmul_precision_name, *resolved_device);
  if (!precision.ok()) return precision.status();
  device = *resolved_device;
  matmul_precision = *precision;
  return absl::OkStatus();
}

absl::StatusOr<std::string> ComputeSettings::FitToModel(const model::MoeConfig& config) {
  const absl::Status takes = model::CheckDeviceTakesModel(device, config);
  if (takes.ok()) return std::string();
  if (device_name != "auto") {
    return absl::Status(takes.code(), absl::StrCat("device ", device_name, ": ", takes.message()));
  }
  absl::StatusOr<model::MatMulPrecision> precision =
      model::ResolveMatMulPrecision(matmul_precision_name, model::Device::kCpu);
  if (!precision.ok()) return precision.status();
  device = model::Device::kCpu;
  matmul_precision = *precision;
  return absl::StrCat("training on the CPU: the GPU cannot train this model (", takes.message(),
                      ")");
}

void ReadComputeSettings(config::YamlConfigReader& reader, const std::string& prefix,
                         ComputeSettings* settings) {
  reader.Read(prefix + "device", &settings->device_name);
  reader.Read(prefix + "matmul_precision", &settings->matmul_precision_name);
  const absl::StatusOr<model::Device> device = model::ResolveDevice(settings->device_name);
  if (!device.ok()) reader.Invalid(prefix + "device", std::string(device.status().message()));
  // A precision is checked even when the device is at fault, so both errors come at once.
  const absl::StatusOr<model::MatMulPrecision> precision = model::ResolveMatMulPrecision(
      settings->matmul_precision_name, device.ok() ? *device : model::Device::kCpu);
  if (!precision.ok()) {
    reader.Invalid(prefix + "matmul_precision", std::string(precision.status().message()));
  }
  if (device.ok() && precision.ok()) {
    settings->device = *device;
    settings->matmul_precision = *precision;
  }
}

}  // namespace fedmoe::client
