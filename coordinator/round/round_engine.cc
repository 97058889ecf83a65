#include "coordinator/round/round_engine.h"

#include <google/protobuf/util/time_util.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "coordinator/round/privacy_plan.h"
#include "coordinator/round/update_spec.h"
#include "logging/log.h"
#include "model/checkpoint.h"
#include "pki/private_key.h"
#include "privacy/distributed_accounting.h"
#include "privacy/noise.h"
#include "privacy/ring_encoder.h"
#include "privacy/secure_random.h"
#include "secure_agg/neighbor_graph.h"
#include "secure_agg/packing.h"
#include "storage/file_status.h"

namespace fedmoe::coordinator {
namespace {

using google::protobuf::util::TimeUtil;

// A client renews about every two thirds of a certificate lifetime, so 64 changes reach back
// years; a peer that pinned a key older than that is refused and asks its operator.
constexpr int kRelayedKeyChanges = 64;

google::protobuf::Timestamp ToTimestamp(absl::Time time) {
  return TimeUtil::MillisecondsToTimestamp(absl::ToUnixMillis(time));
}

bool Terminal(v1::RoundStage stage) {
  return stage == v1::ROUND_STAGE_COMMITTED || stage == v1::ROUND_STAGE_ABORTED;
}

absl::StatusOr<std::string> RandomBytes(size_t count) {
  std::string bytes(count, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(bytes.data()), static_cast<int>(count)) != 1) {
    return absl::InternalError("OpenSSL's random generator failed");
  }
  return bytes;
}

// SHA-256("fedmoe/v1/session" ‖ federation ‖ round id, 8 bytes big-endian ‖ spec).
absl::StatusOr<std::string> SessionId(const std::string& federation, uint64_t round_id,
                                      const v1::UpdateSpec& spec) {
  std::string spec_bytes;
  {
    google::protobuf::io::StringOutputStream stream(&spec_bytes);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    if (!spec.SerializeToCodedStream(&coded)) {
      return absl::InternalError("cannot serialize the update spec");
    }
  }
  std::string input = absl::StrCat("fedmoe/v1/session", federation);
  for (int shift = 56; shift >= 0; shift -= 8) {
    input.push_back(static_cast<char>((round_id >> shift) & 0xff));
  }
  input += spec_bytes;
  std::string digest(32, '\0');
  unsigned int length = 0;
  if (EVP_Digest(input.data(), input.size(), reinterpret_cast<unsigned char*>(digest.data()),
                 &length, EVP_sha256(), nullptr) != 1) {
    return absl::InternalError("OpenSSL's SHA-256 failed");
  }
  return digest;
}

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
                         PollHub* polls)
    : config_(config),
      policy_(config->rounds),
      store_(store),
      presence_(presence),
      polls_(polls),
      models_(config->state_dir.models()),
      server_optimizer_(config->rounds) {}

absl::StatusOr<std::unique_ptr<RoundEngine>> RoundEngine::Create(const CoordinatorConfig* config,
                                                                 Store* store,
                                                                 ClientPresence* presence,
                                                                 PollHub* polls) {
  std::unique_ptr<RoundEngine> engine(new RoundEngine(config, store, presence, polls));
  if (absl::Status status = engine->Load(); !status.ok()) return status;
  return engine;
}

absl::Status RoundEngine::Load() {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<int64_t> aborted =
      store_->AbortUnfinishedRounds("the coordinator restarted during the round", absl::Now());
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
  if (!latest->has_value()) {
    if (policy_.initial_model.empty()) {
      paused_reason_ = "no model is published: set model.initial in coordinator.yaml";
      return absl::OkStatus();
    }
    absl::StatusOr<model::ModelParameters> initial = model::LoadModel(policy_.initial_model);
    if (!initial.ok()) {
      return {initial.status().code(), absl::StrCat("model.initial: ", initial.status().message())};
    }
    const std::filesystem::path tokenizer = policy_.initial_model / "tokenizer.json";
    absl::StatusOr<ModelVersionRecord> record = models_.Write(
        1, *initial, storage::PathExists(tokenizer) ? tokenizer : "", std::nullopt, std::nullopt);
    if (!record.ok()) return record.status();
    if (absl::Status status = store_->AddInitialModel(*record); !status.ok()) return status;
    LogEvent(LogLevel::kInfo, "model_published")
        .Field("version", record->version)
        .Field("source", policy_.initial_model.string());
    *latest = *record;
  }
  global_record_ = **latest;
  absl::StatusOr<model::ModelParameters> global =
      model::LoadModel(models_.Directory(global_record_));
  if (!global.ok()) return global.status();
  global_.emplace(std::move(*global));
  if (server_optimizer_.adaptive()) {
    if (auto moments = models_.ReadServerMoments(global_record_); moments.ok()) {
      server_optimizer_.RestoreMoments(std::move(moments->first), std::move(moments->second));
    }
  }
  absl::StatusOr<std::vector<LedgerEntry>> ledger = store_->Ledger();
  if (!ledger.ok()) return ledger.status();
  for (const LedgerEntry& entry : *ledger) {
    if (entry.rdp.size() != accountant_.orders().size()) {
      return absl::DataLossError(absl::StrCat("the privacy ledger entry of round ", entry.round_id,
                                              " has ", entry.rdp.size(), " orders, not ",
                                              accountant_.orders().size()));
    }
    if (absl::Status status = accountant_.AddRdp(entry.rdp); !status.ok()) return status;
    if (absl::Status status = accountant_.AddSamplerTotalVariation(entry.sampler_total_variation);
        !status.ok()) {
      return absl::DataLossError(absl::StrCat("the privacy ledger entry of round ", entry.round_id,
                                              ": ", status.message()));
    }
    epsilon_spent_ = entry.epsilon_after;
  }
  absl::StatusOr<Store::RoundCounts> counts = store_->CountRounds();
  if (!counts.ok()) return counts.status();
  committed_rounds_ = counts->committed;
  next_round_at_ = absl::Now();
  return absl::OkStatus();
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
  const absl::Time now = absl::Now();
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

  // Poisson sampling: each polling client independently with probability q, from OpenSSL's
  // generator so that nobody can predict or steer the cohort.
  absl::StatusOr<privacy::SecureRandom> random = privacy::SecureRandom::FromSystem();
  if (!random.ok()) return;
  std::vector<std::string> cohort;
  for (const std::string& client_id : online) {
    if (random->Bernoulli(policy_.sampling_rate)) cohort.push_back(client_id);
  }
  const auto n = static_cast<int64_t>(cohort.size());
  if (n < policy_.min_clients || n > policy_.max_clients) {
    next_round_at_ = now + absl::Seconds(1);
    return;
  }
  // A cohort outside the range was drawn again, so membership of the one kept is not at rate
  // q: the ledger charges the conditioned rate.
  absl::StatusOr<double> charged_rate =
      privacy::ConditionedSamplingRate(static_cast<int64_t>(online.size()), policy_.sampling_rate,
                                       policy_.min_clients, policy_.max_clients);
  if (!charged_rate.ok()) {
    LogEvent(LogLevel::kError, "round_not_started").Error(charged_rate.status());
    next_round_at_ = now + policy_.interval;
    return;
  }
  auto round = std::make_unique<Round>();
  round->id = last_round_id_ + 1;
  round->sampling_rate = *charged_rate;
  round->started_at = now;
  round->stage_started_at = now;
  round->base = global_record_;

  absl::StatusOr<secure_agg::GraphParameters> graph_parameters = secure_agg::ChooseGraphParameters(
      static_cast<uint32_t>(n), policy_.dropout_rate, policy_.corrupt_fraction);
  if (graph_parameters.ok()) {
    round->degree = graph_parameters->degree;
    round->threshold = graph_parameters->threshold;
  } else {
    round->degree = static_cast<uint32_t>(n - 1);
    round->threshold = 0;
  }
  // A coordinator that tells one neighbour a client dropped and another that it lived gets
  // one share of each kind from each; t > k/2 keeps that from ever adding up to both secrets.
  round->threshold = std::max(round->threshold, round->degree / 2 + 1);

  absl::StatusOr<std::string> rotation_seed = RandomBytes(32);
  absl::StatusOr<std::string> graph_seed = RandomBytes(32);
  if (!rotation_seed.ok() || !graph_seed.ok()) return;
  absl::StatusOr<v1::ModelManifest> manifest = ModelRepository::Manifest(global_record_);
  if (!manifest.ok()) {
    LogEvent(LogLevel::kError, "round_not_started").Error(manifest.status());
    next_round_at_ = now + policy_.interval;
    return;
  }
  absl::StatusOr<PlannedUpdate> planned =
      BuildUpdateSpec(global_->layout(), global_->config(), policy_, *manifest, n, *rotation_seed);
  if (!planned.ok()) {
    LogEvent(LogLevel::kError, "round_not_started").Error(planned.status());
    next_round_at_ = now + policy_.interval;
    return;
  }
  round->spec = std::move(planned->spec);
  round->encoding = std::move(planned->encoding);

  if (policy_.target_epsilon > 0) {
    // The worst case of each: the RDP of the fewest survivors the round can commit with, the
    // samplers' distance with the whole cohort's noise in the sum.
    absl::StatusOr<std::vector<double>> rdp =
        RoundRdp(PricedRound(*round, MinimumSurvivors(*round)));
    privacy::RdpAccountant next = accountant_;
    double epsilon = std::numeric_limits<double>::infinity();
    if (rdp.ok() && next.AddRdp(*rdp).ok() &&
        next.AddSamplerTotalVariation(RoundSamplerTotalVariation(PricedRound(*round, n))).ok()) {
      if (absl::StatusOr<privacy::PrivacyLoss> loss = next.Epsilon(policy_.delta); loss.ok()) {
        epsilon = loss->epsilon;
      }
    }
    if (!(epsilon <= policy_.target_epsilon)) {
      std::string reason = absl::StrFormat(
          "privacy budget exhausted: another round could take epsilon from %.4g to %.4g, past "
          "the target %.4g (delta %.3g)",
          epsilon_spent_, epsilon, policy_.target_epsilon, policy_.delta);
      if (reason != paused_reason_) {
        paused_reason_ = reason;
        LogEvent(LogLevel::kWarning, "rounds_paused").Field("reason", paused_reason_);
      }
      next_round_at_ = now + absl::Seconds(5);
      return;
    }
  }
  paused_reason_.clear();

  absl::StatusOr<std::string> session = SessionId(config_->federation, round->id, round->spec);
  if (!session.ok()) return;
  round->session_id = *session;
  absl::StatusOr<secure_agg::NeighborGraph> graph =
      secure_agg::NeighborGraph::Create(static_cast<uint32_t>(n), round->degree, *graph_seed);
  if (!graph.ok()) {
    LogEvent(LogLevel::kError, "round_not_started").Error(graph.status());
    next_round_at_ = now + policy_.interval;
    return;
  }
  secure_agg::RoundSetup setup;
  setup.round_id = round->id;
  setup.session_id = round->session_id;
  setup.num_participants = static_cast<uint32_t>(n);
  setup.threshold = round->threshold;
  setup.length = round->spec.layout().encoded_values();
  setup.bits = static_cast<int>(policy_.ring_bits);
  absl::StatusOr<secure_agg::SecAggServer> secagg = secure_agg::SecAggServer::Create(setup, *graph);
  if (!secagg.ok()) {
    LogEvent(LogLevel::kError, "round_not_started").Error(secagg.status());
    next_round_at_ = now + policy_.interval;
    return;
  }
  round->graph.emplace(std::move(*graph));
  round->secagg.emplace(std::move(*secagg));
  for (const std::string& client_id : cohort) {
    round->participant_ids[client_id] = static_cast<uint32_t>(round->participants.size() + 1);
    Participant participant;
    participant.client_id = client_id;
    round->participants.push_back(std::move(participant));
  }
  const absl::Time advertise = now + policy_.timeouts.train;
  const absl::Time share = advertise + policy_.timeouts.share_keys;
  const absl::Time masked = share + policy_.timeouts.masked_input;
  const absl::Time unmask = masked + policy_.timeouts.unmask;
  *round->deadlines.mutable_advertise_keys() = ToTimestamp(advertise);
  *round->deadlines.mutable_share_keys() = ToTimestamp(share);
  *round->deadlines.mutable_masked_input() = ToTimestamp(masked);
  *round->deadlines.mutable_unmask() = ToTimestamp(unmask);
  round->stage = v1::ROUND_STAGE_SELECTED;
  round->stage_deadline = advertise;

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
      .Field("degree", static_cast<int64_t>(round->degree))
      .Field("threshold", static_cast<int64_t>(round->threshold))
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
  return std::max<int64_t>(static_cast<int64_t>(round.threshold) + 1, 2);
}

int64_t RoundEngine::Live(bool Participant::*done) const {
  int64_t count = 0;
  for (const Participant& participant : round_->participants) {
    if (!participant.dropped && (done == nullptr || participant.*done)) ++count;
  }
  return count;
}

void RoundEngine::StageEnded(Round& round) {
  const absl::Time now = absl::Now();
  if (observer_ != nullptr) observer_->StageClosed(round.stage, now - round.stage_started_at);
  round.stage_started_at = now;
}

void RoundEngine::EnterStage(v1::RoundStage stage, absl::Time deadline) {
  StageEnded(*round_);
  round_->stage = stage;
  round_->stage_deadline = deadline;
  const int64_t survivors = Live(nullptr);
  store_->UpdateRoundStage(static_cast<int64_t>(round_->id), StageName(stage), survivors)
      .IgnoreError();  // The row is informative until commit; a restart aborts the round anyway.
  LogEvent(LogLevel::kInfo, "round_stage")
      .Field("round_id", round_->id)
      .Field("stage", StageName(stage))
      .Field("participants", survivors);
  polls_->WakeAll();
}

void RoundEngine::MaybeCloseStage() {
  Round& round = *round_;
  const absl::Time now = absl::Now();
  const bool expired = now >= round.stage_deadline;
  auto pending = [&](bool Participant::*before, bool Participant::*after) {
    for (const Participant& participant : round.participants) {
      if (!participant.dropped && (before == nullptr || participant.*before) &&
          !(participant.*after)) {
        return true;
      }
    }
    return false;
  };
  // Those still expected past a closed stage are the ones that did its part.
  auto drop_laggards = [&](bool Participant::*done, const char* stage) {
    for (Participant& participant : round.participants) {
      if (!participant.dropped && !(participant.*done)) {
        Drop(participant,
             absl::DeadlineExceededError(absl::StrCat("missed the ", stage, " deadline")));
      }
    }
  };
  auto too_few = [&](bool Participant::*done, const char* what) -> bool {
    const int64_t live = Live(done);
    if (live >= MinimumSurvivors(round)) return false;
    Abort(absl::StrCat("only ", live, " participants ", what, "; the round needs ",
                       MinimumSurvivors(round)));
    return true;
  };
  switch (round.stage) {
    case v1::ROUND_STAGE_SELECTED:
      if (!expired && pending(nullptr, &Participant::advertised)) return;
      drop_laggards(&Participant::advertised, "advertise-keys");
      if (too_few(&Participant::advertised, "advertised keys")) return;
      if (absl::Status status = round.secagg->CloseAdvertiseKeys(); !status.ok()) {
        Abort(std::string(status.message()));
        return;
      }
      EnterStage(
          v1::ROUND_STAGE_KEYS_ADVERTISED,
          absl::FromUnixMillis(TimeUtil::TimestampToMilliseconds(round.deadlines.share_keys())));
      return;
    case v1::ROUND_STAGE_KEYS_ADVERTISED:
      if (!expired && pending(&Participant::advertised, &Participant::shared)) return;
      drop_laggards(&Participant::shared, "share-keys");
      if (too_few(&Participant::shared, "shared keys")) return;
      if (absl::Status status = round.secagg->CloseShareKeys(); !status.ok()) {
        Abort(std::string(status.message()));
        return;
      }
      EnterStage(
          v1::ROUND_STAGE_KEYS_SHARED,
          absl::FromUnixMillis(TimeUtil::TimestampToMilliseconds(round.deadlines.masked_input())));
      return;
    case v1::ROUND_STAGE_KEYS_SHARED:
      if (!expired && pending(&Participant::shared, &Participant::uploaded)) return;
      drop_laggards(&Participant::uploaded, "masked-input");
      if (absl::Status status = round.secagg->CloseMaskedInput(); !status.ok()) {
        Abort(std::string(status.message()));
        return;
      }
      if (too_few(&Participant::uploaded, "uploaded their masked input")) return;
      EnterStage(v1::ROUND_STAGE_MASKED_COLLECTED,
                 absl::FromUnixMillis(TimeUtil::TimestampToMilliseconds(round.deadlines.unmask())));
      return;
    case v1::ROUND_STAGE_MASKED_COLLECTED:
      if (!expired && pending(&Participant::uploaded, &Participant::unmasked)) return;
      // Late unmaskers are not dropped from the sum: their masked input is in it, and the
      // others' shares can still remove its masks.
      StageEnded(round);
      round.stage = v1::ROUND_STAGE_UNMASKED;
      store_
          ->UpdateRoundStage(static_cast<int64_t>(round.id), StageName(v1::ROUND_STAGE_UNMASKED),
                             Live(&Participant::uploaded))
          .IgnoreError();
      return;
    default:
      return;
  }
}

void RoundEngine::Abort(const std::string& reason) {
  Round& round = *round_;
  StageEnded(round);
  if (observer_ != nullptr) {
    observer_->RoundEnded(v1::ROUND_STAGE_ABORTED, absl::Now() - round.started_at);
  }
  const int64_t survivors = Live(nullptr);
  store_->AbortRound(static_cast<int64_t>(round.id), reason, survivors, absl::Now()).IgnoreError();
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
  next_round_at_ = absl::Now() + policy_.interval;
  polls_->WakeAll();
}

std::optional<privacy::DistributedRound> RoundEngine::PricedRound(const Round& round,
                                                                  int64_t survivors) const {
  const v1::PrivacySpec& privacy = round.spec.privacy();
  return PriceRound(privacy.mode(), round.encoding,
                    static_cast<int64_t>(round.spec.layout().encoded_values()), round.sampling_rate,
                    privacy.noise_multiplier(), survivors);
}

absl::StatusOr<std::vector<double>> RoundEngine::RoundRdp(
    const std::optional<privacy::DistributedRound>& priced) const {
  // No noise: no privacy.
  if (!priced.has_value()) {
    return std::vector<double>(accountant_.orders().size(),
                               std::numeric_limits<double>::infinity());
  }
  return privacy::DistributedRoundRdp(*priced, accountant_.orders());
}

double RoundEngine::RoundSamplerTotalVariation(
    const std::optional<privacy::DistributedRound>& priced) {
  return priced.has_value() ? privacy::DistributedRoundTotalVariation(*priced) : 0.0;
}

void RoundEngine::Commit(Round& round) {
  const absl::Time started = absl::Now();
  auto fail = [&](const absl::Status& status) {
    absl::MutexLock lock(&mutex_);
    committing_ = false;
    Abort(absl::StrCat("commit failed: ", status.message()));
  };
  absl::StatusOr<std::vector<uint64_t>> sum = round.secagg->Finish();
  if (!sum.ok()) return fail(sum.status());
  std::vector<std::string> survivors;
  for (uint32_t participant : round.secagg->survivors()) {
    survivors.push_back(round.participants[participant - 1].client_id);
  }
  const v1::UpdateSpec& spec = round.spec;
  // What the ledger charges for this round, priced once.
  const std::optional<privacy::DistributedRound> priced =
      PricedRound(round, static_cast<int64_t>(survivors.size()));
  if (spec.privacy().mode() == v1::PrivacySpec::MODE_CENTRAL) {
    // Central DP: the coordinator's noise, in the ring before the sum is decoded, where it is
    // exact integer noise of the variance priced.
    absl::StatusOr<privacy::SecureRandom> random = privacy::SecureRandom::FromSystem();
    if (!random.ok()) return fail(random.status());
    if (absl::Status status = privacy::RingEncoder::AddCentralNoise(
            *sum, round.encoding.ring_bits, priced->local_noise_variance, *random);
        !status.ok()) {
      return fail(status);
    }
  }
  absl::StatusOr<privacy::RingEncoder> decoder =
      privacy::RingEncoder::Create(spec.layout().plain_values(), round.encoding);
  if (!decoder.ok()) return fail(decoder.status());
  absl::StatusOr<std::vector<double>> decoded = decoder->DecodeSum(*sum);
  sum->clear();
  sum->shrink_to_fit();
  if (!decoded.ok()) return fail(decoded.status());
  absl::StatusOr<MergedUpdate> merged =
      MergeUpdate(*decoded, spec, static_cast<int64_t>(survivors.size()),
                  policy_.expert_weight_floor, DecodedNoiseStddev(priced, round.encoding));
  decoded->clear();
  decoded->shrink_to_fit();
  if (!merged.ok()) return fail(merged.status());

  // The optimizer's moments change only if the round commits.
  const std::vector<float> first = server_optimizer_.first_moment();
  const std::vector<float> second = server_optimizer_.second_moment();
  model::ModelParameters next = *global_;
  if (absl::Status status = server_optimizer_.Apply(spec, *merged, next); !status.ok()) {
    server_optimizer_.RestoreMoments(first, second);
    return fail(status);
  }
  absl::StatusOr<std::vector<double>> rdp = RoundRdp(priced);
  privacy::RdpAccountant accountant;
  double epsilon = std::numeric_limits<double>::infinity();
  double best_order = 0;
  {
    absl::MutexLock lock(&mutex_);
    accountant = accountant_;
  }
  if (!rdp.ok()) return fail(rdp.status());
  if (absl::Status status = accountant.AddRdp(*rdp); !status.ok()) return fail(status);
  const double sampler_total_variation = RoundSamplerTotalVariation(priced);
  if (absl::Status status = accountant.AddSamplerTotalVariation(sampler_total_variation);
      !status.ok()) {
    return fail(status);
  }
  if (absl::StatusOr<privacy::PrivacyLoss> loss = accountant.Epsilon(policy_.delta); loss.ok()) {
    epsilon = loss->epsilon;
    // No finite ε (privacy.mode none) has no best order either; the ledger stores 0 then.
    best_order = std::isnan(loss->order) ? 0 : loss->order;
  }
  const std::filesystem::path tokenizer = models_.Directory(round.base) / "tokenizer.json";
  std::optional<std::pair<std::span<const float>, std::span<const float>>> moments;
  if (server_optimizer_.adaptive()) {
    moments.emplace(server_optimizer_.first_moment(), server_optimizer_.second_moment());
  }
  absl::StatusOr<ModelVersionRecord> record =
      models_.Write(round.base.version + 1, next,
                    storage::PathExists(tokenizer) ? tokenizer : std::filesystem::path(),
                    static_cast<int64_t>(round.id), moments);
  if (!record.ok()) {
    server_optimizer_.RestoreMoments(first, second);
    return fail(record.status());
  }
  LedgerEntry entry;
  entry.round_id = static_cast<int64_t>(round.id);
  entry.sampling_rate = round.sampling_rate;
  entry.planned_noise_multiplier = spec.privacy().noise_multiplier();
  entry.effective_noise_multiplier = priced.has_value() ? privacy::EffectiveNoiseMultiplier(*priced)
                                                        : spec.privacy().noise_multiplier();
  entry.mechanism = std::string(MechanismName(spec.privacy().mechanism()));
  entry.mode = std::string(PrivacyModeName(spec.privacy().mode()));
  entry.orders = accountant.orders();
  entry.rdp = *rdp;
  entry.epsilon_after = epsilon;
  entry.delta = policy_.delta;
  entry.best_order = best_order;
  entry.committed_at = absl::Now();
  entry.sampler_total_variation = sampler_total_variation;
  if (absl::Status status =
          store_->CommitRound(static_cast<int64_t>(round.id), survivors, *record, entry);
      !status.ok()) {
    server_optimizer_.RestoreMoments(first, second);
    models_.RemoveUnpublished(round.base.version).IgnoreError();
    return fail(status);
  }
  const double largest_tensor_change = LargestTensorChange(spec, *global_, next);
  global_ = std::move(next);
  absl::MutexLock lock(&mutex_);
  global_record_ = *record;
  accountant_ = std::move(accountant);
  epsilon_spent_ = epsilon;
  ++committed_rounds_;
  LogEvent(LogLevel::kInfo, "round_committed")
      .Field("round_id", round.id)
      .Field("model_version", record->version)
      .Field("cohort", static_cast<int64_t>(round.participants.size()))
      .Field("survivors", static_cast<int64_t>(survivors.size()))
      .Field("experts_merged", merged->experts_merged)
      .Field("experts_untouched", merged->experts_untouched)
      .Field("expert_weight_floor", merged->expert_weight_floor)
      .Field("largest_tensor_change", largest_tensor_change)
      .Field("epsilon", epsilon)
      .Field("delta", policy_.delta)
      .Field("expert_load", ExpertLoadText(merged->expert_weight_sums))
      .Field("commit_seconds", absl::ToDoubleSeconds(absl::Now() - started))
      .Field("round_seconds", absl::ToDoubleSeconds(absl::Now() - round.started_at));
  StageEnded(round);
  if (observer_ != nullptr) {
    observer_->RoundEnded(v1::ROUND_STAGE_COMMITTED, absl::Now() - round.started_at);
  }
  finished_ = Finished();
  finished_.id = round.id;
  finished_.outcome = v1::ROUND_STAGE_COMMITTED;
  finished_.new_model_version = static_cast<uint64_t>(record->version);
  for (const Participant& participant : round.participants)
    finished_.cohort[participant.client_id] = true;
  round_.reset();
  committing_ = false;
  next_round_at_ = absl::Now() + policy_.interval;
  polls_->WakeAll();
}

absl::StatusOr<RoundEngine::Participant*> RoundEngine::Submitter(const std::string& client_id,
                                                                 uint64_t round_id,
                                                                 v1::RoundStage open_stage) {
  if (round_ == nullptr || round_->id != round_id) {
    if (round_ == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat("round ", round_id, " is not open; no round is open"));
    }
    return absl::FailedPreconditionError(
        absl::StrCat("round ", round_id, " is not open; the open round is ", round_->id,
                     " at stage ", StageName(round_->stage)));
  }
  auto found = round_->participant_ids.find(client_id);
  if (found == round_->participant_ids.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat("this client is not in the cohort of round ", round_id));
  }
  Participant& participant = round_->participants[found->second - 1];
  if (participant.dropped) {
    return absl::FailedPreconditionError(
        absl::StrCat("this client was dropped from round ", round_id));
  }
  if (round_->stage != open_stage) {
    if (round_->stage > open_stage) {
      // A message for a stage that has closed is a replay (or a retry too late to count): the
      // client's view of the round has diverged, so it takes no further part. Its masked
      // input, if already in the sum, stays there and is unmasked with the others' shares.
      absl::Status closed = absl::DeadlineExceededError(
          absl::StrCat("the ", StageName(open_stage), " stage of round ", round_id,
                       " has closed; this client is dropped from the round"));
      Drop(participant, closed);
      return closed;
    }
    return absl::FailedPreconditionError(absl::StrCat("round ", round_id, " is at stage ",
                                                      StageName(round_->stage), ", not yet ",
                                                      StageName(open_stage)));
  }
  return &participant;
}

void RoundEngine::Drop(Participant& participant, const absl::Status& why) {
  participant.dropped = true;
  LogEvent(LogLevel::kWarning, "participant_dropped")
      .Field("round_id", round_->id)
      .Field("client_id", participant.client_id)
      .Field("reason", std::string(why.message()));
}

absl::StatusOr<v1::StageAck> RoundEngine::AdvertiseKeys(const std::string& client_id,
                                                        const std::string& certificate_der,
                                                        const v1::AdvertiseKeysRequest& request) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Participant*> participant =
      Submitter(client_id, request.round_id(), v1::ROUND_STAGE_SELECTED);
  if (!participant.ok()) return participant.status();
  const uint32_t id = round_->participant_ids[client_id];
  auto refuse = [&](absl::Status status) {
    Drop(**participant, status);
    return status;
  };
  if (request.cipher_public_key().size() != 32 || request.mask_public_key().size() != 32) {
    return refuse(absl::InvalidArgumentError("X25519 public keys are 32 bytes"));
  }
  absl::StatusOr<pki::Certificate> certificate = pki::Certificate::FromDer(certificate_der);
  if (!certificate.ok()) return refuse(certificate.status());
  const std::string message = secure_agg::AdvertisedKeysMessage(
      round_->session_id, id, request.cipher_public_key(), request.mask_public_key());
  if (absl::Status verified =
          pki::VerifySignature(certificate->PublicKeyDer(), message, request.signature());
      !verified.ok()) {
    return refuse(absl::InvalidArgumentError(
        absl::StrCat("the advertised keys' signature does not verify: ", verified.message())));
  }
  absl::StatusOr<std::vector<pki::KeyChange>> key_changes =
      store_->KeyChanges(client_id, kRelayedKeyChanges);
  if (!key_changes.ok()) return key_changes.status();
  const bool duplicate = (*participant)->advertised;
  if (absl::Status status = round_->secagg->ReceiveAdvertisedKeys(secure_agg::AdvertisedKeys{
          id, request.cipher_public_key(), request.mask_public_key(), request.signature()});
      !status.ok()) {
    return refuse(status);
  }
  (*participant)->advertised = true;
  (*participant)->certificate_der = certificate_der;
  (*participant)->key_changes = *std::move(key_changes);
  v1::StageAck ack;
  ack.set_round_id(round_->id);
  ack.set_stage(v1::ROUND_STAGE_KEYS_ADVERTISED);
  ack.set_duplicate(duplicate);
  return ack;
}

absl::StatusOr<v1::StageAck> RoundEngine::ShareKeys(const std::string& client_id,
                                                    const v1::ShareKeysRequest& request) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Participant*> participant =
      Submitter(client_id, request.round_id(), v1::ROUND_STAGE_KEYS_ADVERTISED);
  if (!participant.ok()) return participant.status();
  const uint32_t id = round_->participant_ids[client_id];
  std::vector<secure_agg::SealedShares> shares;
  shares.reserve(static_cast<size_t>(request.shares_size()));
  for (const v1::EncryptedShares& bundle : request.shares()) {
    shares.push_back({id, bundle.peer_participant_id(), bundle.ciphertext()});
  }
  const bool duplicate = (*participant)->shared;
  if (absl::Status status = round_->secagg->ReceiveShares(id, shares); !status.ok()) {
    Drop(**participant, status);
    return status;
  }
  (*participant)->shared = true;
  v1::StageAck ack;
  ack.set_round_id(round_->id);
  ack.set_stage(v1::ROUND_STAGE_KEYS_SHARED);
  ack.set_duplicate(duplicate);
  return ack;
}

RoundEngine::MaskedUpload::MaskedUpload(MaskedUpload&& other) noexcept
    : engine_(std::exchange(other.engine_, nullptr)),
      round_id_(other.round_id_),
      bits_(other.bits_),
      total_values_(other.total_values_) {}

RoundEngine::MaskedUpload::~MaskedUpload() {
  if (engine_ == nullptr) return;
  absl::MutexLock lock(&engine_->mutex_);
  --engine_->uploads_in_flight_;
}

absl::StatusOr<RoundEngine::MaskedUpload> RoundEngine::BeginMaskedInput(
    const std::string& client_id, uint64_t round_id, uint64_t total_values) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Participant*> participant =
      Submitter(client_id, round_id, v1::ROUND_STAGE_KEYS_SHARED);
  if (!participant.ok()) return participant.status();
  const uint64_t expected = round_->spec.layout().encoded_values();
  if (total_values != expected) {
    absl::Status status = absl::InvalidArgumentError(
        absl::StrCat("the masked input has ", total_values, " values; round ", round_->id,
                     " expects ", expected));
    Drop(**participant, status);
    return status;
  }
  const int bits = static_cast<int>(policy_.ring_bits);
  if ((*participant)->uploaded) return MaskedUpload(nullptr, round_id, bits, expected);
  if (uploads_in_flight_ >= config_->concurrent_uploads) {
    return absl::ResourceExhaustedError(
        absl::StrCat(uploads_in_flight_, " masked inputs are streaming already (",
                     "limits.concurrent_uploads); send again shortly"));
  }
  ++uploads_in_flight_;
  return MaskedUpload(this, round_id, bits, expected);
}

absl::StatusOr<v1::StageAck> RoundEngine::FinishMaskedInput(const std::string& client_id,
                                                            const MaskedUpload& upload,
                                                            std::span<const StagedChunk> chunks) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Participant*> participant =
      Submitter(client_id, upload.round_id(), v1::ROUND_STAGE_KEYS_SHARED);
  if (!participant.ok()) return participant.status();
  const uint32_t id = round_->participant_ids[client_id];
  const bool duplicate = (*participant)->uploaded;
  if (!duplicate) {
    std::vector<uint64_t> values;
    uint64_t offset = 0;
    for (const StagedChunk& chunk : chunks) {
      values.resize(chunk.value_count);
      // The stream's chunks were unpacked once already when they arrived; this cannot fail
      // unless memory is corrupt, and then the round must not commit a partial sum.
      absl::Status status = secure_agg::UnpackValues(chunk.packed_values, upload.bits(), values);
      if (status.ok()) status = round_->secagg->ReceiveMaskedChunk(id, offset, values);
      if (!status.ok()) {
        Drop(**participant, status);
        return status;
      }
      offset += chunk.value_count;
    }
    (*participant)->uploaded = true;
  }
  v1::StageAck ack;
  ack.set_round_id(round_->id);
  ack.set_stage(v1::ROUND_STAGE_MASKED_COLLECTED);
  ack.set_duplicate(duplicate);
  ack.set_values_received(round_->secagg->ValuesReceived(id));
  return ack;
}

absl::StatusOr<v1::StageAck> RoundEngine::Unmask(const std::string& client_id,
                                                 const v1::UnmaskRequest& request) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Participant*> participant =
      Submitter(client_id, request.round_id(), v1::ROUND_STAGE_MASKED_COLLECTED);
  if (!participant.ok()) return participant.status();
  if (!(*participant)->uploaded) {
    return absl::FailedPreconditionError("this client's masked input is not in the sum");
  }
  secure_agg::RevealedShares revealed;
  revealed.participant = round_->participant_ids[client_id];
  for (const v1::RevealedShare& share : request.self_mask_shares()) {
    revealed.self_mask_shares[share.owner_participant_id()] = share.share();
  }
  for (const v1::RevealedShare& share : request.mask_key_shares()) {
    revealed.mask_key_shares[share.owner_participant_id()] = share.share();
  }
  const bool duplicate = (*participant)->unmasked;
  if (absl::Status status = round_->secagg->ReceiveRevealedShares(revealed); !status.ok()) {
    Drop(**participant, status);
    return status;
  }
  (*participant)->unmasked = true;
  v1::StageAck ack;
  ack.set_round_id(round_->id);
  ack.set_stage(v1::ROUND_STAGE_UNMASKED);
  ack.set_duplicate(duplicate);
  return ack;
}

bool RoundEngine::InOpenRound(const std::string& client_id) {
  absl::MutexLock lock(&mutex_);
  if (round_ == nullptr) return false;
  auto found = round_->participant_ids.find(client_id);
  return found != round_->participant_ids.end() && !round_->participants[found->second - 1].dropped;
}

std::optional<v1::PollTaskResponse> RoundEngine::NextTask(const std::string& client_id,
                                                          const v1::PollTaskRequest& request) {
  absl::MutexLock lock(&mutex_);
  // How the last round ended comes before the next round's tasks: a client that heard of
  // neither (its polls were deferred) learns the outcomes in order.
  if (finished_.id != 0 && finished_.cohort.contains(client_id) &&
      (request.known_round_id() < finished_.id ||
       (request.known_round_id() == finished_.id && !Terminal(request.known_stage())))) {
    v1::PollTaskResponse response;
    v1::RoundFinished* finished = response.mutable_round_finished();
    finished->set_round_id(finished_.id);
    finished->set_outcome(finished_.outcome);
    finished->set_new_model_version(finished_.new_model_version);
    finished->set_abort_reason(finished_.abort_reason);
    return response;
  }
  const bool withdrew = request.known_stage() == v1::ROUND_STAGE_ABORTED;
  if (round_ != nullptr) {
    if (auto found = round_->participant_ids.find(client_id);
        found != round_->participant_ids.end()) {
      const uint32_t id = found->second;
      Participant& participant = round_->participants[id - 1];
      if (withdrew && request.known_round_id() == round_->id && !participant.dropped &&
          round_->stage < v1::ROUND_STAGE_UNMASKED) {
        const std::string reason = PrintableLine(request.left_reason(), 256);
        Drop(participant,
             absl::CancelledError(reason.empty() ? "the client withdrew (it lost its round state)"
                                                 : absl::StrCat("the client left: ", reason)));
        if (!reason.empty()) {
          store_
              ->AddLeftReason(static_cast<int64_t>(round_->id),
                              absl::StrCat(client_id, ": ", reason))
              .IgnoreError();
        }
      }
      if (participant.dropped) return std::nullopt;
      v1::PollTaskResponse response;
      switch (round_->stage) {
        case v1::ROUND_STAGE_SELECTED:
          if (participant.advertised) return std::nullopt;
          {
            v1::JoinRoundTask* join = response.mutable_join_round();
            join->set_round_id(round_->id);
            *join->mutable_update_spec() = round_->spec;
            v1::SecAggParameters* secagg = join->mutable_secagg();
            secagg->set_participant_id(id);
            secagg->set_num_participants(static_cast<uint32_t>(round_->participants.size()));
            for (uint32_t neighbor : round_->graph->Neighbors(id)) secagg->add_neighbors(neighbor);
            secagg->set_threshold(round_->threshold);
            secagg->set_ring_bits(static_cast<uint32_t>(policy_.ring_bits));
            secagg->set_session_id(round_->session_id);
            secagg->set_shamir_field(v1::SecAggParameters::SHAMIR_FIELD_MERSENNE61);
            secagg->set_prg(v1::SecAggParameters::PRG_AES128_CTR_HKDF_SHA256);
            *join->mutable_deadlines() = round_->deadlines;
          }
          return response;
        case v1::ROUND_STAGE_KEYS_ADVERTISED:
          if (!participant.advertised || participant.shared) return std::nullopt;
          {
            v1::ShareKeysTask* task = response.mutable_share_keys();
            task->set_round_id(round_->id);
            for (const secure_agg::AdvertisedKeys& keys : round_->secagg->KeysFor(id)) {
              v1::AdvertisedKeys* out = task->add_neighbor_keys();
              out->set_participant_id(keys.participant);
              out->set_cipher_public_key(keys.cipher_public_key);
              out->set_mask_public_key(keys.mask_public_key);
              out->set_signature(keys.signature);
              const Participant& peer = round_->participants[keys.participant - 1];
              out->set_certificate_der(peer.certificate_der);
              for (const pki::KeyChange& change : peer.key_changes) {
                v1::KeyChange* relayed = out->add_key_changes();
                relayed->set_old_public_key_der(change.old_public_key_der);
                relayed->set_new_public_key_der(change.new_public_key_der);
                relayed->set_signature(change.signature);
              }
            }
          }
          return response;
        case v1::ROUND_STAGE_KEYS_SHARED:
          if (!participant.shared || participant.uploaded) return std::nullopt;
          {
            v1::MaskedInputTask* task = response.mutable_masked_input();
            task->set_round_id(round_->id);
            for (const secure_agg::SealedShares& bundle : round_->secagg->SharesFor(id)) {
              v1::EncryptedShares* out = task->add_incoming_shares();
              out->set_peer_participant_id(bundle.sender);
              out->set_ciphertext(bundle.ciphertext);
            }
          }
          return response;
        case v1::ROUND_STAGE_MASKED_COLLECTED:
          if (!participant.uploaded || participant.unmasked) return std::nullopt;
          {
            v1::UnmaskTask* task = response.mutable_unmask();
            task->set_round_id(round_->id);
            const secure_agg::UnmaskRequest unmask = round_->secagg->UnmaskRequestFor(id);
            for (uint32_t alive : unmask.alive) task->add_alive_neighbors(alive);
            for (uint32_t dropped : unmask.dropped) task->add_dropped_neighbors(dropped);
          }
          return response;
        default:
          return std::nullopt;
      }
    }
  }
  const bool knows_end = Terminal(request.known_stage());
  // A client still inside a round this coordinator no longer runs (it restarted): tell it how
  // that round ended, from the store.
  if (request.known_round_id() != 0 && !knows_end && request.known_round_id() != finished_.id &&
      (round_ == nullptr || request.known_round_id() != round_->id)) {
    v1::PollTaskResponse response;
    v1::RoundFinished* finished = response.mutable_round_finished();
    finished->set_round_id(request.known_round_id());
    finished->set_outcome(v1::ROUND_STAGE_ABORTED);
    finished->set_abort_reason("the round is no longer open");
    if (absl::StatusOr<std::vector<RoundRecord>> rounds =
            store_->ListRounds(static_cast<int64_t>(request.known_round_id()) + 1, 1);
        rounds.ok() && !rounds->empty() &&
        rounds->front().round_id == static_cast<int64_t>(request.known_round_id())) {
      const RoundRecord& record = rounds->front();
      finished->set_outcome(StageFromName(record.stage) == v1::ROUND_STAGE_COMMITTED
                                ? v1::ROUND_STAGE_COMMITTED
                                : v1::ROUND_STAGE_ABORTED);
      finished->set_new_model_version(
          static_cast<uint64_t>(record.committed_model_version.value_or(0)));
      finished->set_abort_reason(record.abort_reason);
    }
    return response;
  }
  return std::nullopt;
}

v1::RoundStatus RoundEngine::RoundStatusFor(const std::string& client_id, uint64_t round_id) {
  absl::MutexLock lock(&mutex_);
  v1::RoundStatus status;
  if (round_ != nullptr && (round_id == 0 || round_id == round_->id)) {
    status.set_round_id(round_->id);
    status.set_stage(round_->stage);
    status.set_cohort_size(static_cast<uint32_t>(round_->participants.size()));
    status.set_survivors(static_cast<uint32_t>(Live(nullptr)));
    *status.mutable_started_at() = ToTimestamp(round_->started_at);
    *status.mutable_stage_deadline() = ToTimestamp(round_->stage_deadline);
    status.set_base_model_version(static_cast<uint64_t>(round_->base.version));
    if (auto found = round_->participant_ids.find(client_id);
        found != round_->participant_ids.end()) {
      const Participant& participant = round_->participants[found->second - 1];
      status.set_caller_selected(true);
      v1::RoundStage completed = v1::ROUND_STAGE_UNSPECIFIED;
      if (participant.advertised) completed = v1::ROUND_STAGE_KEYS_ADVERTISED;
      if (participant.shared) completed = v1::ROUND_STAGE_KEYS_SHARED;
      if (participant.uploaded) completed = v1::ROUND_STAGE_MASKED_COLLECTED;
      if (participant.unmasked) completed = v1::ROUND_STAGE_UNMASKED;
      status.set_caller_completed_stage(completed);
      if (round_->secagg.has_value() && round_->stage == v1::ROUND_STAGE_KEYS_SHARED) {
        status.set_caller_values_received(round_->secagg->ValuesReceived(found->second));
      }
    }
    return status;
  }
  // Round ids are the store's int64 rows, and the lookup asks for the one after: an id from
  // there up names no round (the request fuzzer sent 2^63 - 1, and wanted + 1 overflowed).
  if (round_id >= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return status;
  const int64_t wanted =
      round_id == 0 ? static_cast<int64_t>(last_round_id_) : static_cast<int64_t>(round_id);
  absl::StatusOr<std::vector<RoundRecord>> rounds = store_->ListRounds(wanted + 1, 1);
  if (rounds.ok() && !rounds->empty() && rounds->front().round_id == wanted) {
    const RoundRecord& record = rounds->front();
    status.set_round_id(static_cast<uint64_t>(record.round_id));
    status.set_stage(StageFromName(record.stage));
    status.set_cohort_size(static_cast<uint32_t>(record.cohort_size));
    status.set_survivors(static_cast<uint32_t>(record.survivors));
    *status.mutable_started_at() = ToTimestamp(record.started_at);
    status.set_base_model_version(static_cast<uint64_t>(record.base_model_version));
    status.set_committed_model_version(
        static_cast<uint64_t>(record.committed_model_version.value_or(0)));
    status.set_abort_reason(record.abort_reason);
  }
  return status;
}

void RoundEngine::ClientRevoked(const std::string& client_id) {
  absl::MutexLock lock(&mutex_);
  if (round_ == nullptr || round_->stage >= v1::ROUND_STAGE_UNMASKED) return;
  if (auto found = round_->participant_ids.find(client_id);
      found != round_->participant_ids.end()) {
    Participant& participant = round_->participants[found->second - 1];
    if (!participant.dropped)
      Drop(participant, absl::PermissionDeniedError("the client was revoked"));
  }
}

absl::StatusOr<ModelVersionRecord> RoundEngine::Model(uint64_t version) {
  absl::StatusOr<std::optional<ModelVersionRecord>> record =
      store_->GetModel(static_cast<int64_t>(version));
  if (!record.ok()) return record.status();
  if (!record->has_value()) {
    return absl::NotFoundError(version == 0
                                   ? std::string("no model is published yet")
                                   : absl::StrCat("model version ", version, " is not published"));
  }
  return **record;
}

RoundEngine::Snapshot RoundEngine::snapshot() {
  absl::MutexLock lock(&mutex_);
  Snapshot snapshot;
  snapshot.model_version = static_cast<uint64_t>(global_record_.version);
  snapshot.epsilon_spent = epsilon_spent_;
  snapshot.sampler_total_variation = accountant_.sampler_total_variation();
  snapshot.paused_reason = paused_reason_;
  if (round_ != nullptr) {
    snapshot.round_id = round_->id;
    snapshot.stage = round_->stage;
  } else if (finished_.id != 0) {
    snapshot.round_id = finished_.id;
    snapshot.stage = finished_.outcome;
  } else {
    snapshot.round_id = last_round_id_;
    snapshot.stage = last_round_id_ == 0 ? v1::ROUND_STAGE_WAITING : v1::ROUND_STAGE_ABORTED;
  }
  return snapshot;
}

}  // namespace fedmoe::coordinator
