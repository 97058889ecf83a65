#include "client/daemon.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/coordinator_channel.h"
#include "client/model_sync.h"
#include "client/tls_probe.h"
#include "logging/log.h"
#include "model/compute.h"
#include "model/personal.h"
#include "pki/certificate_authority.h"
#include "pki/key_change.h"
#include "pki/key_pair_files.h"
#include "pki/private_key.h"
#include "storage/atomic_file.h"

namespace fedmoe::client {
namespace {

// Errors a retry cannot fix: the coordinator has said no to this identity.
bool IsRefusal(grpc::StatusCode code) {
  return code == grpc::StatusCode::PERMISSION_DENIED || code == grpc::StatusCode::UNAUTHENTICATED;
}

}  // namespace

ClientDaemon::ClientDaemon(ClientConfig config)
    : config_(std::move(config)), jitter_(std::random_device{}()) {}

void ClientDaemon::Stop() {
  absl::MutexLock lock(&mutex_);
  stopping_ = true;
  if (in_flight_ != nullptr) in_flight_->TryCancel();
}

absl::Status ClientDaemon::Connect() {
  // A renewal that a crash interrupted is finished (or discarded) before the key is read.
  if (absl::Status status =
          pki::CompleteKeyPairSwap(config_.state_dir.key(), config_.state_dir.certificate());
      !status.ok()) {
    return status;
  }
  absl::StatusOr<CoordinatorChannel> dialled = DialCoordinator(config_);
  if (!dialled.ok()) return dialled.status();
  channel_ = dialled->channel;
  federation_ = v1::Federation::NewStub(channel_);
  certificates_ = v1::Certificates::NewStub(channel_);
  certificate_ = std::move(dialled->certificate);
  key_ = std::move(dialled->key);
  trust_ = std::move(dialled->trust);
  return absl::OkStatus();
}

absl::Status ClientDaemon::RenewIfDue() {
  const absl::Time not_before = certificate_->NotBefore();
  const absl::Time not_after = certificate_->NotAfter();
  const absl::Time renew_at = not_before + (not_after - not_before) * 2 / 3;
  const bool expiring = absl::Now() >= renew_at;
  // Not in the middle of a round: its peers verified the certificate this client advertised.
  const bool new_trust = !trust_renewal_wanted_.empty() && participant_ == nullptr;
  if (!expiring && !new_trust) return absl::OkStatus();

  absl::StatusOr<pki::PrivateKey> key = pki::PrivateKey::GenerateP256();
  if (!key.ok()) return key.status();
  absl::StatusOr<std::string> csr = pki::MakeCsr(*key, config_.client_id);
  if (!csr.ok()) return csr.status();
  absl::StatusOr<std::string> new_public_key = key->PublicKeyDer();
  if (!new_public_key.ok()) return new_public_key.status();
  // The old key vouches for the new one, so that peers who pinned it accept the change.
  absl::StatusOr<pki::KeyChange> change = pki::SignKeyChange(
      *key_, pki::SpiffeId{config_.federation, pki::IdentityKind::kClient, config_.client_id},
      *new_public_key);
  if (!change.ok()) return change.status();
  v1::RenewCertificateRequest request;
  request.set_csr_der(*csr);
  request.set_key_change_signature(change->signature);
  v1::RenewCertificateResponse response;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  if (grpc::Status status = certificates_->Renew(&context, request, &response); !status.ok()) {
    return absl::UnavailableError(absl::StrCat("renewal failed: ", status.error_message()));
  }
  absl::StatusOr<pki::Certificate> renewed =
      pki::Certificate::FromDer(response.certificate().certificate_der());
  if (!renewed.ok()) return renewed.status();
  if (renewed->PublicKeyDer() != *key->PublicKeyDer()) {
    return absl::PermissionDeniedError("the renewed certificate is not for the new key");
  }
  absl::StatusOr<std::optional<pki::TrustBundle>> trust =
      ReceivedTrustBundle(response.trusted_ca_certificates_der(), *renewed, config_.federation);
  if (!trust.ok()) return trust.status();
  if (trust->has_value()) {
    // The bundle first: a coordinator that sees the new certificate in use counts this client
    // as holding the bundle that came with it. Trusting an extra CA for a moment is harmless.
    if (absl::Status status = (*trust)->WriteFile(config_.state_dir.ca_certificate());
        !status.ok()) {
      return status;
    }
  } else if (absl::StatusOr<pki::SpiffeId> id = trust_->Verify(*renewed, pki::Purpose::kClient);
             !id.ok()) {
    return absl::PermissionDeniedError(
        absl::StrCat("the renewed certificate is not valid: ", id.status().message()));
  }
  if (absl::Status status = pki::ReplaceKeyPair(*key, *renewed, config_.state_dir.key(),
                                                config_.state_dir.certificate());
      !status.ok()) {
    return status;
  }
  if (new_trust) trust_renewed_for_ = std::exchange(trust_renewal_wanted_, "");
  LogEvent(LogLevel::kInfo, "certificate_renewed")
      .Field("reason", new_trust ? "trust_bundle" : "expiry")
      .Field("serial", renewed->SerialHex())
      .Field("not_after", absl::FormatTime(renewed->NotAfter()))
      .Field("trust_bundle", trust->has_value() ? (*trust)->Digest() : trust_->Digest());
  return Connect();
}

grpc::Status ClientDaemon::PollOnce() {
  v1::PollTaskRequest request;
  request.mutable_max_wait()->set_seconds(absl::ToInt64Seconds(config_.poll_max_wait));
  request.mutable_capabilities()->set_software_version(FEDMOE_VERSION);
  request.mutable_capabilities()->set_device(
      std::string(model::DeviceName(training_device_.value_or(config_.compute.device))));
  request.set_known_round_id(known_round_);
  request.set_known_stage(known_stage_);
  if (known_stage_ == v1::ROUND_STAGE_ABORTED) request.set_left_reason(left_reason_);
  request.set_local_model_version(progress_.model_version);
  v1::PollTaskResponse response;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       absl::ToChronoSeconds(config_.poll_max_wait + absl::Seconds(15)));
  {
    absl::MutexLock lock(&mutex_);
    if (stopping_) return grpc::Status::CANCELLED;
    in_flight_ = &context;
  }
  grpc::Status status = federation_->PollTask(&context, request, &response);
  {
    absl::MutexLock lock(&mutex_);
    in_flight_ = nullptr;
  }
  if (status.ok()) {
    ++progress_.polls_answered;
    LogEvent(LogLevel::kDebug, "poll_answered")
        .Field("task", response.task_case() == v1::PollTaskResponse::kIdle ? "idle" : "task");
    NoteAnnouncedTrust(response.trust_bundle_sha256());
    HandleTask(response);
  }
  return status;
}

void ClientDaemon::NoteAnnouncedTrust(const std::string& announced) {
  if (announced.empty()) return;
  const std::string digest = absl::BytesToHexString(announced);
  if (digest == trust_->Digest() || digest == trust_renewed_for_ ||
      digest == trust_renewal_wanted_) {
    return;
  }
  LogEvent(LogLevel::kInfo, "trust_bundle_announced")
      .Field("digest", digest)
      .Field("held", trust_->Digest());
  trust_renewal_wanted_ = digest;
}

bool ClientDaemon::Backoff(int attempt) {
  const double ceiling = std::min(
      absl::ToDoubleSeconds(config_.backoff_max),
      absl::ToDoubleSeconds(config_.backoff_initial) * std::pow(2.0, std::min(attempt, 30)));
  // Full jitter: a uniform wait in [0, ceiling], so a fleet reconnecting after a coordinator
  // restart spreads out instead of arriving in waves.
  return Pause(absl::Seconds(std::uniform_real_distribution<double>(0.0, ceiling)(jitter_)));
}

bool ClientDaemon::Pause(absl::Duration wait) {
  absl::MutexLock lock(&mutex_);
  auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return stopping_; };
  mutex_.AwaitWithTimeout(absl::Condition(&stopping), wait);
  return !stopping_;
}

void ClientDaemon::WriteStatus(const std::string& state, const std::string& detail) {
  progress_.connected = state != "disconnected" && state != "refused" && state != "stopped";
  metrics_->Publish(progress_);
  std::string json = "{\"state\":\"";
  AppendJsonEscaped(state, json);
  json += "\",\"detail\":\"";
  AppendJsonEscaped(detail, json);
  absl::StrAppend(&json, "\",\"updated_at\":\"", absl::FormatTime(absl::Now()),
                  "\",\"polls_answered\":", progress_.polls_answered,
                  ",\"trained_from_version\":", progress_.trained_from_version,
                  ",\"latest_committed_version\":", progress_.latest_committed_version,
                  ",\"last_round\":", progress_.last_round, ",\"last_outcome\":\"");
  AppendJsonEscaped(progress_.last_outcome, json);
  absl::StrAppend(&json, "\",\"rounds_joined\":", progress_.rounds_joined,
                  ",\"rounds_committed\":", progress_.rounds_committed,
                  ",\"local_training\":{\"steps\":", progress_.train_steps,
                  ",\"tokens\":", progress_.train_tokens,
                  ",\"loss\":", absl::StrFormat("%.6g", progress_.train_loss),
                  ",\"seconds\":", absl::StrFormat("%.3f", progress_.train_seconds),
                  "},\"bytes_sent_last_round\":", progress_.bytes_sent_last_round,
                  ",\"record_privacy\":", record_privacy_status_, "}\n");
  using std::filesystem::perms;
  storage::WriteFileAtomically(config_.state_dir.status(), json,
                               perms::owner_read | perms::owner_write | perms::group_read)
      .IgnoreError();
}

void ClientDaemon::Withdraw(uint64_t round_id, const absl::Status& why) {
  LogEvent(LogLevel::kWarning, "round_left").Field("round_id", round_id).Error(why);
  // Reported on the next poll: the coordinator stops offering this round's tasks.
  known_round_ = round_id;
  known_stage_ = v1::ROUND_STAGE_ABORTED;
  participant_.reset();
  encoded_update_.clear();
  progress_.last_round = round_id;
  progress_.last_outcome = absl::StrCat("left: ", why.message());
  // One line of at most 256 bytes, as the poll's contract says.
  left_reason_ = std::string(why.message().substr(0, 256));
  std::replace(left_reason_.begin(), left_reason_.end(), '\n', ' ');
  WriteStatus("connected", "");
}

void ClientDaemon::RunStage(uint64_t round_id, v1::RoundStage completes,
                            const std::function<absl::Status()>& step) {
  if (participant_ == nullptr || participant_->round_id() != round_id) {
    return Withdraw(round_id,
                    absl::FailedPreconditionError("this client holds no state for the round"));
  }
  if (absl::Status status = step(); !status.ok()) return Withdraw(round_id, status);
  known_stage_ = completes;
}

void ClientDaemon::HandleTask(const v1::PollTaskResponse& response) {
  switch (response.task_case()) {
    case v1::PollTaskResponse::kJoinRound: {
      const v1::JoinRoundTask& task = response.join_round();
      participant_.reset();
      WriteStatus("training", absl::StrCat("round ", task.round_id()));
      if (absl::Status status = JoinRound(task); !status.ok()) {
        Withdraw(task.round_id(), status);
        return;
      }
      WriteStatus("in_round", absl::StrCat("round ", task.round_id(), ": keys advertised"));
      return;
    }
    case v1::PollTaskResponse::kShareKeys:
      return RunStage(response.share_keys().round_id(), v1::ROUND_STAGE_KEYS_SHARED,
                      [&] { return participant_->ShareKeys(*federation_, response.share_keys()); });
    case v1::PollTaskResponse::kMaskedInput:
      return RunStage(response.masked_input().round_id(), v1::ROUND_STAGE_MASKED_COLLECTED, [&] {
        return participant_->UploadMaskedInput(*federation_, response.masked_input(),
                                               std::move(encoded_update_));
      });
    case v1::PollTaskResponse::kUnmask:
      return RunStage(response.unmask().round_id(), v1::ROUND_STAGE_UNMASKED,
                      [&] { return participant_->Unmask(*federation_, response.unmask()); });
    case v1::PollTaskResponse::kRoundFinished: {
      const v1::RoundFinished& finished = response.round_finished();
      if (participant_ != nullptr) progress_.bytes_sent_last_round = participant_->bytes_sent();
      participant_.reset();
      encoded_update_.clear();
      known_round_ = finished.round_id();
      known_stage_ = finished.outcome();
      progress_.last_round = finished.round_id();
      if (finished.outcome() == v1::ROUND_STAGE_COMMITTED) {
        ++progress_.rounds_committed;
        progress_.latest_committed_version =
            std::max(progress_.latest_committed_version, finished.new_model_version());
        progress_.last_outcome =
            absl::StrCat("committed, model version ", finished.new_model_version());
      } else {
        progress_.last_outcome = absl::StrCat("aborted: ", finished.abort_reason());
      }
      LogEvent(LogLevel::kInfo, "round_finished")
          .Field("round_id", finished.round_id())
          .Field("outcome", progress_.last_outcome)
          .Field("bytes_sent", progress_.bytes_sent_last_round);
      if (finished.outcome() == v1::ROUND_STAGE_COMMITTED) {
        RefreshPersonalModel(finished.new_model_version());
        ServeVersion(finished.new_model_version());
      }
      WriteStatus("connected", "");
      return;
    }
    case v1::PollTaskResponse::kIdle: {
      // A version published while this site sat out a round still reaches its personal model.
      if (response.idle().latest_model_version() > personal_version_) {
        RefreshPersonalModel(response.idle().latest_model_version());
      }
      ServeVersion(response.idle().latest_model_version());
      // The coordinator held as many polls as it may and said when to come back.
      const absl::Duration delay = NextPollDelay(response.idle(), jitter_);
      if (delay <= absl::ZeroDuration()) return;
      // An open connection costs the coordinator memory whether or not it carries a call, so
      // it is given back while waiting; the next poll dials again.
      certificates_.reset();
      federation_.reset();
      channel_.reset();
      Pause(delay);
      return;
    }
    default:
      return;
  }
}

std::string ClientDaemon::DiagnoseUnavailable() {
  // A server certificate this client cannot verify: the federation's CA moved on while the
  // client was away (a CA rotation it missed), or something else answers at the address.
  if (absl::StatusOr<std::vector<pki::Certificate>> chain =
          FetchServerChain(config_.coordinator, absl::Seconds(5));
      chain.ok() && !chain->empty()) {
    if (absl::StatusOr<pki::SpiffeId> server =
            trust_->Verify(chain->front(), pki::Purpose::kServer);
        !server.ok()) {
      return absl::StrCat(
          "the coordinator's certificate is not valid under this client's trusted CAs (",
          server.status().message(),
          "); if the federation rotated its CA while this client was away, enroll again with "
          "a new token");
    }
  }
  absl::Status probe =
      ProbeMutualTls(config_.coordinator, &*certificate_, &*key_, absl::Seconds(5));
  if (probe.code() != absl::StatusCode::kPermissionDenied) {
    return probe.ok() ? "the coordinator accepts connections again" : std::string(probe.message());
  }
  // The coordinator refused the certificate; checking it against the CA this client enrolled
  // with usually says why (expired, or not issued by that CA).
  std::string why = std::string(probe.message());
  {
    absl::StatusOr<pki::SpiffeId> id = trust_->Verify(*certificate_, pki::Purpose::kClient);
    if (id.ok() && absl::StrContains(why, "unknown ca")) {
      absl::StrAppend(&why,
                      "; the coordinator no longer trusts the CA that issued this client's "
                      "certificate (a CA rotation retired it before this client renewed): "
                      "enroll again with a new token");
    }
    if (!id.ok()) {
      absl::StrAppend(&why, "; this client's certificate is not valid under the federation CA ",
                      "it enrolled with: ", id.status().message());
    }
  }
  return why;
}

absl::Status ClientDaemon::Run() {
  if (absl::Status status = Connect(); !status.ok()) return status;
  // A ledger that cannot be read stops the daemon here rather than at its first round: no
  // round may train on privacy it cannot account for.
  if (absl::StatusOr<RecordPrivacyLedger> ledger =
          RecordPrivacyLedger::Load(config_.state_dir.record_ledger());
      !ledger.ok()) {
    return ledger.status();
  }
  record_privacy_status_ = RecordPrivacyStatus();
  if (!config_.metrics_listen.empty()) {
    absl::StatusOr<std::unique_ptr<metrics::MetricsServer>> exposer =
        metrics::MetricsServer::Start(config_.metrics_listen);
    if (!exposer.ok()) return exposer.status();
    metrics_server_ = *std::move(exposer);
    metrics_server_->Add(metrics_);
    LogEvent(LogLevel::kInfo, "metrics_served")
        .Field("address", config_.metrics_listen)
        .Field("port", metrics_server_->port());
  }
  if (config_.threads > 0) model::SetCpuThreads(static_cast<int>(config_.threads));
  progress_.model_version = NewestLocalVersion(config_.state_dir.models());
  progress_.latest_committed_version = progress_.model_version;
  if (const PersonalModelStore store(config_.state_dir.personal()); store.Exists()) {
    absl::StatusOr<PersonalModelInfo> personal = store.Info();
    if (!personal.ok()) return personal.status();
    if (personal->mode == config_.personalization.mode) {
      personal_version_ = personal->global_version;
    }
  }
  if (config_.serve.enabled()) {
    serve_host_ = std::make_unique<ServeHost>(config_.serve, config_.federation);
    ServeVersion(progress_.model_version);
  }
  LogEvent(LogLevel::kInfo, "daemon_started")
      .Field("client_id", config_.client_id)
      .Field("coordinator", config_.coordinator)
      .Field("certificate_not_after", absl::FormatTime(certificate_->NotAfter()));
  int failures = 0;
  std::string last_state;
  while (true) {
    {
      absl::MutexLock lock(&mutex_);
      if (stopping_) break;
    }
    if (channel_ == nullptr) {
      if (absl::Status status = Connect(); !status.ok()) return status;
    }
    if (absl::Status status = RenewIfDue(); !status.ok()) {
      LogEvent(LogLevel::kWarning, "renewal_failed").Error(status);
    }
    // A long poll says nothing until it ends; the channel says at once that mTLS is up.
    if (last_state != "connected" &&
        channel_->WaitForConnected(absl::ToChronoTime(absl::Now() + absl::Seconds(2)))) {
      LogEvent(LogLevel::kInfo, "connected").Field("coordinator", config_.coordinator);
      WriteStatus("connected", "");
      last_state = "connected";
    }
    const grpc::Status status = PollOnce();
    if (status.ok()) {
      failures = 0;
      continue;
    }
    {
      absl::MutexLock lock(&mutex_);
      if (stopping_) break;
    }
    LogEvent(LogLevel::kDebug, "poll_failed")
        .Field("code", static_cast<int>(status.error_code()))
        .Field("error", status.error_message())
        .Field("attempt", failures);
    if (IsRefusal(status.error_code())) {
      WriteStatus("refused", status.error_message());
      LogEvent(LogLevel::kError, "refused_by_coordinator")
          .Field("code", static_cast<int>(status.error_code()))
          .Field("error", status.error_message());
      return absl::PermissionDeniedError(
          absl::StrCat("the coordinator refused this client: ", status.error_message()));
    }
    if (last_state != "disconnected") {
      // gRPC says only "unavailable" when the coordinator rejects the TLS identity; a direct
      // handshake hears the alert that says why (expired, unknown CA, ...).
      std::string detail = status.error_message();
      if (status.error_code() == grpc::StatusCode::UNAVAILABLE) detail = DiagnoseUnavailable();
      LogEvent(LogLevel::kWarning, "disconnected")
          .Field("code", static_cast<int>(status.error_code()))
          .Field("error", detail);
      WriteStatus("disconnected", detail);
      last_state = "disconnected";
    }
    if (!Backoff(failures++)) break;
    // A fresh channel dials at once. The old one may sit in gRPC's transient-failure state,
    // failing every call with a stale error until its own reconnect timer fires, which in
    // gRPC 1.51 can be many seconds past the coordinator's return.
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
      if (absl::Status reconnect = Connect(); !reconnect.ok()) return reconnect;
    }
  }
  WriteStatus("stopped", "");
  LogEvent(LogLevel::kInfo, "daemon_stopped").Field("client_id", config_.client_id);
  return absl::OkStatus();
}

}  // namespace fedmoe::client
