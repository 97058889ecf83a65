// The daemon's part in a round: local training and the update, the site's record-level
// privacy, and its personal model (daemon.h).
#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/daemon.h"
#include "client/grpc_status.h"
#include "client/model_sync.h"
#include "client/update.h"
#include "logging/log.h"
#include "model/adapted_model.h"
#include "model/checkpoint.h"
#include "model/data.h"
#include "model/peft.h"
#include "model/personal.h"
#include "model/tokenizer.h"
#include "model/trainer.h"
#include "privacy/ring_encoder.h"
#include "privacy/secure_random.h"
#include "storage/file_status.h"

namespace fedmoe::client {

absl::Status ClientDaemon::JoinRound(const v1::JoinRoundTask& task) {
  if (config_.data.empty()) {
    return absl::FailedPreconditionError("no training.data is configured in client.yaml");
  }
  const v1::UpdateSpec& spec = task.update_spec();
  // The site's floor comes first: a round below it costs no download and no training.
  if (absl::Status status = CheckRoundAgainstPolicy(config_.privacy_policy, task); !status.ok()) {
    return status;
  }
  // So does the base an adapter round needs: without it, the round's download is no use.
  const HeldBase* base = nullptr;
  if (spec.has_adapters()) {
    absl::StatusOr<const HeldBase*> held = BaseFor(spec.adapters());
    if (!held.ok()) return held.status();
    base = *held;
  }
  absl::StatusOr<std::filesystem::path> directory =
      SyncModel(*federation_, spec.base_model(), config_.state_dir.models());
  if (!directory.ok()) return directory.status();
  progress_.last_sync = absl::Now();
  progress_.model_version = spec.base_model().version();
  progress_.trained_from_version = spec.base_model().version();
  progress_.latest_committed_version =
      std::max(progress_.latest_committed_version, spec.base_model().version());
  // Clients must draw different batches; the mix is private to this client.
  absl::StatusOr<privacy::SecureRandom> random = privacy::SecureRandom::FromSystem();
  if (!random.ok()) return random.status();
  absl::StatusOr<PlainUpdate> update =
      base != nullptr ? TrainAdapterRound(task, base->base, *directory, *random)
                      : TrainModelRound(task, *directory, *random);
  if (!update.ok()) return update.status();
  // How far clipping cut this site's Δ: the operator's cue to tune privacy.clip_norm.
  LogEvent(LogLevel::kInfo, "update_clipped")
      .Field("round_id", task.round_id())
      .Field("delta_norm", update->delta_norm)
      .Field("delta_clip_norm", spec.layout().delta_clip_norm());
  absl::StatusOr<privacy::RingEncoder> encoder = privacy::RingEncoder::Create(
      update->values.size(), EncodingFromSpec(spec, static_cast<int>(task.secagg().ring_bits())));
  if (!encoder.ok()) return encoder.status();
  absl::StatusOr<std::vector<uint64_t>> encoded = encoder->Encode(update->values, *random);
  if (!encoded.ok()) return encoded.status();
  absl::StatusOr<std::unique_ptr<RoundParticipant>> participant = RoundParticipant::Create(
      task, ParticipantIdentity{&*key_, *trust_, config_.state_dir.peer_keys()});
  if (!participant.ok()) return participant.status();
  if (absl::Status status = (*participant)->AdvertiseKeys(*federation_); !status.ok()) {
    return status;
  }
  participant_ = std::move(*participant);
  encoded_update_ = std::move(*encoded);
  known_round_ = task.round_id();
  known_stage_ = v1::ROUND_STAGE_KEYS_ADVERTISED;
  ++progress_.rounds_joined;
  return absl::OkStatus();
}

absl::StatusOr<ComputeSettings> ClientDaemon::ComputeForRound(
    uint64_t round_id, const model::MoeConfig& config) const {
  ComputeSettings compute = config_.compute;
  absl::StatusOr<std::string> fallback = compute.FitToModel(config);
  if (!fallback.ok()) return fallback.status();
  if (!fallback->empty()) {
    LogEvent(LogLevel::kWarning, "training_device_fallback")
        .Field("round_id", round_id)
        .Field("reason", *fallback);
  }
  return compute;
}

absl::StatusOr<PlainUpdate> ClientDaemon::TrainModelRound(const v1::JoinRoundTask& task,
                                                          const std::filesystem::path& directory,
                                                          privacy::SecureRandom& random) {
  const v1::UpdateSpec& spec = task.update_spec();
  absl::StatusOr<model::ModelParameters> global = model::LoadModel(directory);
  if (!global.ok()) return global.status();
  absl::StatusOr<std::unique_ptr<model::Tokenizer>> tokenizer =
      model::LoadTokenizer(directory, global->config().vocab_size);
  if (!tokenizer.ok()) return tokenizer.status();
  // With private experts the round trains the personal model (the global one plus the site's
  // experts); only its global part is sent.
  const bool private_experts =
      config_.personalization.mode == PersonalMode::kPrivateExperts &&
      config_.personalization.private_training == PrivateExpertsTraining::kWithRound;
  const PersonalModelStore personal_store(config_.state_dir.personal());
  std::optional<PersonalModelInfo> held_personal;
  absl::StatusOr<model::ModelParameters> start =
      private_experts ? PrivateExpertsStart(config_.personalization, personal_store, *global,
                                            random(), &held_personal)
                      : *global;
  if (!start.ok()) return start.status();
  model::ModelParameters local = *std::move(start);
  model::TrainOptions options = TrainOptionsFromSpec(global->layout(), spec, random());
  if (private_experts) options.private_experts = config_.personalization.private_experts;
  // The round sets what is trained and how; this machine sets the arithmetic, for this model.
  absl::StatusOr<ComputeSettings> compute = ComputeForRound(task.round_id(), local.config());
  if (!compute.ok()) return compute.status();
  options.device = compute->device;
  options.matmul_precision = compute->matmul_precision;
  absl::StatusOr<DatasetAccount> account = PrepareRecordPrivacy(
      task.round_id(), local.config(),
      model::PrivateReleaseValues(local.layout(), local.config(), options.trainable), **tokenizer,
      options);
  if (!account.ok()) return account.status();
  training_device_ = options.device;
  LogTrainingStarted(task, options);
  absl::StatusOr<model::TrainResult> trained =
      model::Train(local, **tokenizer, config_.data, options);
  if (!trained.ok()) return trained.status();
  if (absl::Status status = FinishLocalTraining(task.round_id(), *trained, *account);
      !status.ok()) {
    return status;
  }
  last_round_options_ = options;
  if (private_experts) {
    if (absl::Status status = KeepPrivateExperts(
            *global, local, directory, spec.base_model().version(), held_personal, trained->steps);
        !status.ok()) {
      return status;
    }
  }
  // From the global part alone: the private experts and their router rows are not in the model
  // it reads, and their routed slots are not in the counts.
  return BuildUpdateFromTrained(*global, local, trained->expert_slots, spec);
}

absl::StatusOr<PlainUpdate> ClientDaemon::TrainAdapterRound(const v1::JoinRoundTask& task,
                                                            const model::FrozenBase& base,
                                                            const std::filesystem::path& directory,
                                                            privacy::SecureRandom& random) {
  const v1::UpdateSpec& spec = task.update_spec();
  if (config_.personalization.mode == PersonalMode::kPrivateExperts &&
      config_.personalization.private_training == PrivateExpertsTraining::kWithRound) {
    return absl::FailedPreconditionError(
        "personalization.private_training with_round trains private experts beside whole "
        "global ones; this federation trains adapters, so it cannot (use after_commit or none)");
  }
  absl::StatusOr<model::LoraAdapters> global = AdaptersFromSpec(base, spec.adapters(), directory);
  if (!global.ok()) return global.status();
  // The coordinator publishes the base's tokenizer with each version.
  absl::StatusOr<std::unique_ptr<model::Tokenizer>> tokenizer =
      model::LoadTokenizer(directory, base.config().vocab_size);
  if (!tokenizer.ok()) return tokenizer.status();
  model::LoraAdapters local = *global;
  model::TrainOptions options = TrainOptionsFromSpec(base.layout(), spec, random());
  options.adapters.enabled = true;
  options.adapters.lora = local.config();
  // This machine's device, over the base in the format the federation holds it in; the
  // products are fp32 on its decoded weights whatever the precision setting.
  absl::StatusOr<ComputeSettings> compute = ComputeForRound(task.round_id(), base.config());
  if (!compute.ok()) return compute.status();
  options.device = compute->device;
  options.matmul_precision = model::MatMulPrecision::kFloat32;
  absl::StatusOr<DatasetAccount> account = PrepareRecordPrivacy(
      task.round_id(), base.config(),
      model::PrivateReleaseValues(base.config(), model::AdapterTrainedRanges(local)), **tokenizer,
      options);
  if (!account.ok()) return account.status();
  training_device_ = options.device;
  LogTrainingStarted(task, options);
  absl::StatusOr<model::TrainResult> trained =
      model::TrainAdapters(base, local, **tokenizer, config_.data, options);
  if (!trained.ok()) return trained.status();
  if (absl::Status status = FinishLocalTraining(task.round_id(), *trained, *account);
      !status.ok()) {
    return status;
  }
  return BuildPlainUpdate(*global, local, trained->expert_slots, spec);
}

absl::StatusOr<const ClientDaemon::HeldBase*> ClientDaemon::BaseFor(
    const v1::AdapterSpec& adapters) {
  if (held_base_.has_value() && held_base_->content_sha256 == adapters.base_sha256()) {
    return &*held_base_;
  }
  const std::string& wanted = adapters.base_sha256();
  // training.base, opened and hashed, is another base than the round's.
  const auto not_the_federations = [&](const std::filesystem::path& where) {
    return absl::Status(
        absl::StatusCode::kFailedPrecondition,
        absl::StrCat("training.base: ",
                     model::CheckBaseContentHash(held_base_->content_sha256,
                                                 held_base_->base.format(), wanted, where)
                         .message(),
                     "; the federation holds its base as ", adapters.base_format()));
  };
  std::filesystem::path directory = config_.base;
  const bool download = directory.empty();
  if (download) {
    if (adapters.base_files().files_size() == 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the federation trains adapters over base ", wanted, " held as ", adapters.base_format(),
          " and does not serve it; set training.base in client.yaml to this site's copy of it "
          "(fedmoe-client model hash --model DIR shows a base's hash)"));
    }
    // The hash names a directory: it must be nothing but a SHA-256.
    if (wanted.size() != 64 || !std::all_of(wanted.begin(), wanted.end(), [](char c) {
          return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
        })) {
      return absl::InvalidArgumentError(
          absl::StrCat("the round names base \"", wanted, "\", which is not a SHA-256"));
    }
    const absl::Time started = absl::Now();
    absl::StatusOr<std::filesystem::path> synced =
        SyncBase(*federation_, adapters.base_files(), config_.state_dir.bases() / wanted);
    if (!synced.ok()) return synced.status();
    directory = *synced;
    int64_t bytes = 0;
    for (const v1::ModelFile& file : adapters.base_files().files()) {
      bytes += static_cast<int64_t>(file.size_bytes());
    }
    LogEvent(LogLevel::kInfo, "adapter_base_downloaded")
        .Field("base_sha256", wanted)
        .Field("directory", directory.string())
        .Field("bytes", bytes)
        .Field("seconds", absl::ToDoubleSeconds(absl::Now() - started));
  } else if (held_base_.has_value() && held_base_->directory == directory) {
    return not_the_federations(directory);
  }
  const absl::Time started = absl::Now();
  absl::StatusOr<model::FrozenBase> opened = model::FrozenBase::Open(directory);
  if (!opened.ok()) {
    return absl::Status(opened.status().code(),
                        absl::StrCat(download ? "the downloaded base: " : "training.base: ",
                                     opened.status().message()));
  }
  std::string hash = model::BaseContentHash(*opened);
  held_base_.emplace(HeldBase{
      .base = *std::move(opened), .content_sha256 = std::move(hash), .directory = directory});
  LogEvent(LogLevel::kInfo, "adapter_base_opened")
      .Field("base", directory.string())
      .Field("base_sha256", held_base_->content_sha256)
      .Field("base_format", std::string(model::WeightFormatName(held_base_->base.format())))
      .Field("base_bytes", held_base_->base.bytes())
      .Field("seconds", absl::ToDoubleSeconds(absl::Now() - started));
  std::error_code error;
  if (held_base_->content_sha256 != wanted) {
    if (!download) return not_the_federations(directory);
    // Every file matched the coordinator's manifest, and yet the weights are not the round's:
    // the coordinator serves another base than it names. Nothing of it is kept.
    const std::string served = held_base_->content_sha256;
    held_base_.reset();
    std::filesystem::remove_all(config_.state_dir.bases() / wanted, error);
    return absl::DataLossError(absl::StrCat("the base the coordinator serves hashes to ", served,
                                            ", not the ", wanted,
                                            " its rounds name; the download is discarded"));
  }
  if (download) {
    // One downloaded base is kept: an earlier federation's goes.
    for (const auto& entry :
         std::filesystem::directory_iterator(config_.state_dir.bases(), error)) {
      if (entry.path().filename() != wanted) std::filesystem::remove_all(entry.path(), error);
    }
  }
  return &*held_base_;
}

void ClientDaemon::LogTrainingStarted(const v1::JoinRoundTask& task,
                                      const model::TrainOptions& options) const {
  LogEvent(LogLevel::kInfo, "local_training_started")
      .Field("round_id", task.round_id())
      .Field("model_version", task.update_spec().base_model().version())
      .Field("adapters", options.adapters.enabled)
      .Field("steps", options.steps)
      .Field("device", model::DeviceName(options.device))
      .Field("matmul_precision", model::MatMulPrecisionName(options.matmul_precision));
}

absl::Status ClientDaemon::FinishLocalTraining(uint64_t round_id, const model::TrainResult& trained,
                                               const DatasetAccount& account) {
  progress_.train_steps = trained.steps;
  progress_.train_tokens = trained.tokens;
  progress_.train_loss = trained.train_loss;
  progress_.train_seconds = trained.tokens_per_second > 0
                                ? static_cast<double>(trained.tokens) / trained.tokens_per_second
                                : 0;
  // The loss stays here: it goes into the log and status.json, never to the coordinator.
  LogEvent(LogLevel::kInfo, "local_training_finished")
      .Field("round_id", round_id)
      .Field("train_loss", trained.train_loss)
      .Field("tokens", trained.tokens)
      .Field("tokens_per_second", trained.tokens_per_second);
  if (!trained.record_privacy.has_value()) return absl::OkStatus();
  // Charged before anything derived from the training exists outside this process: a crash
  // after this line leaves the round paid for and unsent, never the other way round.
  absl::StatusOr<RecordPrivacyLedger> ledger =
      RecordPrivacyLedger::Load(config_.state_dir.record_ledger());
  if (!ledger.ok()) return ledger.status();
  absl::StatusOr<DatasetAccount> charged = account.With(*trained.record_privacy, round_id);
  if (!charged.ok()) return charged.status();
  if (absl::Status status = ledger->Record(*charged); !status.ok()) return status;
  absl::StatusOr<double> epsilon = charged->Epsilon();
  LogEvent(LogLevel::kInfo, "record_privacy_charged")
      .Field("round_id", round_id)
      .Field("record_unit", std::string(model::RecordUnitName(charged->unit)))
      .Field("records", charged->records)
      .Field("steps", trained.record_privacy->steps)
      .Field("sampling_rate", trained.record_privacy->sampling_rate)
      .Field("noise_multiplier", trained.record_privacy->noise_multiplier)
      .Field("records_clipped", trained.record_privacy->records_clipped)
      .Field("records_sampled", trained.record_privacy->records_sampled)
      .Field("record_epsilon", epsilon.ok() ? *epsilon : -1.0)
      .Field("record_delta", charged->delta);
  record_privacy_status_ = RecordPrivacyStatus();
  return absl::OkStatus();
}

absl::StatusOr<DatasetAccount> ClientDaemon::PrepareRecordPrivacy(
    uint64_t round_id, const model::MoeConfig& model_config, int64_t released_values,
    const model::Tokenizer& tokenizer, model::TrainOptions& options) {
  const PrivacyPolicy& policy = config_.privacy_policy;
  options.record_privacy.unit = policy.record_unit;
  if (!options.record_privacy.enabled) {
    if (policy.max_record_epsilon > 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "privacy policy: the round runs no DP-SGD, so one record's influence on the update is "
          "unbounded (record-level ε = ∞), past this site's max_record_epsilon ",
          JsonNumber(policy.max_record_epsilon)));
    }
    return DatasetAccount();
  }
  // Per-record clipping runs in fp32; a configured bf16 is not silently replaced, an automatic
  // choice is. (Adapters' products follow their base's format, not this setting.)
  if (!options.adapters.enabled && options.matmul_precision != model::MatMulPrecision::kFloat32) {
    if (config_.compute.matmul_precision_name == "bf16") {
      return absl::FailedPreconditionError(
          "the round runs DP-SGD, whose per-record clipping needs fp32 products; set "
          "training.matmul_precision to auto or fp32");
    }
    options.matmul_precision = model::MatMulPrecision::kFloat32;
  }
  model::DataOptions data_options;
  data_options.seq_len = options.seq_len;
  data_options.validation_fraction = options.validation_fraction;
  data_options.eos_token = static_cast<int32_t>(model_config.eos_token_id);
  absl::StatusOr<model::RecordSet> records =
      model::ReadRecords(config_.data, tokenizer, data_options, policy.record_unit);
  if (!records.ok()) return records.status();
  const auto record_count = static_cast<int64_t>(records->records.size());
  // Train takes them as read here, rather than reading and tokenizing the data again.
  options.record_privacy.records = std::make_shared<const model::RecordSet>(std::move(*records));
  absl::StatusOr<RecordPrivacyLedger> ledger =
      RecordPrivacyLedger::Load(config_.state_dir.record_ledger());
  if (!ledger.ok()) return ledger.status();
  const std::string dataset = std::filesystem::absolute(config_.data).string();
  DatasetAccount account = ledger->Account(
      dataset, policy.record_unit,
      policy.record_delta > 0 ? policy.record_delta : DefaultRecordDelta(record_count));
  if (account.exhausted) {
    return absl::FailedPreconditionError(
        absl::StrCat("privacy policy: dataset ", dataset, " has spent its record-level budget (",
                     JsonNumber(policy.max_record_epsilon), "); it is not trained on again"));
  }
  if (policy.max_record_epsilon > 0) {
    // The round's charge as it will be made: the spend Train reports, computed ahead.
    const model::RecordPrivacySpend planned =
        model::PlannedRecordPrivacySpend(released_values, options, record_count);
    absl::StatusOr<DatasetAccount> after = account.With(planned, round_id);
    if (!after.ok()) return after.status();
    absl::StatusOr<double> before_epsilon = account.Epsilon();
    absl::StatusOr<double> after_epsilon = after->Epsilon();
    if (!before_epsilon.ok()) return before_epsilon.status();
    if (!after_epsilon.ok()) return after_epsilon.status();
    if (*after_epsilon > policy.max_record_epsilon) {
      account.exhausted = true;
      if (absl::Status status = ledger->Record(account); !status.ok()) return status;
      record_privacy_status_ = RecordPrivacyStatus();
      LogEvent(LogLevel::kWarning, "record_budget_exhausted")
          .Field("round_id", round_id)
          .Field("dataset", dataset)
          .Field("record_epsilon", *before_epsilon)
          .Field("record_epsilon_after_round", *after_epsilon)
          .Field("max_record_epsilon", policy.max_record_epsilon);
      return absl::FailedPreconditionError(absl::StrCat(
          "privacy policy: this round would take dataset ", dataset, "'s record-level ε from ",
          JsonNumber(*before_epsilon), " to ", JsonNumber(*after_epsilon),
          " (δ = ", JsonNumber(account.delta), "), past max_record_epsilon ",
          JsonNumber(policy.max_record_epsilon), "; the dataset is not trained on again"));
    }
  }
  return account;
}

absl::Status ClientDaemon::KeepPrivateExperts(const model::ModelParameters& global,
                                              const model::ModelParameters& trained,
                                              const std::filesystem::path& global_directory,
                                              uint64_t global_version,
                                              const std::optional<PersonalModelInfo>& held,
                                              int64_t steps) {
  absl::StatusOr<model::ModelParameters> personal =
      model::ComposePersonal(global, config_.personalization.private_experts, &trained, /*seed=*/0);
  if (!personal.ok()) return personal.status();
  const PersonalModelInfo info =
      NextPersonalInfo(PersonalMode::kPrivateExperts, global.config().num_local_experts,
                       config_.personalization.private_experts, global_version, held, steps);
  if (absl::Status status =
          PersonalModelStore(config_.state_dir.personal()).Save(*personal, info, global_directory);
      !status.ok()) {
    return status;
  }
  personal_version_ = std::max(personal_version_, global_version);
  LogEvent(LogLevel::kInfo, "personal_model_saved")
      .Field("mode", "private_experts")
      .Field("global_version", global_version)
      .Field("private_experts", info.private_experts)
      .Field("rounds_trained", info.rounds_trained);
  return absl::OkStatus();
}

absl::StatusOr<std::filesystem::path> ClientDaemon::DownloadVersion(uint64_t version) {
  v1::GetModelManifestRequest request;
  request.set_version(version);
  v1::ModelManifest manifest;
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  if (grpc::Status got = federation_->GetModelManifest(&context, request, &manifest); !got.ok()) {
    return FromGrpc(got, "GetModelManifest");
  }
  absl::StatusOr<std::filesystem::path> directory =
      SyncModel(*federation_, manifest, config_.state_dir.models());
  if (!directory.ok()) return directory.status();
  progress_.model_version = std::max(progress_.model_version, version);
  return directory;
}

void ClientDaemon::ServeVersion(uint64_t version) {
  if (serve_host_ == nullptr || version == 0 || version <= serve_host_->version() ||
      version <= serve_tried_version_ || federation_ == nullptr) {
    return;
  }
  serve_tried_version_ = version;
  absl::Status status = [&]() -> absl::Status {
    const std::filesystem::path held = config_.state_dir.models() / absl::StrCat("v", version);
    absl::StatusOr<std::filesystem::path> directory =
        storage::IsDirectory(held) ? absl::StatusOr<std::filesystem::path>(held)
                                   : DownloadVersion(version);
    if (!directory.ok()) return directory.status();
    std::optional<std::filesystem::path> base;
    if (held_base_.has_value()) {
      base = held_base_->directory;
    } else if (!config_.base.empty()) {
      base = config_.base;
    }
    return serve_host_->Offer(version, *directory, base);
  }();
  if (!status.ok()) {
    LogEvent(LogLevel::kWarning, "serve_model_failed")
        .Field("global_version", static_cast<int64_t>(version))
        .Error(status);
  }
}

void ClientDaemon::RefreshPersonalModel(uint64_t version) {
  if (config_.personalization.mode == PersonalMode::kNone || version <= personal_version_ ||
      federation_ == nullptr) {
    return;
  }
  personal_version_ = version;
  absl::Status status = [&]() -> absl::Status {
    absl::StatusOr<std::filesystem::path> directory = DownloadVersion(version);
    if (!directory.ok()) return directory.status();
    if (storage::PathExists(*directory / model::kAdapterConfigFile)) {
      return absl::FailedPreconditionError(
          "personal models are built over whole global models; this federation publishes "
          "adapters");
    }
    return RefreshPersonal(config_.personalization,
                           PersonalModelStore(config_.state_dir.personal()), version, *directory,
                           config_.data, last_round_options_);
  }();
  if (!status.ok()) {
    LogEvent(LogLevel::kWarning, "personal_model_not_refreshed")
        .Field("global_version", version)
        .Error(status);
    return;
  }
  LogEvent(LogLevel::kInfo, "personal_model_updated")
      .Field("mode", std::string(PersonalModeName(config_.personalization.mode)))
      .Field("global_version", version);
}

std::string ClientDaemon::RecordPrivacyStatus() const {
  absl::StatusOr<RecordPrivacyLedger> ledger =
      RecordPrivacyLedger::Load(config_.state_dir.record_ledger());
  if (!ledger.ok()) return "[]";
  return AccountsJson(*ledger, config_.privacy_policy.max_record_epsilon);
}

}  // namespace fedmoe::client
