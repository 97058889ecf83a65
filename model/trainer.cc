#include "model/trainer.h"

#include <chrono>
#include <cmath>
#include <deque>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "model/training_backend.h"
#ifdef FEDMOE_TRAIN_WITH_CUDA
#include "model/cuda_training.h"
#endif

namespace fedmoe::model {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

absl::Status CheckOptions(const MoeConfig& config, const TrainOptions& options) {
  if (options.steps < 1) return absl::InvalidArgumentError("--steps must be at least 1");
  if (options.batch_size < 1) return absl::InvalidArgumentError("--batch-size must be at least 1");
  if (options.seq_len < 2 || options.seq_len > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("--seq-len must be in [2, ",
                                                   config.max_position_embeddings,
                                                   "] (max_position_embeddings)"));
  }
  if (options.gradient_accumulation < 1) {
    return absl::InvalidArgumentError("gradient accumulation must be at least 1");
  }
  if (!(options.learning_rate > 0) || !std::isfinite(options.learning_rate)) {
    return absl::InvalidArgumentError("--lr must be a positive number");
  }
  if (config.eos_token_id < 0) {
    return absl::InvalidArgumentError(
        "config.json has no eos_token_id, which training needs to separate documents");
  }
  return absl::OkStatus();
}

// The mean cross-entropy over up to max_batches validation batches, each scored by `evaluate`.
absl::StatusOr<double> MeanValidationLoss(
    const std::function<absl::StatusOr<LossSum>(const Batch&)>& evaluate,
    const Tokenizer& tokenizer, const std::filesystem::path& data_directory,
    const DataOptions& data_options, int64_t max_batches) {
  DataOptions options = data_options;
  options.warn = nullptr;
  absl::StatusOr<std::unique_ptr<DataStream>> stream =
      DataStream::Open(data_directory, tokenizer, Split::kValidation, options);
  if (!stream.ok()) return stream.status();
  Batch batch;
  double total = 0;
  int64_t predictions = 0;
  for (int64_t taken = 0; max_batches <= 0 || taken < max_batches; ++taken) {
    absl::StatusOr<bool> more = (*stream)->Next(batch);
    if (!more.ok()) return more.status();
    if (!*more) break;
    absl::StatusOr<LossSum> sum = evaluate(batch);
    if (!sum.ok()) return sum.status();
    total += sum->total;
    predictions += sum->predictions;
  }
  return predictions > 0 ? total / static_cast<double>(predictions)
                         : std::numeric_limits<double>::quiet_NaN();
}

#ifndef FEDMOE_TRAIN_WITH_CUDA
absl::Status NoCudaKernels() {
  return absl::FailedPreconditionError(
      "this build has no CUDA kernels (nvcc was not found when it was built); use --device cpu");
}
#endif

absl::StatusOr<std::unique_ptr<TrainingBackend>> CreateBackend(ModelParameters& parameters,
                                                               const TrainOptions& options) {
  const BackendOptions backend_options{.trainable = options.trainable,
                                       .adamw = options.adamw,
                                       .matmul_precision = options.matmul_precision};
  if (options.device == kernels::Device::kCpu) {
    return CreateCpuTrainingBackend(parameters, backend_options);
  }
#ifdef FEDMOE_TRAIN_WITH_CUDA
  return CreateCudaTrainingBackend(parameters, backend_options);
#else
  return NoCudaKernels();
#endif
}

}  // namespace

absl::Status CheckDeviceTakesModel(kernels::Device device, const MoeConfig& config) {
  if (device == kernels::Device::kCpu) return absl::OkStatus();
#ifdef FEDMOE_TRAIN_WITH_CUDA
  return CheckCudaTakesModel(config);
#else
  (void)config;
  return NoCudaKernels();
#endif
}

absl::StatusOr<double> ValidationLoss(const ModelParameters& parameters, const Tokenizer& tokenizer,
                                      const std::filesystem::path& data_directory,
                                      const DataOptions& data_options, int64_t max_batches) {
  ForwardPass pass;
  return MeanValidationLoss(
      [&](const Batch& batch) -> absl::StatusOr<LossSum> {
        if (absl::Status status =
                Forward(parameters, batch.tokens, batch.batch, batch.seq_len, pass);
            !status.ok()) {
          return status;
        }
        return CrossEntropy(pass, batch.targets, parameters.config().vocab_size);
      },
      tokenizer, data_directory, data_options, max_batches);
}

absl::StatusOr<TrainResult> Train(ModelParameters& parameters, const Tokenizer& tokenizer,
                                  const std::filesystem::path& data_directory,
                                  const TrainOptions& options, const TrainCallbacks& callbacks) {
  const MoeConfig& config = parameters.config();
  if (absl::Status status = CheckOptions(config, options); !status.ok()) return status;
  DataOptions data_options;
  data_options.seq_len = options.seq_len;
  data_options.batch_size = options.batch_size;
  data_options.validation_fraction = options.validation_fraction;
  data_options.seed = options.seed;
  data_options.eos_token = static_cast<int32_t>(config.eos_token_id);
  data_options.warn = callbacks.on_data_warning;
  absl::StatusOr<std::unique_ptr<DataStream>> stream =
      DataStream::Open(data_directory, tokenizer, Split::kTrain, data_options);
  if (!stream.ok()) return stream.status();

  const int64_t warmup = WarmupSteps(options);
  BackwardOptions loss_options;
  loss_options.balance_coefficient =
      options.balance_coefficient >= 0 ? options.balance_coefficient : config.router_aux_loss_coef;
  loss_options.step_share = 1.0 / static_cast<double>(options.gradient_accumulation);

  absl::StatusOr<std::unique_ptr<TrainingBackend>> backend = CreateBackend(parameters, options);
  if (!backend.ok()) return backend.status();
  std::vector<Batch> micro_batches(static_cast<size_t>(options.gradient_accumulation));
  std::deque<double> recent_losses;
  TrainResult result;
  const Clock::time_point start = Clock::now();
  // Throughput counts training only, not the periodic validation passes.
  double validation_seconds = 0;

  for (int64_t step = 0; step < options.steps; ++step) {
    // The step's mean is over all its micro-batches' predictions, so read them all first.
    int64_t predictions = 0;
    for (Batch& batch : micro_batches) {
      absl::StatusOr<bool> more = (*stream)->Next(batch);
      if (!more.ok()) return more.status();
      predictions += batch.predictions;
      result.tokens += batch.batch * batch.seq_len;
    }
    loss_options.predictions_in_step = static_cast<double>(std::max<int64_t>(predictions, 1));
    LossBreakdown step_loss;
    for (const Batch& batch : micro_batches) {
      absl::StatusOr<LossBreakdown> loss = (*backend)->AccumulateGradients(batch, loss_options);
      if (!loss.ok()) return loss.status();
      step_loss.cross_entropy += loss->cross_entropy;
      step_loss.balance_per_layer += loss->balance_per_layer * loss_options.step_share;
    }
    const double lr = LearningRate(step, options.steps, warmup, options.learning_rate,
                                   options.schedule, options.min_learning_rate_ratio);
    absl::StatusOr<double> norm = (*backend)->ApplyGradients(lr, options.max_gradient_norm);
    if (!norm.ok()) return norm.status();

    recent_losses.push_back(step_loss.cross_entropy);
    if (recent_losses.size() > 10) recent_losses.pop_front();
    const double elapsed = SecondsSince(start) - validation_seconds;
    if (callbacks.on_step) {
      callbacks.on_step(
          StepReport{.step = step + 1,
                     .steps = options.steps,
                     .loss = step_loss.cross_entropy,
                     .balance = step_loss.balance_per_layer,
                     .learning_rate = lr,
                     .gradient_norm = *norm,
                     .tokens_per_second = static_cast<double>(result.tokens) / elapsed,
                     .elapsed_seconds = elapsed});
    }
    const bool last = step + 1 == options.steps;
    if (last || (options.eval_every > 0 && (step + 1) % options.eval_every == 0)) {
      const Clock::time_point validation_start = Clock::now();
      absl::StatusOr<double> val =
          MeanValidationLoss([&](const Batch& batch) { return (*backend)->Evaluate(batch); },
                             tokenizer, data_directory, data_options, options.eval_batches);
      validation_seconds += SecondsSince(validation_start);
      if (!val.ok()) return val.status();
      result.val_loss = *val;
      if (callbacks.on_validation) callbacks.on_validation(step + 1, *val);
    }
  }
  if (absl::Status status = (*backend)->CopyParametersTo(parameters); !status.ok()) return status;
  absl::StatusOr<std::vector<std::vector<int64_t>>> slots = (*backend)->ExpertSlots();
  if (!slots.ok()) return slots.status();
  result.expert_slots = std::move(*slots);
  result.steps = options.steps;
  result.train_loss = std::accumulate(recent_losses.begin(), recent_losses.end(), 0.0) /
                      static_cast<double>(recent_losses.size());
  result.tokens_per_second =
      static_cast<double>(result.tokens) / (SecondsSince(start) - validation_seconds);
  result.data = (*stream)->counts();
  return result;
}

}  // namespace fedmoe::model
