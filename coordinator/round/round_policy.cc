#include "coordinator/round/round_policy.h"

#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "model/trainer.h"

namespace fedmoe::coordinator {
namespace {

std::string Duration(absl::Duration duration) { return absl::FormatDuration(duration); }

}  // namespace

v1::LocalTrainingConfig DefaultLocalTraining() {
  // The one set of defaults train.yaml documents (model::TrainOptions), with the autos a round
  // can resolve here: the warmup from the steps.
  const model::TrainOptions defaults;
  v1::LocalTrainingConfig training;
  training.set_steps(static_cast<uint32_t>(defaults.steps));
  training.set_batch_size(static_cast<uint32_t>(defaults.batch_size));
  training.set_seq_len(static_cast<uint32_t>(defaults.seq_len));
  training.set_gradient_accumulation(static_cast<uint32_t>(defaults.gradient_accumulation));
  training.set_learning_rate(defaults.learning_rate);
  training.set_min_learning_rate(defaults.min_learning_rate_ratio * defaults.learning_rate);
  training.set_warmup_steps(static_cast<uint32_t>(model::WarmupSteps(defaults)));
  training.set_schedule(defaults.schedule == model::Schedule::kConstant
                            ? v1::LocalTrainingConfig::LEARNING_RATE_SCHEDULE_CONSTANT
                            : v1::LocalTrainingConfig::LEARNING_RATE_SCHEDULE_COSINE);
  training.set_weight_decay(defaults.adamw.weight_decay);
  training.set_adam_beta1(defaults.adamw.beta1);
  training.set_adam_beta2(defaults.adamw.beta2);
  training.set_adam_epsilon(defaults.adamw.epsilon);
  training.set_gradient_clip_norm(defaults.max_gradient_norm);
  // −1, the model's router_aux_loss_coef, which each client's trainer looks up.
  training.set_load_balance_coefficient(defaults.balance_coefficient);
  training.set_seed(defaults.seed);
  // DP-SGD stays off unless the policy sets a multiplier; its clip norm has the trainer's default.
  training.set_record_noise_multiplier(0);
  training.set_record_clip_norm(defaults.record_privacy.clip_norm);
  return training;
}

namespace {

void ReadTraining(config::YamlConfigReader& reader, v1::LocalTrainingConfig* training) {
  auto read_count = [&reader](const char* key, int64_t minimum, int64_t maximum, uint32_t value,
                              auto set) {
    auto number = static_cast<int64_t>(value);
    reader.Read(key, &number);
    if (number < minimum || number > maximum) {
      reader.Invalid(key, absl::StrCat("must be between ", minimum, " and ", maximum));
      return;
    }
    set(static_cast<uint32_t>(number));
  };
  read_count("rounds.training.steps", 1, 1'000'000, training->steps(),
             [&](uint32_t v) { training->set_steps(v); });
  read_count("rounds.training.batch_size", 1, 4096, training->batch_size(),
             [&](uint32_t v) { training->set_batch_size(v); });
  read_count("rounds.training.seq_len", 2, 1 << 20, training->seq_len(),
             [&](uint32_t v) { training->set_seq_len(v); });
  read_count("rounds.training.gradient_accumulation", 1, 4096, training->gradient_accumulation(),
             [&](uint32_t v) { training->set_gradient_accumulation(v); });
  // −1: min(100, steps / 10), as in train.yaml.
  int64_t warmup = -1;
  reader.Read("rounds.training.warmup_steps", &warmup);
  if (warmup < -1 || warmup > 1'000'000) {
    reader.Invalid("rounds.training.warmup_steps",
                   "must be -1 (min(100, steps / 10)) or 0 to 1000000");
  } else {
    model::TrainOptions resolved;
    resolved.steps = training->steps();
    resolved.warmup_steps = warmup;
    training->set_warmup_steps(static_cast<uint32_t>(model::WarmupSteps(resolved)));
  }
  auto read_real = [&reader](const char* key, double value, double low, double high, auto set) {
    reader.Read(key, &value);
    if (!(value >= low && value <= high)) {
      reader.Invalid(key, absl::StrCat("must be between ", low, " and ", high));
      return;
    }
    set(value);
  };
  // The floor follows the learning rate: the default is a ratio, as in train.yaml.
  const double default_ratio = training->min_learning_rate() / training->learning_rate();
  read_real("rounds.training.learning_rate", training->learning_rate(), 1e-12, 10.0,
            [&](double v) { training->set_learning_rate(v); });
  // The former absolute min_learning_rate still works.
  const std::string ratio_key =
      reader.Renamed("rounds.training.min_learning_rate_ratio", "rounds.training.min_learning_rate",
                     "as a share of learning_rate");
  if (ratio_key == "rounds.training.min_learning_rate_ratio") {
    read_real(ratio_key.c_str(), default_ratio, 0.0, 1.0,
              [&](double v) { training->set_min_learning_rate(v * training->learning_rate()); });
  } else {
    read_real(ratio_key.c_str(), default_ratio * training->learning_rate(), 0.0,
              training->learning_rate(), [&](double v) { training->set_min_learning_rate(v); });
  }
  read_real("rounds.training.weight_decay", training->weight_decay(), 0.0, 1.0,
            [&](double v) { training->set_weight_decay(v); });
  read_real("rounds.training.beta1", training->adam_beta1(), 0.0, 0.999999,
            [&](double v) { training->set_adam_beta1(v); });
  read_real("rounds.training.beta2", training->adam_beta2(), 0.0, 0.999999,
            [&](double v) { training->set_adam_beta2(v); });
  read_real("rounds.training.epsilon", training->adam_epsilon(), 1e-20, 1.0,
            [&](double v) { training->set_adam_epsilon(v); });
  const std::string clip_key =
      reader.Renamed("rounds.training.max_gradient_norm", "rounds.training.gradient_clip_norm");
  read_real(clip_key.c_str(), training->gradient_clip_norm(), 0.0, 1e9,
            [&](double v) { training->set_gradient_clip_norm(v); });
  const std::string balance_key = reader.Renamed("rounds.training.load_balance_coefficient",
                                                 "rounds.training.balance_coefficient");
  read_real(balance_key.c_str(), training->load_balance_coefficient(), -1.0, 100.0,
            [&](double v) { training->set_load_balance_coefficient(v); });
  if (training->load_balance_coefficient() < 0 && training->load_balance_coefficient() != -1) {
    reader.Invalid(balance_key, "must be -1 (the model's router_aux_loss_coef) or at least 0");
  }
  std::string schedule =
      training->schedule() == v1::LocalTrainingConfig::LEARNING_RATE_SCHEDULE_CONSTANT ? "constant"
                                                                                       : "cosine";
  reader.Read("rounds.training.schedule", &schedule);
  if (schedule == "cosine") {
    training->set_schedule(v1::LocalTrainingConfig::LEARNING_RATE_SCHEDULE_COSINE);
  } else if (schedule == "constant") {
    training->set_schedule(v1::LocalTrainingConfig::LEARNING_RATE_SCHEDULE_CONSTANT);
  } else {
    reader.Invalid("rounds.training.schedule", "must be cosine or constant");
  }
  read_real("rounds.training.record_noise_multiplier", training->record_noise_multiplier(), 0.0,
            1e6, [&](double v) { training->set_record_noise_multiplier(v); });
  read_real("rounds.training.record_clip_norm", training->record_clip_norm(), 1e-9, 1e9,
            [&](double v) { training->set_record_clip_norm(v); });
  auto seed = static_cast<int64_t>(training->seed());
  reader.Read("rounds.training.seed", &seed);
  if (seed < 0) reader.Invalid("rounds.training.seed", "must not be negative");
  training->set_seed(static_cast<uint64_t>(seed));
}

}  // namespace

void ReadRoundPolicy(config::YamlConfigReader& reader, RoundPolicy* policy) {
  std::string initial_model;
  reader.Read("model.initial", &initial_model);
  if (!initial_model.empty()) policy->initial_model = initial_model;
  reader.Read("model.adapters.enabled", &policy->adapters);
  reader.Read("model.adapters.rank", &policy->lora.rank);
  reader.Read("model.adapters.alpha", &policy->lora.alpha);
  std::vector<std::string> targets;
  reader.Read("model.adapters.targets", &targets);
  if (!targets.empty()) {
    absl::StatusOr<std::vector<model::LoraModule>> parsed =
        model::ParseLoraTargets(absl::StrJoin(targets, ","));
    if (parsed.ok()) {
      policy->lora.targets = *std::move(parsed);
    } else {
      reader.Invalid("model.adapters.targets", std::string(parsed.status().message()));
    }
  }
  auto lora_seed = static_cast<int64_t>(policy->lora.seed);
  reader.Read("model.adapters.seed", &lora_seed);
  if (lora_seed < 0) reader.Invalid("model.adapters.seed", "must not be negative (0: drawn)");
  policy->lora.seed = static_cast<uint64_t>(lora_seed);
  policy->lora.train_a = false;
  if (absl::Status status = policy->lora.Validate(); !status.ok()) {
    reader.Invalid("model.adapters.rank", std::string(status.message()));
  }
  if (policy->adapters && policy->lora.rank > 4096) {
    reader.Invalid("model.adapters.rank", "must be at most 4096");
  }

  reader.Read("rounds.min_clients", &policy->min_clients);
  reader.Read("rounds.max_clients", &policy->max_clients);
  if (policy->min_clients < 2) reader.Invalid("rounds.min_clients", "must be at least 2");
  if (policy->max_clients < policy->min_clients || policy->max_clients > 100'000) {
    reader.Invalid("rounds.max_clients", "must be between min_clients and 100000");
  }
  reader.Read("rounds.sampling_rate", &policy->sampling_rate);
  if (!(policy->sampling_rate > 0 && policy->sampling_rate <= 1)) {
    reader.Invalid("rounds.sampling_rate", "must be in (0, 1]");
  }
  reader.Read("rounds.interval", &policy->interval);
  if (policy->interval < absl::ZeroDuration()) {
    reader.Invalid("rounds.interval", "must not be negative");
  }
  reader.Read("rounds.max_rounds", &policy->max_rounds);
  if (policy->max_rounds < 0) reader.Invalid("rounds.max_rounds", "must not be negative");
  for (const auto& [key, value] :
       {std::pair{"rounds.timeouts.train", &policy->timeouts.train},
        std::pair{"rounds.timeouts.share_keys", &policy->timeouts.share_keys},
        std::pair{"rounds.timeouts.masked_input", &policy->timeouts.masked_input},
        std::pair{"rounds.timeouts.unmask", &policy->timeouts.unmask}}) {
    reader.Read(key, value);
    if (*value < absl::Seconds(1) || *value > absl::Hours(24)) {
      reader.Invalid(key, "must be between 1s and 24h");
    }
  }
  std::vector<std::string> trainable;
  reader.Read("rounds.trainable", &trainable);
  if (!trainable.empty()) {
    absl::StatusOr<model::TrainableSet> set =
        model::TrainableSet::Parse(absl::StrJoin(trainable, ","));
    if (set.ok()) {
      policy->trainable = *set;
    } else {
      reader.Invalid("rounds.trainable", std::string(set.status().message()));
    }
  }
  ReadTraining(reader, &policy->training);

  std::string optimizer =
      policy->server_optimizer == ServerOptimizerKind::kFedAdam ? "fedadam" : "fedavg";
  reader.Read("rounds.server_optimizer.kind", &optimizer);
  if (optimizer == "fedavg") {
    policy->server_optimizer = ServerOptimizerKind::kFedAvg;
  } else if (optimizer == "fedadam") {
    policy->server_optimizer = ServerOptimizerKind::kFedAdam;
  } else {
    reader.Invalid("rounds.server_optimizer.kind", "must be fedavg or fedadam");
  }
  reader.Read("rounds.server_optimizer.learning_rate", &policy->server_learning_rate);
  if (!(policy->server_learning_rate > 0 && policy->server_learning_rate <= 100)) {
    reader.Invalid("rounds.server_optimizer.learning_rate", "must be in (0, 100]");
  }
  reader.Read("rounds.server_optimizer.beta1", &policy->server_beta1);
  reader.Read("rounds.server_optimizer.beta2", &policy->server_beta2);
  for (const auto& [key, beta] :
       {std::pair{"rounds.server_optimizer.beta1", policy->server_beta1},
        std::pair{"rounds.server_optimizer.beta2", policy->server_beta2}}) {
    if (!(beta >= 0 && beta < 1)) reader.Invalid(key, "must be in [0, 1)");
  }
  reader.Read("rounds.server_optimizer.tau", &policy->server_tau);
  if (!(policy->server_tau > 0)) reader.Invalid("rounds.server_optimizer.tau", "must be positive");
  reader.Read("rounds.expert_weight_floor", &policy->expert_weight_floor);
  if (!(policy->expert_weight_floor > 0)) {
    reader.Invalid("rounds.expert_weight_floor", "must be positive");
  }
  reader.Read("rounds.expert_weights_share", &policy->expert_weights_share);
  reader.Read("rounds.histogram_share", &policy->histogram_share);
  for (const auto& [key, share] :
       {std::pair{"rounds.expert_weights_share", policy->expert_weights_share},
        std::pair{"rounds.histogram_share", policy->histogram_share}}) {
    if (!(share > 0 && share < 1)) reader.Invalid(key, "must be in (0, 1)");
  }
  if (!(policy->expert_weights_share * policy->expert_weights_share +
            policy->histogram_share * policy->histogram_share <
        0.5)) {
    reader.Invalid("rounds.expert_weights_share",
                   "with rounds.histogram_share, takes half the clip norm's square or more, "
                   "leaving Δ too little (their squares must add up to less than 0.5)");
  }

  std::string mode(PrivacyModeName(policy->privacy_mode));
  reader.Read("privacy.mode", &mode);
  if (const std::optional<v1::PrivacySpec::Mode> named = PrivacyModeNamed(mode)) {
    policy->privacy_mode = *named;
  } else {
    reader.Invalid("privacy.mode", "must be distributed, central or none");
  }
  std::string mechanism(MechanismName(policy->mechanism));
  reader.Read("privacy.mechanism", &mechanism);
  // The noise is added to integers in the ring, so only the integer mechanisms can be asked for;
  // the wire's continuous Gaussian has a name but no encoder.
  if (const std::optional<v1::PrivacySpec::Mechanism> named = MechanismNamed(mechanism);
      named.has_value() && *named != v1::PrivacySpec::MECHANISM_GAUSSIAN) {
    policy->mechanism = *named;
  } else {
    reader.Invalid("privacy.mechanism", "must be discrete_gaussian or skellam");
  }
  // The coordinator's noise is the discrete Gaussian, whatever the clients would draw.
  if (policy->privacy_mode == v1::PrivacySpec::MODE_CENTRAL) {
    policy->mechanism = v1::PrivacySpec::MECHANISM_DISCRETE_GAUSSIAN;
  }
  reader.Read("privacy.clip_norm", &policy->clip_norm);
  if (!(policy->clip_norm > 0 && policy->clip_norm < 1e6)) {
    reader.Invalid("privacy.clip_norm", "must be in (0, 1e6)");
  }
  reader.Read("privacy.noise_multiplier", &policy->noise_multiplier);
  if (!(policy->noise_multiplier >= 0 && policy->noise_multiplier <= 1000)) {
    reader.Invalid("privacy.noise_multiplier", "must be in [0, 1000]");
  }
  if (policy->privacy_mode != v1::PrivacySpec::MODE_NONE && policy->noise_multiplier == 0) {
    reader.Invalid("privacy.noise_multiplier",
                   "must be positive unless privacy.mode is none (no noise means no privacy)");
  }
  reader.Read("privacy.delta", &policy->delta);
  if (!(policy->delta > 0 && policy->delta < 1))
    reader.Invalid("privacy.delta", "must be in (0, 1)");
  reader.Read("privacy.target_epsilon", &policy->target_epsilon);
  if (!(policy->target_epsilon >= 0)) {
    reader.Invalid("privacy.target_epsilon", "must not be negative (0: no budget)");
  }
  reader.Read("privacy.ring_bits", &policy->ring_bits);
  if (policy->ring_bits < 16 || policy->ring_bits > 62) {
    reader.Invalid("privacy.ring_bits", "must be between 16 and 62");
  }
  reader.Read("privacy.rounding_beta", &policy->rounding_beta);
  if (!(policy->rounding_beta >= 0 && policy->rounding_beta < 1)) {
    reader.Invalid("privacy.rounding_beta", "must be in [0, 1)");
  }
  reader.Read("secagg.dropout_rate", &policy->dropout_rate);
  reader.Read("secagg.corrupt_fraction", &policy->corrupt_fraction);
  for (const auto& [key, rate] : {std::pair{"secagg.dropout_rate", policy->dropout_rate},
                                  std::pair{"secagg.corrupt_fraction", policy->corrupt_fraction}}) {
    if (!(rate >= 0 && rate < 0.5)) reader.Invalid(key, "must be in [0, 0.5)");
  }
}

std::string RoundPolicyYaml(const RoundPolicy& policy) {
  const v1::LocalTrainingConfig& t = policy.training;
  return absl::StrCat(
      "model:\n"
      "  # A Hugging Face Mixtral-layout directory (config.json, model.safetensors), published\n"
      "  # as version 1 at the first `serve`. Empty: `serve` refuses to start rounds.\n"
      "  initial: \"",
      policy.initial_model.string(),
      "\"\n"
      "  # LoRA adapters over `initial` held frozen (as stored: `fedmoe-client model quantize`\n"
      "  # makes an INT8 or bf16 copy), instead of whole experts. Rounds then move only the\n"
      "  # adapters' B matrices and the routers; sites hold the base (client.yaml training.base).\n"
      "  adapters:\n    enabled: ",
      policy.adapters ? "true" : "false", "\n    rank: ", policy.lora.rank,
      "\n    alpha: ", policy.lora.alpha,
      "\n    # q_proj, k_proj, v_proj, o_proj, w1, w2, w3; or experts, attention, all\n"
      "    targets: [",
      absl::StrJoin(model::LoraTargetNames(policy.lora.targets), ", "),
      "]\n    # The seed every site draws the frozen A from; 0: drawn at the first publication.\n"
      "    seed: ",
      policy.lora.seed,
      "\n\n"
      "rounds:\n"
      "  # A round starts when this many enrolled clients are polling; each is then selected\n"
      "  # with probability sampling_rate (Poisson sampling, which the accountant assumes).\n"
      "  min_clients: ",
      policy.min_clients, "\n  max_clients: ", policy.max_clients,
      "\n  sampling_rate: ", policy.sampling_rate,
      "\n"
      "  # Pause between rounds, and how many to commit (0: no limit).\n"
      "  interval: ",
      Duration(policy.interval), "\n  max_rounds: ", policy.max_rounds,
      "\n"
      "  # A client that has not finished a stage by its timeout drops out of the round.\n"
      "  timeouts:\n    train: ",
      Duration(policy.timeouts.train), "\n    share_keys: ", Duration(policy.timeouts.share_keys),
      "\n    masked_input: ", Duration(policy.timeouts.masked_input),
      "\n    unmask: ", Duration(policy.timeouts.unmask),
      "\n"
      "  # What clients train and send: experts, router, shared_experts, attention, norms, ...\n"
      "  trainable: [experts, router]\n"
      "  training:\n    steps: ",
      t.steps(), "\n    batch_size: ", t.batch_size(), "\n    seq_len: ", t.seq_len(),
      "\n    learning_rate: ", t.learning_rate(),
      "\n    min_learning_rate_ratio: ", t.min_learning_rate() / t.learning_rate(),
      "\n    schedule: cosine\n"
      "  server_optimizer:\n    # fedavg (θ += lr·Δ) or fedadam\n    kind: ",
      policy.server_optimizer == ServerOptimizerKind::kFedAdam ? "fedadam" : "fedavg",
      "\n    learning_rate: ", policy.server_learning_rate,
      "\n\n"
      "privacy:\n"
      "  # distributed (clients add discrete noise before masking), central, or none\n"
      "  mode: ",
      PrivacyModeName(policy.privacy_mode), "\n  mechanism: ", MechanismName(policy.mechanism),
      "\n  clip_norm: ", policy.clip_norm, "\n  noise_multiplier: ", policy.noise_multiplier,
      "\n  delta: ", policy.delta,
      "\n  # 0: no budget; otherwise rounds stop before ε would pass it.\n  target_epsilon: ",
      policy.target_epsilon, "\n  ring_bits: ", policy.ring_bits,
      "\n\n"
      "secagg:\n"
      "  # Sizes the SecAgg+ neighbour graph: expected dropouts and corrupt clients.\n"
      "  dropout_rate: ",
      policy.dropout_rate, "\n  corrupt_fraction: ", policy.corrupt_fraction, "\n");
}

}  // namespace fedmoe::coordinator
