#include "model/trainer.h"

#include <chrono>
#include <cmath>
#include <deque>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "kernels/device.h"
#include "model/adapted_model.h"
#include "model/dp_sgd.h"
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

absl::StatusOr<std::unique_ptr<TrainingBackend>> CreateBackend(ModelParameters& parameters,
                                                               const TrainOptions& options) {
  BackendOptions backend_options;
  backend_options.trainable = options.trainable;
  backend_options.adamw = options.adamw;
  backend_options.matmul_precision = options.matmul_precision;
  if (options.proximal.coefficient > 0) {
    if (options.proximal.anchor == nullptr) {
      return absl::InvalidArgumentError("a proximal term needs the model it pulls toward");
    }
    backend_options.proximal_coefficient = options.proximal.coefficient;
    backend_options.proximal_anchor = options.proximal.anchor->values();
  }
  if (options.device == kernels::Device::kCpu) {
    return CreateCpuTrainingBackend(parameters, backend_options);
  }
#ifdef FEDMOE_TRAIN_WITH_CUDA
  return CreateCudaTrainingBackend(parameters, backend_options);
#else
  return kernels::NoCudaKernels();
#endif
}

// DP-SGD's steps: each draws a Poisson sample of the training records, accumulates their
// clipped gradients in micro-batches of whole records, and noises and averages the sum.
class PrivateSteps {
 public:
  static absl::StatusOr<std::unique_ptr<PrivateSteps>> Create(
      const MoeConfig& config, std::vector<TrainedRange> trained, const Tokenizer& tokenizer,
      const std::filesystem::path& data_directory, const DataOptions& data_options,
      const TrainOptions& options) {
    const RecordPrivacyOptions& privacy = options.record_privacy;
    if (privacy.max_record_windows < 1) {
      return absl::InvalidArgumentError("max_record_windows must be at least 1");
    }
    if (options.trainable.embeddings) {
      return absl::InvalidArgumentError(
          "DP-SGD cannot train embeddings: an embedding row gathers from every record that uses "
          "its token, so per-record clipping does not bound it");
    }
    if (options.matmul_precision != MatMulPrecision::kFloat32) {
      return absl::InvalidArgumentError(
          "DP-SGD's per-record clipping needs fp32 products (matmul_precision: fp32 or auto)");
    }
    std::shared_ptr<const RecordSet> records = privacy.records;
    if (records == nullptr) {
      absl::StatusOr<RecordSet> read =
          ReadRecords(data_directory, tokenizer, data_options, privacy.unit);
      if (!read.ok()) return read.status();
      records = std::make_shared<const RecordSet>(std::move(*read));
    } else if (records->unit != privacy.unit) {
      return absl::InvalidArgumentError("the records given were read with another record unit");
    }
    if (records->records.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          data_directory.string(), " has no training record with text to learn from (unit: ",
          std::string(RecordUnitName(privacy.unit)), ")"));
    }
    if (options.trainable.first_trained_expert > 0) {
      return absl::InvalidArgumentError(
          "DP-SGD trains whole tensors; freezing some experts (a personal model's pass) is not "
          "supported under it");
    }
    const int64_t released_values = PrivateReleaseValues(config, trained);
    absl::StatusOr<GradientNoise> noise =
        GradientNoise::Create(privacy.noise_multiplier, privacy.clip_norm, released_values);
    if (!noise.ok()) return noise.status();
    absl::StatusOr<privacy::SecureRandom> sampling = privacy::SecureRandom::FromSystem();
    if (!sampling.ok()) return sampling.status();
    absl::StatusOr<privacy::SecureRandom> noising = privacy::SecureRandom::FromSystem();
    if (!noising.ok()) return noising.status();
    const auto record_count = static_cast<int64_t>(records->records.size());
    // The run's spend grows step by step from the plan's rate and multiplier.
    RecordPrivacySpend spend = PlannedRecordPrivacySpend(released_values, options, record_count);
    spend.steps = 0;
    spend.sampler_total_variation = 0;
    const double rate = spend.sampling_rate;
    for (const Record& record : records->records) {
      if (record.windows(options.seq_len) > privacy.max_record_windows) ++spend.truncated_records;
    }
    return std::unique_ptr<PrivateSteps>(new PrivateSteps(
        std::move(records), RecordSampler(record_count, rate, std::move(*sampling)),
        std::move(*noise), std::move(*noising), std::move(trained), released_values,
        rate * static_cast<double>(record_count), data_options.eos_token, config, options, spend));
  }

  // One step's gradient into `backend`, before the optimizer takes it. Returns the loss of the
  // records taken (mean cross-entropy over their predictions).
  absl::StatusOr<LossBreakdown> Accumulate(TrainingBackend& backend, BackwardOptions loss_options,
                                           int64_t& tokens) {
    absl::StatusOr<std::vector<int64_t>> taken = sampler_.Draw();
    if (!taken.ok()) return taken.status();
    // The loss is reported as a sum here, averaged below.
    loss_options.predictions_in_step = 1;
    loss_options.step_share = 1;
    LossBreakdown step;
    double balance_rows = 0;
    Batch batch;
    RecordRows rows;
    PrivateBatch released;
    released.routing_sum.assign(routing_total_.size(), 0.0);
    auto flush = [&]() -> absl::Status {
      if (batch.batch == 0) return absl::OkStatus();
      absl::StatusOr<LossBreakdown> loss = backend.AccumulateClippedGradients(
          batch, rows, loss_options, gradient_clip_norm_, routing_scale_, released);
      if (!loss.ok()) return loss.status();
      step.cross_entropy += loss->cross_entropy;
      step.predictions += batch.predictions;
      step.balance_per_layer += loss->balance_per_layer * static_cast<double>(rows.rows());
      balance_rows += static_cast<double>(rows.rows());
      for (const double norm : released.record_norms) {
        spend_.records_clipped += norm > gradient_clip_norm_ ? 1 : 0;
      }
      tokens += rows.rows();
      batch = Batch();
      rows = RecordRows();
      return absl::OkStatus();
    };
    for (const int64_t index : *taken) {
      const Record& record = records_->records[static_cast<size_t>(index)];
      const int64_t windows =
          std::min(record.windows(options_.seq_len), options_.record_privacy.max_record_windows);
      if (batch.batch > 0 && batch.batch + windows > options_.batch_size) {
        if (absl::Status status = flush(); !status.ok()) return status;
      }
      AppendRecordWindows(record, options_.seq_len, options_.record_privacy.max_record_windows,
                          pad_, batch, rows);
    }
    if (absl::Status status = flush(); !status.ok()) return status;
    spend_.records_sampled += static_cast<int64_t>(taken->size());

    const auto scale = static_cast<float>(1.0 / expected_batch_);
    if (absl::Status status = backend.UpdateStepGradients([&](std::span<float> gradients) {
          for (const TrainedRange& range : ranges_) {
            const std::span<float> tensor = gradients.subspan(static_cast<size_t>(range.offset),
                                                              static_cast<size_t>(range.size));
            if (absl::Status added = noise_.AddTo(tensor, noise_random_); !added.ok()) {
              return added;
            }
            for (float& value : tensor) value *= scale;
          }
          return absl::OkStatus();
        });
        !status.ok()) {
      return status;
    }
    // The routing sum is released with the same noise, as the gradient's last values.
    std::vector<float> routing(released.routing_sum.begin(), released.routing_sum.end());
    if (absl::Status status = noise_.AddTo(routing, noise_random_); !status.ok()) return status;
    for (size_t i = 0; i < routing.size(); ++i) routing_total_[i] += routing[i];
    ++spend_.steps;
    spend_.sampler_total_variation +=
        static_cast<double>(released_values_) * privacy::TabulatedNoise::kDrawTotalVariation;
    if (step.predictions > 0) step.cross_entropy /= static_cast<double>(step.predictions);
    if (balance_rows > 0) step.balance_per_layer /= balance_rows;
    return step;
  }

  const RecordPrivacySpend& spend() const { return spend_; }
  const DataCounts& counts() const { return records_->counts; }

  // The routing histogram the update carries: the run's noised routing sums, as slot counts
  // (each record's part summed to one per layer, times the slots a one-window record routes),
  // negatives read as zero.
  std::vector<std::vector<int64_t>> NoisyExpertSlots() const {
    const auto experts = static_cast<size_t>(config_.num_local_experts);
    const double slots_per_unit =
        static_cast<double>(options_.seq_len * config_.num_experts_per_tok) / routing_scale_;
    std::vector<std::vector<int64_t>> slots(static_cast<size_t>(config_.num_hidden_layers),
                                            std::vector<int64_t>(experts, 0));
    for (size_t i = 0; i < routing_total_.size(); ++i) {
      slots[i / experts][i % experts] =
          std::llround(std::max(0.0, routing_total_[i]) * slots_per_unit);
    }
    return slots;
  }

 private:
  PrivateSteps(std::shared_ptr<const RecordSet> records, RecordSampler sampler, GradientNoise noise,
               privacy::SecureRandom noise_random, std::vector<TrainedRange> ranges,
               int64_t released_values, double expected_batch, int32_t pad, const MoeConfig& config,
               const TrainOptions& options, RecordPrivacySpend spend)
      : records_(std::move(records)),
        sampler_(std::move(sampler)),
        noise_(std::move(noise)),
        noise_random_(std::move(noise_random)),
        ranges_(std::move(ranges)),
        released_values_(released_values),
        expected_batch_(expected_batch),
        pad_(pad),
        config_(config),
        options_(options),
        spend_(spend),
        gradient_clip_norm_(spend.clip_norm *
                            std::sqrt(1 - kRoutingShareOfClipNorm * kRoutingShareOfClipNorm)),
        routing_scale_(kRoutingShareOfClipNorm * spend.clip_norm /
                       std::sqrt(static_cast<double>(config.num_hidden_layers))),
        routing_total_(static_cast<size_t>(config.num_hidden_layers * config.num_local_experts),
                       0.0) {}

  std::shared_ptr<const RecordSet> records_;
  RecordSampler sampler_;
  GradientNoise noise_;
  privacy::SecureRandom noise_random_;
  std::vector<TrainedRange> ranges_;
  int64_t released_values_;
  double expected_batch_;
  // Fills a record's last window: its rows carry no loss, and causal attention keeps them out
  // of the record's own positions.
  int32_t pad_;
  MoeConfig config_;
  TrainOptions options_;
  RecordPrivacySpend spend_;
  // One record's release is its gradient clipped to gradient_clip_norm_ and its routing
  // fractions times routing_scale_ (L2 at most share·C): together at most C, the sensitivity
  // the noise is sized for.
  double gradient_clip_norm_;
  double routing_scale_;
  std::vector<double> routing_total_;
};

}  // namespace

RecordPrivacySpend PlannedRecordPrivacySpend(const ModelLayout& layout, const MoeConfig& config,
                                             const TrainOptions& options, int64_t records) {
  return PlannedRecordPrivacySpend(PrivateReleaseValues(layout, config, options.trainable), options,
                                   records);
}

RecordPrivacySpend PlannedRecordPrivacySpend(int64_t released, const TrainOptions& options,
                                             int64_t records) {
  const RecordPrivacyOptions& privacy = options.record_privacy;
  const double expected_batch =
      static_cast<double>(options.batch_size * options.gradient_accumulation);
  return {.unit = privacy.unit,
          .records = records,
          .steps = options.steps,
          .sampling_rate =
              std::min(1.0, expected_batch / static_cast<double>(std::max<int64_t>(records, 1))),
          .noise_multiplier = GradientNoise::EffectiveNoiseMultiplier(privacy.noise_multiplier,
                                                                      privacy.clip_norm, released),
          .clip_norm = privacy.clip_norm,
          .sampler_total_variation = static_cast<double>(options.steps) *
                                     static_cast<double>(released) *
                                     privacy::TabulatedNoise::kDrawTotalVariation};
}

int64_t PrivateReleaseValues(const ModelLayout& layout, const MoeConfig& config,
                             const TrainableSet& trainable) {
  int64_t values = config.num_hidden_layers * config.num_local_experts;
  for (const TensorSpec& spec : layout.tensors()) {
    if (trainable.Includes(spec.role)) values += spec.size;
  }
  return values;
}

int64_t PrivateReleaseValues(const MoeConfig& config, std::span<const TrainedRange> trained) {
  int64_t values = config.num_hidden_layers * config.num_local_experts;
  for (const TrainedRange& range : trained) values += range.size;
  return values;
}

absl::Status CheckDeviceTakesModel(kernels::Device device, const MoeConfig& config) {
  if (device == kernels::Device::kCpu) return absl::OkStatus();
#ifdef FEDMOE_TRAIN_WITH_CUDA
  return CheckCudaTakesModel(config);
#else
  (void)config;
  return kernels::NoCudaKernels();
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

namespace {

// The loop both Train and TrainAdapters run, over a backend that trains `trained` of its buffer.
absl::StatusOr<TrainResult> RunTraining(TrainingBackend& backend, const MoeConfig& config,
                                        std::vector<TrainedRange> trained,
                                        const Tokenizer& tokenizer,
                                        const std::filesystem::path& data_directory,
                                        const TrainOptions& options,
                                        const TrainCallbacks& callbacks) {
  if (absl::Status status = CheckOptions(config, options); !status.ok()) return status;
  DataOptions data_options;
  data_options.seq_len = options.seq_len;
  data_options.batch_size = options.batch_size;
  data_options.validation_fraction = options.validation_fraction;
  data_options.seed = options.seed;
  data_options.eos_token = static_cast<int32_t>(config.eos_token_id);
  data_options.warn = callbacks.on_data_warning;
  // Exactly one of the two feeds the steps.
  std::unique_ptr<DataStream> stream;
  std::unique_ptr<PrivateSteps> private_steps;
  if (options.record_privacy.enabled) {
    absl::StatusOr<std::unique_ptr<PrivateSteps>> steps = PrivateSteps::Create(
        config, std::move(trained), tokenizer, data_directory, data_options, options);
    if (!steps.ok()) return steps.status();
    private_steps = std::move(*steps);
    if (const int64_t truncated = private_steps->spend().truncated_records;
        truncated > 0 && callbacks.on_data_warning) {
      callbacks.on_data_warning(absl::StrCat(
          truncated, " records are longer than ", options.record_privacy.max_record_windows,
          " windows of ", options.seq_len, " tokens and train on their first windows only"));
    }
  } else {
    absl::StatusOr<std::unique_ptr<DataStream>> opened =
        DataStream::Open(data_directory, tokenizer, Split::kTrain, data_options);
    if (!opened.ok()) return opened.status();
    stream = std::move(*opened);
  }

  const int64_t warmup = WarmupSteps(options);
  BackwardOptions loss_options;
  loss_options.balance_coefficient =
      options.balance_coefficient >= 0 ? options.balance_coefficient : config.router_aux_loss_coef;
  loss_options.private_experts = options.private_experts;
  loss_options.step_share = 1.0 / static_cast<double>(options.gradient_accumulation);

  std::vector<Batch> micro_batches(static_cast<size_t>(options.gradient_accumulation));
  std::deque<double> recent_losses;
  TrainResult result;
  const Clock::time_point start = Clock::now();
  // Throughput counts training only, not the periodic validation passes.
  double validation_seconds = 0;

  for (int64_t step = 0; step < options.steps; ++step) {
    LossBreakdown step_loss;
    if (private_steps != nullptr) {
      absl::StatusOr<LossBreakdown> loss =
          private_steps->Accumulate(backend, loss_options, result.tokens);
      if (!loss.ok()) return loss.status();
      step_loss = *loss;
    } else {
      // The step's mean is over all its micro-batches' predictions, so read them all first.
      int64_t predictions = 0;
      for (Batch& batch : micro_batches) {
        absl::StatusOr<bool> more = stream->Next(batch);
        if (!more.ok()) return more.status();
        predictions += batch.predictions;
        result.tokens += batch.batch * batch.seq_len;
      }
      loss_options.predictions_in_step = static_cast<double>(std::max<int64_t>(predictions, 1));
      for (const Batch& batch : micro_batches) {
        absl::StatusOr<LossBreakdown> loss = backend.AccumulateGradients(batch, loss_options);
        if (!loss.ok()) return loss.status();
        step_loss.cross_entropy += loss->cross_entropy;
        step_loss.balance_per_layer += loss->balance_per_layer * loss_options.step_share;
      }
    }
    const double lr = LearningRate(step, options.steps, warmup, options.learning_rate,
                                   options.schedule, options.min_learning_rate_ratio);
    // Under DP-SGD the noised gradient is the private release; clipping it again would only
    // shrink the noise's signal further, so the step takes it as it is.
    absl::StatusOr<double> norm =
        backend.ApplyGradients(lr, private_steps != nullptr ? 0.0 : options.max_gradient_norm);
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
          MeanValidationLoss([&](const Batch& batch) { return backend.Evaluate(batch); }, tokenizer,
                             data_directory, data_options, options.eval_batches);
      validation_seconds += SecondsSince(validation_start);
      if (!val.ok()) return val.status();
      result.val_loss = *val;
      if (callbacks.on_validation) callbacks.on_validation(step + 1, *val);
    }
  }
  if (private_steps != nullptr) {
    result.expert_slots = private_steps->NoisyExpertSlots();
    result.record_privacy = private_steps->spend();
    result.data = private_steps->counts();
  } else {
    absl::StatusOr<std::vector<std::vector<int64_t>>> slots = backend.ExpertSlots();
    if (!slots.ok()) return slots.status();
    result.expert_slots = std::move(*slots);
    result.data = stream->counts();
  }
  result.steps = options.steps;
  result.train_loss = std::accumulate(recent_losses.begin(), recent_losses.end(), 0.0) /
                      static_cast<double>(recent_losses.size());
  result.tokens_per_second =
      static_cast<double>(result.tokens) / (SecondsSince(start) - validation_seconds);
  return result;
}

}  // namespace

absl::StatusOr<TrainResult> Train(ModelParameters& parameters, const Tokenizer& tokenizer,
                                  const std::filesystem::path& data_directory,
                                  const TrainOptions& options, const TrainCallbacks& callbacks) {
  if (absl::Status status = CheckOptions(parameters.config(), options); !status.ok()) {
    return status;
  }
  absl::StatusOr<std::unique_ptr<TrainingBackend>> backend = CreateBackend(parameters, options);
  if (!backend.ok()) return backend.status();
  absl::StatusOr<TrainResult> result = RunTraining(
      **backend, parameters.config(), TrainedRanges(parameters.layout(), options.trainable),
      tokenizer, data_directory, options, callbacks);
  if (!result.ok()) return result.status();
  if (absl::Status status = (*backend)->CopyParametersTo(parameters); !status.ok()) return status;
  return result;
}

absl::StatusOr<TrainResult> TrainAdapters(const FrozenBase& base, LoraAdapters& adapters,
                                          const Tokenizer& tokenizer,
                                          const std::filesystem::path& data_directory,
                                          const TrainOptions& options,
                                          const TrainCallbacks& callbacks) {
  BackendOptions backend_options;
  backend_options.adamw = options.adamw;
  absl::StatusOr<std::unique_ptr<TrainingBackend>> backend;
  if (options.device == kernels::Device::kCpu) {
    backend = CreateCpuAdapterBackend(base, adapters, backend_options);
  } else {
#ifdef FEDMOE_TRAIN_WITH_CUDA
    backend_options.devices = 1;
    backend = CreateCudaAdapterBackend(base, adapters, backend_options);
#else
    return kernels::NoCudaKernels();
#endif
  }
  if (!backend.ok()) return backend.status();
  absl::StatusOr<TrainResult> result =
      RunTraining(**backend, base.config(), AdapterTrainedRanges(adapters), tokenizer,
                  data_directory, options, callbacks);
  if (!result.ok()) return result.status();
  if (absl::Status status = (*backend)->CopyAdaptersTo(adapters); !status.ok()) return status;
  return result;
}

}  // namespace fedmoe::model
