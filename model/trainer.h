// Local fine-tuning: the loop that [rounds] runs on each client between global models, and that
// `fedmoe-client train` runs by hand.
#ifndef FEDMOE_MODEL_TRAINER_H_
#define FEDMOE_MODEL_TRAINER_H_

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string_view>

#include "absl/status/statusor.h"
#include "kernels/device.h"
#include "model/backward.h"
#include "model/data.h"
#include "model/frozen_base.h"
#include "model/lora.h"
#include "model/optimizer.h"
#include "model/parameters.h"
#include "model/tokenizer.h"

namespace fedmoe::model {

// DP-SGD: record-level differential privacy for local training (dp_sgd.h, per_record_clipping.h).
// Each step takes every record of the training split with probability
// q = batch_size·gradient_accumulation / records, clips each record's gradient to clip_norm,
// adds Gaussian noise of standard deviation noise_multiplier·clip_norm to the sum and divides
// by the expected batch. Micro-batches then hold at most batch_size windows (a record is never
// split between two), and max_gradient_norm does not apply. Both backends clip (the CPU by Gram
// norms, the GPU by one backward pass per record), in fp32 products.
struct RecordPrivacyOptions {
  bool enabled = false;
  double noise_multiplier = 0;
  double clip_norm = 1.0;
  RecordUnit unit = RecordUnit::kParagraph;
  // A record longer than this many windows trains on its first ones only (counted, reported).
  int64_t max_record_windows = 64;
  // The training split already read as records of `unit` (the daemon reads them to price a
  // round before it trains); null: Train reads them.
  std::shared_ptr<const RecordSet> records;
};

// Under DP-SGD each record releases its gradient and its routing fractions (the share of its
// slots each expert took, per layer) as one vector of L2 norm at most record_clip_norm: the
// fractions are scaled to norm at most this share of it, the gradient clipped to the rest,
// √(1 − share²) of it. So the MoE merge still weights experts by use, at no extra privacy cost.
inline constexpr double kRoutingShareOfClipNorm = 0.25;

// The values one private step releases and noises: the trainable tensors and the routing sum
// ([layers, experts]).
int64_t PrivateReleaseValues(const ModelLayout& layout, const MoeConfig& config,
                             const TrainableSet& trainable);
// The same for any trained ranges (an adapter buffer's, adapted_model.h).
int64_t PrivateReleaseValues(const MoeConfig& config, std::span<const TrainedRange> trained);

// What a private run spent, for the site's ledger: `steps` Poisson-subsampled Gaussian steps
// at rate sampling_rate and multiplier noise_multiplier (the effective one the rounding to the
// noise grid leaves, dp_sgd.h), plus sampler_total_variation for the noise sampler's distance
// from its law (privacy/noise.h).
struct RecordPrivacySpend {
  RecordUnit unit = RecordUnit::kParagraph;
  int64_t records = 0;
  int64_t steps = 0;
  double sampling_rate = 0;
  double noise_multiplier = 0;
  double clip_norm = 0;
  double sampler_total_variation = 0;
  int64_t truncated_records = 0;
  // Records taken over all steps, and how many of them were clipped.
  int64_t records_sampled = 0;
  int64_t records_clipped = 0;
};

// Ditto's proximal term (Li et al. 2021): the loss gains coefficient·‖θ − anchor‖² over the
// trainable tensors, which keeps a site's personal model near the global model it was refreshed
// from (client/personal_model.h). A coefficient of 0 turns it off.
struct ProximalTerm {
  double coefficient = 0;
  // The same config as the trained parameters.
  std::shared_ptr<const ModelParameters> anchor;
};

// LoRA adapters over a frozen base instead of whole tensors (issue [peft]; TrainAdapters): what
// trains is then the adapters' B (and A under plain LoRA) and the routers, and `trainable` does
// not apply. Read from train.yaml's lora: block (client/train_options.h).
struct AdapterTrainingOptions {
  bool enabled = false;
  LoraConfig lora;
  // The frozen base's format; nullopt holds it as the checkpoint stores it.
  std::optional<WeightFormat> base_format;
};

// The defaults below are the one set both vocabularies share: train.yaml (`fedmoe-client train`)
// and a round policy's `training:` block (coordinator/round/round_policy.cc derives its defaults
// from a default TrainOptions), under the same key names.
struct TrainOptions {
  int64_t steps = 100;
  int64_t batch_size = 8;
  int64_t seq_len = 128;
  // Micro-batches per optimizer step.
  int64_t gradient_accumulation = 1;
  double learning_rate = 1e-3;
  // −1: min(100, steps / 10).
  int64_t warmup_steps = -1;
  Schedule schedule = Schedule::kCosine;
  double min_learning_rate_ratio = 0.1;
  AdamWOptions adamw;
  double max_gradient_norm = 1.0;
  // −1: the config's router_aux_loss_coef. (load_balance_coefficient in YAML.)
  double balance_coefficient = -1;
  TrainableSet trainable;
  // Of the weight products while training; validation always runs in fp32, so that its loss
  // means the same on every machine.
  MatMulPrecision matmul_precision = MatMulPrecision::kFloat32;
  // Where the steps run (training_backend.h). kCuda needs a library built with nvcc
  // (fedmoe_train links the CUDA backend then) and a GPU; it trains data-parallel on every
  // visible GPU (CUDA_VISIBLE_DEVICES chooses them).
  kernels::Device device = kernels::Device::kCpu;
  uint64_t seed = 0;
  // Validation every this many steps (0: only at the end), over at most this many batches.
  int64_t eval_every = 50;
  int64_t eval_batches = 8;
  double validation_fraction = 0.05;
  RecordPrivacyOptions record_privacy;
  ProximalTerm proximal;
  // The last this many experts of each layer are the site's private experts (model/personal.h):
  // the balance loss balances them as a group apart from the global ones (backward.h).
  int64_t private_experts = 0;
  // `fedmoe-client train` only; a round policy does not read it.
  AdapterTrainingOptions adapters;
};

// What a private run of `options` over `records` records will report once all its steps are
// taken (no records truncated or clipped yet): the daemon prices a round with it before it
// trains, and the run starts from it, so that the two cannot disagree.
RecordPrivacySpend PlannedRecordPrivacySpend(const ModelLayout& layout, const MoeConfig& config,
                                             const TrainOptions& options, int64_t records);
// The same for a run that releases `released_values` values a step (PrivateReleaseValues).
RecordPrivacySpend PlannedRecordPrivacySpend(int64_t released_values, const TrainOptions& options,
                                             int64_t records);

// The warmup a run takes: warmup_steps, or with −1, min(100, steps / 10). Inline: the
// coordinator resolves a round's warmup with it and does not link the trainer.
inline int64_t WarmupSteps(const TrainOptions& options) {
  return options.warmup_steps >= 0 ? options.warmup_steps
                                   : std::min<int64_t>(100, options.steps / 10);
}

struct StepReport {
  int64_t step = 0;  // 1-based
  int64_t steps = 0;
  double loss = 0;     // cross-entropy of this step, nats
  double balance = 0;  // mean L_bal over layers (1 = uniform)
  double learning_rate = 0;
  double gradient_norm = 0;  // before clipping
  double tokens_per_second = 0;
  double elapsed_seconds = 0;
};

struct TrainResult {
  int64_t steps = 0;
  // Mean cross-entropy over the last min(10, steps) steps.
  double train_loss = 0;
  // Cross-entropy on the validation split after the last step; NaN when it is empty.
  double val_loss = 0;
  double tokens_per_second = 0;
  int64_t tokens = 0;
  DataCounts data;
  // Routed token slots per [layer][expert] over all training forward passes: the client's
  // routing histogram, from which a federated update weights each expert (DESIGN §4).
  // Under DP-SGD the raw counts would reveal records' routing, so each record's routing
  // fractions are released with its gradient instead (a share kRoutingShareOfClipNorm of the
  // clip norm, noised with it) and this holds their noisy sum in slot units.
  std::vector<std::vector<int64_t>> expert_slots;
  // Set when options.record_privacy.enabled.
  std::optional<RecordPrivacySpend> record_privacy;
};

struct TrainCallbacks {
  std::function<void(const StepReport&)> on_step;
  std::function<void(int64_t step, double val_loss)> on_validation;
  std::function<void(std::string_view)> on_data_warning;
};

// OK when `device` can train a model of this config in this build: the CPU always; a GPU when
// the build has the CUDA kernels and they take the model (CheckCudaTakesModel).
absl::Status CheckDeviceTakesModel(kernels::Device device, const MoeConfig& config);

// Trains `parameters` in place on the directory's training split.
absl::StatusOr<TrainResult> Train(ModelParameters& parameters, const Tokenizer& tokenizer,
                                  const std::filesystem::path& data_directory,
                                  const TrainOptions& options,
                                  const TrainCallbacks& callbacks = {});

// Trains `adapters` over the frozen `base` on options.device (the CPU, or one GPU holding the base
// in its own format: cuda_training.h's CreateCudaAdapterBackend), as Train trains a model: the
// same loop, data, schedule, validation and DP-SGD (per-record clipping then covers every
// trained adapter value and router). options.trainable, matmul_precision and proximal are not
// taken: what trains is the adapters' (AdapterTrainedRanges), and the base's format sets the
// products.
absl::StatusOr<TrainResult> TrainAdapters(const FrozenBase& base, LoraAdapters& adapters,
                                          const Tokenizer& tokenizer,
                                          const std::filesystem::path& data_directory,
                                          const TrainOptions& options,
                                          const TrainCallbacks& callbacks = {});

// Mean cross-entropy over up to max_batches batches of the validation split (all with
// max_batches ≤ 0); NaN when the split is empty.
absl::StatusOr<double> ValidationLoss(const ModelParameters& parameters, const Tokenizer& tokenizer,
                                      const std::filesystem::path& data_directory,
                                      const DataOptions& data_options, int64_t max_batches);

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_TRAINER_H_
