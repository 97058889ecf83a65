#include "client/daemon.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "client/tls_probe.h"
#include "logging/log.h"
#include "pki/certificate_authority.h"
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

absl::Status ClientDaemon::RecoverInterruptedRenewal() {
  const ClientStateDir& dir = config_.state_dir;
  const std::filesystem::path next_key = dir.root / "client.key.next";
  const std::filesystem::path next_certificate = dir.root / "client.pem.next";
  std::error_code error;
  if (std::filesystem::exists(next_certificate)) {
    if (std::filesystem::exists(next_key)) std::filesystem::rename(next_key, dir.key(), error);
    if (!error) std::filesystem::rename(next_certificate, dir.certificate(), error);
  } else if (std::filesystem::exists(next_key)) {
    std::filesystem::remove(next_key, error);
  }
  if (error) {
    return absl::InternalError(absl::StrCat("cannot finish the certificate renewal in ",
                                            dir.root.string(), ": ", error.message()));
  }
  return absl::OkStatus();
}

absl::Status ClientDaemon::Connect() {
  const ClientStateDir& dir = config_.state_dir;
  if (absl::Status status = RecoverInterruptedRenewal(); !status.ok()) return status;
  absl::StatusOr<pki::Certificate> ca = pki::Certificate::ReadFile(dir.ca_certificate());
  if (!ca.ok()) return ca.status();
  absl::StatusOr<pki::Certificate> certificate = pki::Certificate::ReadFile(dir.certificate());
  if (!certificate.ok()) return certificate.status();
  absl::StatusOr<pki::PrivateKey> key = pki::PrivateKey::ReadFile(dir.key());
  if (!key.ok()) return key.status();
  absl::StatusOr<std::string> key_pem = key->ToPem();
  if (!key_pem.ok()) return key_pem.status();
  if (certificate->PublicKeyDer() != *key->PublicKeyDer()) {
    return absl::FailedPreconditionError(absl::StrCat(
        dir.certificate().string(), " does not belong to the key in ", dir.key().string()));
  }
  grpc::SslCredentialsOptions tls;
  tls.pem_root_certs = ca->ToPem();
  tls.pem_private_key = *key_pem;
  tls.pem_cert_chain = certificate->ToPem();
  grpc::ChannelArguments arguments;
  // Pings keep NAT and proxy entries alive while a long poll is open.
  arguments.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30'000);
  arguments.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10'000);
  arguments.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
  // gRPC's own reconnect backoff (up to 120 s by default) would otherwise outlast ours after a
  // coordinator restart; bound it by the configured backoff. (GRPC_ARG_MIN_RECONNECT_BACKOFF_MS
  // is left alone: gRPC also uses it as the connect-and-handshake timeout.)
  const int backoff_initial_ms =
      static_cast<int>(absl::ToInt64Milliseconds(config_.backoff_initial));
  const int backoff_max_ms = static_cast<int>(absl::ToInt64Milliseconds(config_.backoff_max));
  arguments.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, backoff_initial_ms);
  arguments.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, backoff_max_ms);
  channel_ = grpc::CreateCustomChannel(config_.coordinator, grpc::SslCredentials(tls), arguments);
  federation_ = v1::Federation::NewStub(channel_);
  certificates_ = v1::Certificates::NewStub(channel_);
  certificate_ = *certificate;
  key_ = std::move(*key);
  return absl::OkStatus();
}

absl::Status ClientDaemon::RenewIfDue() {
  const absl::Time not_before = certificate_->NotBefore();
  const absl::Time not_after = certificate_->NotAfter();
  const absl::Time renew_at = not_before + (not_after - not_before) * 2 / 3;
  if (absl::Now() < renew_at) return absl::OkStatus();

  absl::StatusOr<pki::PrivateKey> key = pki::PrivateKey::GenerateP256();
  if (!key.ok()) return key.status();
  absl::StatusOr<std::string> csr = pki::MakeCsr(*key, config_.client_id);
  if (!csr.ok()) return csr.status();
  v1::RenewCertificateRequest request;
  request.set_csr_der(*csr);
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
  // Both new files are written in full beside the old ones, then renamed into place, key
  // first. A crash at any point leaves either the old pair, or a complete new pair that
  // RecoverInterruptedRenewal() moves into place at the next start.
  const ClientStateDir& dir = config_.state_dir;
  if (absl::Status status = key->WriteFile(dir.root / "client.key.next"); !status.ok()) {
    return status;
  }
  if (absl::Status status = renewed->WriteFile(dir.root / "client.pem.next"); !status.ok()) {
    return status;
  }
  if (absl::Status status = RecoverInterruptedRenewal(); !status.ok()) return status;
  LogEvent(LogLevel::kInfo, "certificate_renewed")
      .Field("serial", renewed->SerialHex())
      .Field("not_after", absl::FormatTime(renewed->NotAfter()));
  return Connect();
}

grpc::Status ClientDaemon::PollOnce() {
  v1::PollTaskRequest request;
  request.mutable_max_wait()->set_seconds(absl::ToInt64Seconds(config_.poll_max_wait));
  request.mutable_capabilities()->set_software_version(FEDMOE_VERSION);
  request.mutable_capabilities()->set_device("cpu");
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
    ++polls_answered_;
    LogEvent(LogLevel::kDebug, "poll_answered")
        .Field("task", response.task_case() == v1::PollTaskResponse::kIdle ? "idle" : "task");
  }
  return status;
}

bool ClientDaemon::Backoff(int attempt) {
  const double ceiling = std::min(
      absl::ToDoubleSeconds(config_.backoff_max),
      absl::ToDoubleSeconds(config_.backoff_initial) * std::pow(2.0, std::min(attempt, 30)));
  // Full jitter: a uniform wait in [0, ceiling], so a fleet reconnecting after a coordinator
  // restart spreads out instead of arriving in waves.
  const absl::Duration wait =
      absl::Seconds(std::uniform_real_distribution<double>(0.0, ceiling)(jitter_));
  absl::MutexLock lock(&mutex_);
  auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return stopping_; };
  mutex_.AwaitWithTimeout(absl::Condition(&stopping), wait);
  return !stopping_;
}

void ClientDaemon::WriteStatus(const std::string& state, const std::string& detail) {
  std::string json = "{\"state\":\"";
  AppendJsonEscaped(state, json);
  json += "\",\"detail\":\"";
  AppendJsonEscaped(detail, json);
  absl::StrAppend(&json, "\",\"updated_at\":\"", absl::FormatTime(absl::Now()),
                  "\",\"polls_answered\":", polls_answered_, "}\n");
  using std::filesystem::perms;
  storage::WriteFileAtomically(config_.state_dir.status(), json,
                               perms::owner_read | perms::owner_write | perms::group_read)
      .IgnoreError();
}

std::string ClientDaemon::DiagnoseUnavailable() {
  absl::Status probe =
      ProbeMutualTls(config_.coordinator, &*certificate_, &*key_, absl::Seconds(5));
  if (probe.code() != absl::StatusCode::kPermissionDenied) {
    return probe.ok() ? "the coordinator accepts connections again" : std::string(probe.message());
  }
  // The coordinator refused the certificate; checking it against the CA this client enrolled
  // with usually says why (expired, or not issued by that CA).
  std::string why = std::string(probe.message());
  if (absl::StatusOr<pki::Certificate> ca =
          pki::Certificate::ReadFile(config_.state_dir.ca_certificate());
      ca.ok()) {
    absl::StatusOr<pki::SpiffeId> id =
        pki::VerifyPeer(*certificate_, *ca, config_.federation, pki::Purpose::kClient);
    if (!id.ok()) {
      absl::StrAppend(&why, "; this client's certificate is not valid under the federation CA ",
                      "it enrolled with: ", id.status().message());
    }
  }
  return why;
}

absl::Status ClientDaemon::Run() {
  if (absl::Status status = Connect(); !status.ok()) return status;
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
