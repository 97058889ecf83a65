#include "coordinator/round/round_engine.h"

#include <google/protobuf/util/time_util.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "coordinator/round/planner.h"
#include "coordinator/round/privacy_plan.h"
#include "logging/log.h"
#include "model/checkpoint.h"
#include "model/peft.h"
#include "privacy/secure_random.h"
#include "storage/file_status.h"

namespace fedmoe::coordinator {
namespace {

using google::protobuf::util::TimeUtil;

std::string ExpertLoadText(const std::vector<std::vector<double>>& weights) {
  // Per layer, each expert's share of the summed routing weight, in percent.
  std::string text;
  for (size_t layer = 0; layer < weights.size(); ++layer) {
    double total = 0;
    for (double w : weights[layer]) total += std::max(0.0, w);
    absl::StrAppend(&text, layer == 0 ? "" : "; ", "layer ", layer, ":");
    for (double w : weights[layer]) {
      absl::StrAppend(&text, " ",
                      absl::StrFormat("%.0f%%", total > 0 ? 100 * std::max(0.0, w) / total : 0.0));
    }
  }
  return text;
}

// Version 1: model.initial itself, or new adapters over it.
absl::StatusOr<GlobalModel> InitialModel(const RoundPolicy& policy,
                                         const std::optional<OpenedBase>& base) {
  if (base.has_value()) return NewAdapterModel(*base, policy.lora);
  absl::StatusOr<model::ModelParameters> initial = model::LoadModel(policy.initial_model);
  if (!initial.ok()) return initial.status();
  return GlobalModel(*std::move(initial));
}

// A published version, refused when it is not what the policy trains: adapters and whole
// models do not turn into each other within a federation.
absl::StatusOr<GlobalModel> PublishedModel(const RoundPolicy& policy,
                                           const std::optional<OpenedBase>& base,
                                           const std::filesystem::path& directory) {
  const bool holds_adapters = storage::PathExists(directory / model::kAdapterConfigFile);
  if (holds_adapters != policy.adapters) {
    return absl::FailedPreconditionError(
        absl::StrCat("the published model at ", directory.string(), " is ",
                     holds_adapters ? "an adapter version" : "a whole model",
                     ", but model.adapters.enabled is ", policy.adapters ? "true" : "false",
                     ": a federation trains adapters or whole models from its first version on"));
  }
  if (base.has_value()) return LoadAdapterModel(*base, policy.lora, directory);
  absl::StatusOr<model::ModelParameters> global = model::LoadModel(directory);
  if (!global.ok()) return global.status();
  return GlobalModel(*std::move(global));
}

}  // namespace

std::string StageName(v1::RoundStage stage) {
  constexpr std::string_view kPrefix = "ROUND_STAGE_";
  std::string name = v1::RoundStage_Name(stage);
  return name.starts_with(kPrefix) ? name.substr(kPrefix.size()) : name;
}

v1::RoundStage StageFromName(const std::string& name) {
  v1::RoundStage stage = v1::ROUND_STAGE_UNSPECIFIED;
  v1::RoundStage_Parse(absl::StrCat("ROUND_STAGE_", name), &stage);
  return stage;
}

RoundEngine::RoundEngine(const CoordinatorConfig* config, Store* store, ClientPresence* presence,
                         PollHub* polls, const Clock* clock)
    : config_(config),
      policy_(config->rounds),
      store_(store),
      presence_(presence),
      polls_(polls),
      clock_(clock),
      models_(config->state_dir.models()),
      ledger_(config->rounds.delta),
      server_optimizer_(config->rounds) {}

absl::StatusOr<std::unique_ptr<RoundEngine>> RoundEngine::Create(const CoordinatorConfig* config,
                                                                 Store* store,
                                                                 ClientPresence* presence,
                                                                 PollHub* polls,
                                                                 const Clock* clock) {
  std::unique_ptr<RoundEngine> engine(new RoundEngine(config, store, presence, polls, clock));
  if (absl::Status status = engine->Load(); !status.ok()) return status;
  return engine;
}

absl::Status RoundEngine::Load() {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<int64_t> aborted =
      store_->AbortUnfinishedRounds("the coordinator restarted during the round", Now());
  if (!aborted.ok()) return aborted.status();
  if (*aborted > 0) {
    LogEvent(LogLevel::kWarning, "rounds_aborted_at_start").Field("rounds", *aborted);
  }
  absl::StatusOr<int64_t> last_round = store_->LastRoundId();
  if (!last_round.ok()) return last_round.status();
  last_round_id_ = static_cast<uint64_t>(*last_round);

  absl::StatusOr<std::optional<ModelVersionRecord>> latest = store_->GetModel(0);
  if (!latest.ok()) return latest.status();
  if (absl::Status status = models_.RemoveUnpublished(latest->has_value() ? (*latest)->version : 0);
      !status.ok()) {
    return status;
  }
  if (!latest->has_value() && policy_.initial_model.empty()) {
    paused_reason_ = "no model is published: set model.initial in coordinator.yaml";
    return absl::OkStatus();
  }
  // An adapter federation's base is opened to be named, and closed before rounds run: the
  // coordinator keeps the adapters only.
  std::optional<OpenedBase> base;
  if (policy_.adapters) {
    const absl::Time started = Now();
    absl::StatusOr<OpenedBase> opened = OpenBase(policy_.initial_model);
    if (!opened.ok()) {
      return {opened.status().code(), absl::StrCat("model.initial: ", opened.status().message())};
    }
    base.emplace(*std::move(opened));
    LogEvent(LogLevel::kInfo, "adapter_base_identified")
        .Field("base", policy_.initial_model.string())
        .Field("base_sha256", base->identity.content_sha256)
        .Field("base_format", std::string(model::WeightFormatName(base->identity.format)))
        .Field("base_bytes", base->base.bytes())
        .Field("seconds", absl::ToDoubleSeconds(Now() - started));
  }
  if (!latest->has_value()) {
    absl::StatusOr<GlobalModel> initial = InitialModel(policy_, base);
    if (!initial.ok()) {
      return {initial.status().code(), absl::StrCat("model.initial: ", initial.status().message())};
    }
    const std::filesystem::path tokenizer = policy_.initial_model / "tokenizer.json";
    absl::StatusOr<ModelVersionRecord> record = models_.Write(
        1,
        [&](const std::filesystem::path& directory) {
          return SaveGlobalModel(*initial, directory);
        },
        storage::PathExists(tokenizer) ? tokenizer : "", std::nullopt, std::nullopt);
    if (!record.ok()) return record.status();
    if (absl::Status status = store_->AddInitialModel(*record); !status.ok()) return status;
    LogEvent(LogLevel::kInfo, "model_published")
        .Field("version", record->version)
        .Field("source", policy_.initial_model.string())
        .Field("adapters", policy_.adapters);
    *latest = *record;
  }
  global_record_ = **latest;
  absl::StatusOr<GlobalModel> global =
      PublishedModel(policy_, base, models_.Directory(global_record_));
  if (!global.ok()) return global.status();
  global_.emplace(*std::move(global));
  if (base.has_value()) base_ = base->identity;
  if (server_optimizer_.adaptive()) {
    if (auto moments = models_.ReadServerMoments(global_record_); moments.ok()) {
      server_optimizer_.RestoreMoments(std::move(moments->first), std::move(moments->second));
    }
  }
  absl::StatusOr<std::vector<LedgerEntry>> ledger = store_->Ledger();
  if (!ledger.ok()) return ledger.status();
  for (const LedgerEntry& entry : *ledger) {
    if (absl::Status status = ledger_.Record(entry); !status.ok()) return status;
  }
  absl::StatusOr<Store::RoundCounts> counts = store_->CountRounds();
  if (!counts.ok()) return counts.status();
  committed_rounds_ = counts->committed;
  next_round_at_ = Now();
  return absl::OkStatus();
}

absl::StatusOr<const BaseIdentity*> RoundEngine::Base() const {
  if (!base_.has_value()) {
    return absl::NotFoundError(
        "this federation trains whole models: it has no frozen base to download");
  }
  return &*base_;
}

void RoundEngine::Start() {
  thread_ = std::thread([this] { Run(); });
}

void RoundEngine::Stop() {
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

RoundEngine::~RoundEngine() { Stop(); }

void RoundEngine::Run() {
  while (true) {
    {
      absl::MutexLock lock(&mutex_);
      auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return stopping_; };
      mutex_.AwaitWithTimeout(absl::Condition(&stopping), absl::Milliseconds(50));
      if (stopping_) return;
    }
    Tick();
  }
}

void RoundEngine::Tick() {
  Round* committing = nullptr;
  {
    absl::MutexLock lock(&mutex_);
    if (round_ == nullptr) {
      MaybeSelect();
      return;
    }
    MaybeCloseStage();
    if (round_ != nullptr && round_->stage == v1::ROUND_STAGE_UNMASKED && !committing_) {
      committing_ = true;
      committing = round_.get();
    }
  }
  if (committing != nullptr) Commit(*committing);
}

void RoundEngine::MaybeSelect() {
  const absl::Time now = Now();
  if (!global_.has_value() || now < next_round_at_) return;
  if (policy_.max_rounds > 0 && committed_rounds_ >= policy_.max_rounds) {
    if (paused_reason_.empty()) {
      paused_reason_ = absl::StrCat("rounds.max_rounds (", policy_.max_rounds, ") committed");
      LogEvent(LogLevel::kInfo, "rounds_paused").Field("reason", paused_reason_);
    }
    return;
  }
  std::vector<std::string> online = presence_->OnlineClients(now);
  if (static_cast<int64_t>(online.size()) < policy_.min_clients) return;

  // OpenSSL's generator, so that nobody can predict or steer the cohort.
  absl::StatusOr<privacy::SecureRandom> random = privacy::SecureRandom::FromSystem();
  if (!random.ok()) return;
  absl::StatusOr<std::optional<RoundPlan>> planned = PlanRound(
      last_round_id_ + 1, online, policy_, config_->federation, *global_, global_record_, *random);
  if (!planned.ok()) {
    LogEvent(LogLevel::kError, "round_not_started").Error(planned.status());
    next_round_at_ = now + policy_.interval;
    return;
  }
  if (!planned->has_value()) {
    next_round_at_ = now + absl::Seconds(1);
    return;
  }
  RoundPlan& plan = **planned;
  if (std::string reason = BudgetPause(ledger_, plan, policy_); !reason.empty()) {
    if (reason != paused_reason_) {
      paused_reason_ = std::move(reason);
      LogEvent(LogLevel::kWarning, "rounds_paused").Field("reason", paused_reason_);
    }
    next_round_at_ = now + absl::Seconds(5);
    return;
  }
  paused_reason_.clear();

  const auto n = static_cast<int64_t>(plan.cohort.size());
  secure_agg::RoundSetup setup;
  setup.round_id = plan.terms.round_id;
  setup.session_id = plan.session_id;
  setup.num_participants = static_cast<uint32_t>(n);
  setup.threshold = plan.shape.threshold;
  setup.length = plan.spec.layout().encoded_values();
  setup.bits = static_cast<int>(policy_.ring_bits);
  absl::StatusOr<secure_agg::SecAggServer> secagg =
      secure_agg::SecAggServer::Create(setup, plan.graph);
  if (!secagg.ok()) {
    LogEvent(LogLevel::kError, "round_not_started").Error(secagg.status());
    next_round_at_ = now + policy_.interval;
    return;
  }
  auto round = std::make_unique<Round>();
  round->id = plan.terms.round_id;
  round->started_at = now;
  round->stage_started_at = now;
  round->base = global_record_;
  round->spec = std::move(plan.spec);
  round->terms = std::move(plan.terms);
  round->session_id = std::move(plan.session_id);
  round->shape = plan.shape;
  round->graph.emplace(std::move(plan.graph));
  round->secagg.emplace(std::move(*secagg));
  for (const std::string& client_id : plan.cohort) {
    round->participant_ids[client_id] = static_cast<uint32_t>(round->participants.size() + 1);
    Participant participant;
    participant.client_id = client_id;
    round->participants.push_back(std::move(participant));
  }
  round->deadlines = ScheduleStages(now, policy_);
  round->stage = v1::ROUND_STAGE_SELECTED;
  round->stage_deadline = now + policy_.timeouts.train;

  RoundRecord record;
  record.round_id = static_cast<int64_t>(round->id);
  record.stage = StageName(v1::ROUND_STAGE_SELECTED);
  record.cohort_size = n;
  record.survivors = n;
  record.started_at = now;
  record.base_model_version = global_record_.version;
  if (absl::Status status = store_->StartRound(record); !status.ok()) {
    LogEvent(LogLevel::kError, "round_not_started").Error(status);
    next_round_at_ = now + policy_.interval;
    return;
  }
  last_round_id_ = round->id;
  LogEvent(LogLevel::kInfo, "round_started")
      .Field("round_id", round->id)
      .Field("cohort", n)
      .Field("online", static_cast<int64_t>(online.size()))
      .Field("base_model_version", global_record_.version)
      .Field("degree", static_cast<int64_t>(round->shape.degree))
      .Field("threshold", static_cast<int64_t>(round->shape.threshold))
      .Field("update_values", round->spec.layout().encoded_values());
  if (const std::string warning =
          NoiseWarning(policy_, n, static_cast<int64_t>(round->spec.layout().delta_values()));
      !warning.empty()) {
    LogEvent(LogLevel::kWarning, "noise_drowns_update")
        .Field("round_id", round->id)
        .Field("reason", warning);
  }
  round_ = std::move(round);
  polls_->WakeAll();
}

int64_t RoundEngine::MinimumSurvivors(const Round& round) {
  return coordinator::MinimumSurvivors(round.shape);
}

int64_t RoundEngine::Live() const {
  return std::count_if(round_->participants.begin(), round_->participants.end(),
                       [](const Participant& participant) { return !participant.dropped; });
}

void RoundEngine::StageEnded(Round& round) {
  const absl::Time now = Now();
  if (observer_ != nullptr) observer_->StageClosed(round.stage, now - round.stage_started_at);
  round.stage_started_at = now;
}

void RoundEngine::EnterStage(v1::RoundStage stage, absl::Time deadline) {
  StageEnded(*round_);
  round_->stage = stage;
  round_->stage_deadline = deadline;
  const int64_t survivors = Live();
  store_->UpdateRoundStage(static_cast<int64_t>(round_->id), StageName(stage), survivors)
      .IgnoreError();  // The row is informative until commit; a restart aborts the round anyway.
  LogEvent(LogLevel::kInfo, "round_stage")
      .Field("round_id", round_->id)
      .Field("stage", StageName(stage))
      .Field("participants", survivors);
  polls_->WakeAll();
}

namespace {
// Accepted() and the table below rely on the stages' numbers following the round's order.
static_assert(v1::ROUND_STAGE_KEYS_ADVERTISED == v1::ROUND_STAGE_SELECTED + 1 &&
              v1::ROUND_STAGE_KEYS_SHARED == v1::ROUND_STAGE_KEYS_ADVERTISED + 1 &&
              v1::ROUND_STAGE_MASKED_COLLECTED == v1::ROUND_STAGE_KEYS_SHARED + 1 &&
              v1::ROUND_STAGE_UNMASKED == v1::ROUND_STAGE_MASKED_COLLECTED + 1);
}  // namespace

const RoundEngine::StageRule* RoundEngine::RuleFor(v1::RoundStage stage) {
  static constexpr StageRule kStageRules[] = {
      {v1::ROUND_STAGE_SELECTED, "advertise-keys", "advertised keys",
       &secure_agg::SecAggServer::CloseAdvertiseKeys, true, v1::ROUND_STAGE_KEYS_ADVERTISED,
       &v1::StageDeadlines::share_keys, &RoundEngine::JoinTask},
      {v1::ROUND_STAGE_KEYS_ADVERTISED, "share-keys", "shared keys",
       &secure_agg::SecAggServer::CloseShareKeys, true, v1::ROUND_STAGE_KEYS_SHARED,
       &v1::StageDeadlines::masked_input, &RoundEngine::ShareKeysTask},
      {v1::ROUND_STAGE_KEYS_SHARED, "masked-input", "uploaded their masked input",
       &secure_agg::SecAggServer::CloseMaskedInput, true, v1::ROUND_STAGE_MASKED_COLLECTED,
       &v1::StageDeadlines::unmask, &RoundEngine::MaskedInputTask},
      {v1::ROUND_STAGE_MASKED_COLLECTED, "unmask", "revealed their shares", nullptr, false,
       v1::ROUND_STAGE_UNMASKED, nullptr, &RoundEngine::UnmaskTask},
  };
  for (const StageRule& rule : kStageRules) {
    if (rule.stage == stage) return &rule;
  }
  return nullptr;
}

void RoundEngine::MaybeCloseStage() {
  Round& round = *round_;
  const StageRule* rule = RuleFor(round.stage);
  if (rule == nullptr) return;
  const bool waiting = std::any_of(
      round.participants.begin(), round.participants.end(), [&](const Participant& participant) {
        return !participant.dropped && !participant.DidItsPartIn(round.stage);
      });
  if (waiting && Now() < round.stage_deadline) return;
  if (rule->drops_laggards) {
    for (Participant& participant : round.participants) {
      if (!participant.dropped && !participant.DidItsPartIn(round.stage)) {
        Drop(participant, absl::DeadlineExceededError(
                              absl::StrCat("missed the ", rule->deadline_name, " deadline")));
      }
    }
  }
  if (rule->close_secagg != nullptr) {
    if (absl::Status status = (*round.secagg.*rule->close_secagg)(); !status.ok()) {
      Abort(std::string(status.message()));
      return;
    }
  }
  if (rule->drops_laggards && Live() < MinimumSurvivors(round)) {
    Abort(absl::StrCat("only ", Live(), " participants ", rule->done_phrase, "; the round needs ",
                       MinimumSurvivors(round)));
    return;
  }
  EnterStage(rule->next, rule->next_deadline == nullptr
                             ? absl::InfiniteFuture()
                             : absl::FromUnixMillis(TimeUtil::TimestampToMilliseconds(
                                   (round.deadlines.*rule->next_deadline)())));
}

void RoundEngine::Abort(const std::string& reason) {
  Round& round = *round_;
  StageEnded(round);
  if (observer_ != nullptr) {
    observer_->RoundEnded(v1::ROUND_STAGE_ABORTED, Now() - round.started_at);
  }
  const int64_t survivors = Live();
  store_->AbortRound(static_cast<int64_t>(round.id), reason, survivors, Now()).IgnoreError();
  LogEvent(LogLevel::kWarning, "round_aborted")
      .Field("round_id", round.id)
      .Field("stage", StageName(round.stage))
      .Field("reason", reason);
  finished_ = Finished();
  finished_.id = round.id;
  finished_.outcome = v1::ROUND_STAGE_ABORTED;
  finished_.abort_reason = reason;
  for (const Participant& participant : round.participants)
    finished_.cohort[participant.client_id] = true;
  round_.reset();
  next_round_at_ = Now() + policy_.interval;
  polls_->WakeAll();
}

void RoundEngine::Commit(Round& round) {
  const absl::Time started = Now();
  auto fail = [&](const absl::Status& status) {
    absl::MutexLock lock(&mutex_);
    committing_ = false;
    Abort(absl::StrCat("commit failed: ", status.message()));
  };
  absl::StatusOr<AggregatedRound> aggregated =
      Aggregate(*round.secagg, round.spec, round.terms, policy_.expert_weight_floor, *global_,
                server_optimizer_);
  if (!aggregated.ok()) return fail(aggregated.status());

  absl::StatusOr<LedgerEntry> charge;
  {
    absl::MutexLock lock(&mutex_);
    charge = ledger_.Charge(round.terms, static_cast<int64_t>(aggregated->survivors.size()), Now());
  }
  if (!charge.ok()) return fail(charge.status());

  const std::filesystem::path tokenizer = models_.Directory(round.base) / "tokenizer.json";
  std::optional<std::pair<std::span<const float>, std::span<const float>>> moments;
  if (aggregated->optimizer.adaptive()) {
    moments.emplace(aggregated->optimizer.first_moment(), aggregated->optimizer.second_moment());
  }
  absl::StatusOr<ModelVersionRecord> record = models_.Write(
      round.base.version + 1,
      [&next = aggregated->next](const std::filesystem::path& directory) {
        return SaveGlobalModel(next, directory);
      },
      storage::PathExists(tokenizer) ? tokenizer : std::filesystem::path(),
      static_cast<int64_t>(round.id), moments);
  if (!record.ok()) return fail(record.status());
  std::vector<std::string> survivors;
  for (uint32_t participant : aggregated->survivors) {
    survivors.push_back(round.participants[participant - 1].client_id);
  }
  if (absl::Status status =
          store_->CommitRound(static_cast<int64_t>(round.id), survivors, *record, *charge);
      !status.ok()) {
    models_.RemoveUnpublished(round.base.version).IgnoreError();
    return fail(status);
  }
  Publish(round, std::move(*aggregated), *record, *charge, started);
}

void RoundEngine::Publish(Round& round, AggregatedRound aggregated,
                          const ModelVersionRecord& record, const LedgerEntry& charge,
                          absl::Time commit_started) {
  const double largest_tensor_change = LargestTensorChange(round.spec, *global_, aggregated.next);
  global_ = std::move(aggregated.next);
  server_optimizer_ = std::move(aggregated.optimizer);
  absl::MutexLock lock(&mutex_);
  global_record_ = record;
  if (absl::Status status = ledger_.Record(charge); !status.ok()) {
    // Charge priced this row against the same ledger a moment ago; it cannot fail here.
    LogEvent(LogLevel::kError, "ledger_record_failed").Error(status);
  }
  ++committed_rounds_;
  const absl::Time now = Now();
  const MergedUpdate& merged = aggregated.merged;
  LogEvent(LogLevel::kInfo, "round_committed")
      .Field("round_id", round.id)
      .Field("model_version", record.version)
      .Field("cohort", static_cast<int64_t>(round.participants.size()))
      .Field("survivors", static_cast<int64_t>(aggregated.survivors.size()))
      .Field("experts_merged", merged.experts_merged)
      .Field("experts_untouched", merged.experts_untouched)
      .Field("expert_weight_floor", merged.expert_weight_floor)
      .Field("largest_tensor_change", largest_tensor_change)
      .Field("epsilon", charge.epsilon_after)
      .Field("delta", charge.delta)
      .Field("expert_load", ExpertLoadText(merged.expert_weight_sums))
      .Field("commit_seconds", absl::ToDoubleSeconds(now - commit_started))
      .Field("round_seconds", absl::ToDoubleSeconds(now - round.started_at));
  StageEnded(round);
  if (observer_ != nullptr) {
    observer_->RoundEnded(v1::ROUND_STAGE_COMMITTED, now - round.started_at);
  }
  finished_ = Finished();
  finished_.id = round.id;
  finished_.outcome = v1::ROUND_STAGE_COMMITTED;
  finished_.new_model_version = static_cast<uint64_t>(record.version);
  for (const Participant& participant : round.participants)
    finished_.cohort[participant.client_id] = true;
  round_.reset();
  committing_ = false;
  next_round_at_ = now + policy_.interval;
  polls_->WakeAll();
}
}  // namespace fedmoe::coordinator
