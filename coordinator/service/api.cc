#include "coordinator/service/api.h"

#include <google/protobuf/util/time_util.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <optional>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "logging/log.h"
#include "privacy/rdp_accountant.h"
#include "secure_agg/packing.h"

namespace fedmoe::coordinator {
namespace {

using google::protobuf::util::TimeUtil;

constexpr size_t kMaxCsrBytes = size_t{16} * 1024;
constexpr int kDefaultPageSize = 100;
constexpr int kMaxPageSize = 1000;

void SetTimestamp(absl::Time time, google::protobuf::Timestamp* out) {
  *out = TimeUtil::MillisecondsToTimestamp(absl::ToUnixMillis(time));
}

absl::Duration FromProto(const google::protobuf::Duration& duration) {
  return absl::Seconds(duration.seconds()) + absl::Nanoseconds(duration.nanos());
}

void FillTrustBundle(const pki::TrustBundle& trust,
                     google::protobuf::RepeatedPtrField<std::string>* out) {
  for (std::string& der : trust.Der()) out->Add(std::move(der));
}

void FillCertificate(const pki::Certificate& certificate, const pki::Certificate& ca,
                     v1::CertificateBundle* out) {
  out->set_certificate_der(certificate.ToDer());
  out->set_ca_certificate_der(ca.ToDer());
  SetTimestamp(certificate.NotBefore(), out->mutable_not_before());
  SetTimestamp(certificate.NotAfter(), out->mutable_not_after());
  if (absl::StatusOr<pki::SpiffeId> id = certificate.Identity(); id.ok()) {
    out->set_spiffe_id(id->ToUri());
  }
}

int PageSize(const v1::PageRequest& page) {
  if (page.page_size() == 0) return kDefaultPageSize;
  return static_cast<int>(std::min<uint32_t>(page.page_size(), kMaxPageSize));
}

v1::EnrollmentTokenInfo::State ToProto(TokenState state) {
  switch (state) {
    case TokenState::kUnused:
      return v1::EnrollmentTokenInfo::STATE_UNUSED;
    case TokenState::kUsed:
      return v1::EnrollmentTokenInfo::STATE_USED;
    case TokenState::kExpired:
      return v1::EnrollmentTokenInfo::STATE_EXPIRED;
    case TokenState::kRevoked:
      return v1::EnrollmentTokenInfo::STATE_REVOKED;
  }
  return v1::EnrollmentTokenInfo::STATE_UNSPECIFIED;
}

void FillToken(const TokenRecord& record, absl::Time now, v1::EnrollmentTokenInfo* out) {
  out->set_token_id(record.token_id);
  out->set_client_id(record.client_id);
  out->set_state(ToProto(record.StateAt(now)));
  SetTimestamp(record.created_at, out->mutable_created_at());
  SetTimestamp(record.expires_at, out->mutable_expires_at());
  if (record.used_at.has_value()) SetTimestamp(*record.used_at, out->mutable_used_at());
}

}  // namespace

absl::Status LogRefusal(std::string_view method, absl::Status status) {
  LogEvent(LogLevel::kWarning, "call_refused").Field("method", method).Error(status);
  return status;
}

grpc::Status RefuseCall(std::string_view method, const absl::Status& status) {
  return ToGrpc(LogRefusal(method, status));
}

absl::Status CoordinatorApi::Throttled(std::string_view method, const std::string& key,
                                       absl::Status status) {
  const std::optional<int64_t> not_logged =
      refusal_log_.ShouldLog(absl::StrCat(std::string(method), "/", key), absl::Now());
  if (not_logged.has_value()) {
    LogEvent(LogLevel::kWarning, "call_refused")
        .Field("method", method)
        .Field("caller", key)
        .Error(status)
        .Field("not_logged_since_last", *not_logged);
  }
  return status;
}

grpc::Status CoordinatorApi::Enroll(const std::string& peer_address,
                                    const v1::EnrollRequest& request,
                                    v1::EnrollResponse& response) {
  const absl::Time now = absl::Now();
  if (!enrollment_failures_.HasToken(peer_address, now)) {
    // Refused before the token is looked at: guessing gets no answer at all.
    const absl::Duration wait = enrollment_failures_.RetryAfter(peer_address, now);
    return ToGrpc(Throttled(
        "Enroll", peer_address,
        absl::ResourceExhaustedError(absl::StrCat(
            "too many failed enrollments from ", peer_address, " (limits.enrollment_failures_",
            "per_minute is ", context_.config->enrollment_failures_per_minute, "); retry in ",
            absl::FormatDuration(absl::Ceil(wait, absl::Seconds(1)))))));
  }
  absl::StatusOr<EnrollmentAuthority::Enrolled> enrolled =
      request.csr_der().size() > kMaxCsrBytes
          ? absl::InvalidArgumentError("CSR larger than 16 KiB")
          : context_.authority->Enroll(request.token(), request.csr_der(),
                                       request.client_version());
  if (!enrolled.ok()) {
    enrollment_failures_.Take(peer_address, now);
    return ToGrpc(Throttled("Enroll", peer_address, enrolled.status()));
  }
  response.set_client_id(enrolled->client.client_id);
  response.set_federation(context_.config->federation);
  FillCertificate(enrolled->certificate, context_.authority->ca().certificate(),
                  response.mutable_certificate());
  response.set_federation_endpoint(context_.config->advertised_endpoint());
  FillTrustBundle(context_.authority->trust(), response.mutable_trusted_ca_certificates_der());
  return grpc::Status::OK;
}

grpc::Status CoordinatorApi::Renew(const grpc::AuthContext& peer,
                                   const v1::RenewCertificateRequest& request,
                                   v1::RenewCertificateResponse& response) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeClient(peer);
  if (!caller.ok()) return RefuseCall("Renew", caller.status());
  if (const absl::Time now = absl::Now(); !renewals_.TryTake(caller->id.name, now)) {
    return ToGrpc(
        Throttled("Renew", caller->id.name,
                  absl::ResourceExhaustedError(absl::StrCat(
                      "client '", caller->id.name, "' has renewed its certificate ",
                      context_.config->renewals_per_hour,
                      " times within the hour (limits.renewals_per_hour); "
                      "retry in ",
                      absl::FormatDuration(absl::Ceil(renewals_.RetryAfter(caller->id.name, now),
                                                      absl::Seconds(1)))))));
  }
  if (request.csr_der().size() > kMaxCsrBytes) {
    return RefuseCall("Renew", absl::InvalidArgumentError("CSR larger than 16 KiB"));
  }
  absl::StatusOr<pki::Certificate> current = pki::Certificate::FromDer(caller->certificate_der);
  if (!current.ok()) return RefuseCall("Renew", current.status());
  absl::StatusOr<pki::Certificate> certificate = context_.authority->Renew(
      caller->id.name, request.csr_der(), current->PublicKeyDer(), request.key_change_signature());
  if (!certificate.ok()) return RefuseCall("Renew", certificate.status());
  FillCertificate(*certificate, context_.authority->ca().certificate(),
                  response.mutable_certificate());
  FillTrustBundle(context_.authority->trust(), response.mutable_trusted_ca_certificates_der());
  return grpc::Status::OK;
}

grpc::Status CoordinatorApi::CreateEnrollmentToken(const grpc::AuthContext& peer,
                                                   const v1::CreateEnrollmentTokenRequest& request,
                                                   v1::CreateEnrollmentTokenResponse& response) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeAdmin(peer);
  if (!caller.ok()) return RefuseCall("CreateEnrollmentToken", caller.status());
  absl::StatusOr<EnrollmentAuthority::CreatedToken> created =
      context_.authority->CreateToken(request.client_id(), FromProto(request.ttl()));
  if (!created.ok()) return ToGrpc(created.status());
  response.set_token(created->token.ToString());
  response.set_token_id(created->token.token_id);
  response.set_client_id(created->record.client_id);
  SetTimestamp(created->record.expires_at, response.mutable_expires_at());
  response.set_ca_fingerprint_sha256(context_.authority->ca().certificate().Sha256Fingerprint());
  return grpc::Status::OK;
}

grpc::Status CoordinatorApi::ListEnrollmentTokens(const grpc::AuthContext& peer,
                                                  const v1::ListEnrollmentTokensRequest& request,
                                                  v1::ListEnrollmentTokensResponse& response) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeAdmin(peer);
  if (!caller.ok()) return RefuseCall("ListEnrollmentTokens", caller.status());
  absl::StatusOr<std::vector<TokenRecord>> tokens =
      context_.store->ListTokens(PageSize(request.page()));
  if (!tokens.ok()) return ToGrpc(tokens.status());
  const absl::Time now = absl::Now();
  for (const TokenRecord& token : *tokens) FillToken(token, now, response.add_tokens());
  return grpc::Status::OK;
}

grpc::Status CoordinatorApi::RevokeEnrollmentToken(const grpc::AuthContext& peer,
                                                   const v1::RevokeEnrollmentTokenRequest& request,
                                                   v1::RevokeEnrollmentTokenResponse& response) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeAdmin(peer);
  if (!caller.ok()) return RefuseCall("RevokeEnrollmentToken", caller.status());
  const absl::Time now = absl::Now();
  absl::StatusOr<TokenRecord> token = context_.store->RevokeToken(request.token_id(), now);
  if (!token.ok()) return ToGrpc(token.status());
  FillToken(*token, now, response.mutable_token());
  LogEvent(LogLevel::kInfo, "token_revoked")
      .Field("token_id", token->token_id)
      .Field("by", caller->id.ToUri());
  return grpc::Status::OK;
}

void CoordinatorApi::FillClient(const ClientRecord& record, v1::ClientInfo* out) const {
  out->set_client_id(record.client_id);
  out->set_spiffe_id(record.spiffe_id);
  out->set_state(record.revoked() ? v1::ClientInfo::STATE_REVOKED : v1::ClientInfo::STATE_ACTIVE);
  SetTimestamp(record.enrolled_at, out->mutable_enrolled_at());
  SetTimestamp(record.certificate_not_after, out->mutable_certificate_not_after());
  out->set_certificate_serial(record.certificate_serial);
  if (record.last_seen_at.has_value()) {
    SetTimestamp(*record.last_seen_at, out->mutable_last_seen_at());
  }
  out->set_online(!record.revoked() && context_.presence->IsOnline(record.client_id, absl::Now()));
  out->set_rounds_participated(static_cast<uint64_t>(record.rounds_participated));
  out->set_client_version(record.client_version);
  if (record.revoked_at.has_value()) SetTimestamp(*record.revoked_at, out->mutable_revoked_at());
  out->set_revocation_reason(record.revocation_reason);
}

grpc::Status CoordinatorApi::ListClients(const grpc::AuthContext& peer,
                                         const v1::ListClientsRequest& request,
                                         v1::ListClientsResponse& response) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeAdmin(peer);
  if (!caller.ok()) return RefuseCall("ListClients", caller.status());
  const int page_size = PageSize(request.page());
  // The page token is the last client id of the previous page.
  absl::StatusOr<std::vector<ClientRecord>> clients = context_.store->ListClients(
      request.include_revoked(), request.page().page_token(), page_size);
  if (!clients.ok()) return ToGrpc(clients.status());
  for (const ClientRecord& client : *clients) FillClient(client, response.add_clients());
  if (static_cast<int>(clients->size()) == page_size) {
    response.mutable_page()->set_next_page_token(clients->back().client_id);
  }
  return grpc::Status::OK;
}

grpc::Status CoordinatorApi::RevokeClient(const grpc::AuthContext& peer,
                                          const v1::RevokeClientRequest& request,
                                          v1::RevokeClientResponse& response) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeAdmin(peer);
  if (!caller.ok()) return RefuseCall("RevokeClient", caller.status());
  absl::StatusOr<ClientRecord> client = context_.store->RevokeClient(
      request.client_id(), request.reason().substr(0, 256), absl::Now());
  if (!client.ok()) return ToGrpc(client.status());
  context_.presence->Forget(client->client_id);
  context_.rounds->ClientRevoked(client->client_id);
  {
    absl::MutexLock lock(&revoked_mutex_);
    revoked_.insert(client->client_id);
  }
  // A poll the client has open ends now, refused, instead of at its deadline.
  context_.polls->WakeAll();
  LogEvent(LogLevel::kInfo, "client_revoked")
      .Field("client_id", client->client_id)
      .Field("by", caller->id.ToUri())
      .Field("reason", client->revocation_reason);
  FillClient(*client, response.mutable_client());
  return grpc::Status::OK;
}

namespace {

void FillAdmin(const AdminRecord& record, v1::AdminInfo* out) {
  out->set_name(record.name);
  out->set_revoked(record.revoked());
  SetTimestamp(record.first_seen_at, out->mutable_first_seen_at());
  if (record.last_seen_at.has_value()) {
    SetTimestamp(*record.last_seen_at, out->mutable_last_seen_at());
  }
  out->set_certificate_serial(record.last_serial);
  out->set_added_by(record.added_by);
  if (record.revoked_at.has_value()) SetTimestamp(*record.revoked_at, out->mutable_revoked_at());
  out->set_revoked_by(record.revoked_by);
  out->set_revocation_reason(record.reason);
}

}  // namespace

grpc::Status CoordinatorApi::AddAdmin(const grpc::AuthContext& peer,
                                      const v1::AddAdminRequest& request,
                                      v1::AddAdminResponse& response) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeAdmin(peer);
  if (!caller.ok()) return RefuseCall("AddAdmin", caller.status());
  if (request.csr_der().size() > kMaxCsrBytes) {
    return RefuseCall("AddAdmin", absl::InvalidArgumentError("csr_der is larger than 16 KiB"));
  }
  absl::StatusOr<pki::Certificate> certificate =
      context_.authority->AddAdmin(request.name(), request.csr_der(), caller->id.name,
                                   context_.config->admin_certificate_validity);
  if (!certificate.ok()) return RefuseCall("AddAdmin", certificate.status());
  FillCertificate(*certificate, context_.authority->ca().certificate(),
                  response.mutable_certificate());
  FillTrustBundle(context_.authority->trust(), response.mutable_trusted_ca_certificates_der());
  return grpc::Status::OK;
}

grpc::Status CoordinatorApi::ListAdmins(const grpc::AuthContext& peer,
                                        const v1::ListAdminsRequest& /*request*/,
                                        v1::ListAdminsResponse& response) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeAdmin(peer);
  if (!caller.ok()) return RefuseCall("ListAdmins", caller.status());
  absl::StatusOr<std::vector<AdminRecord>> admins = context_.store->ListAdmins();
  if (!admins.ok()) return ToGrpc(admins.status());
  for (const AdminRecord& admin : *admins) FillAdmin(admin, response.add_admins());
  return grpc::Status::OK;
}

grpc::Status CoordinatorApi::RevokeAdmin(const grpc::AuthContext& peer,
                                         const v1::RevokeAdminRequest& request,
                                         v1::RevokeAdminResponse& response) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeAdmin(peer);
  if (!caller.ok()) return RefuseCall("RevokeAdmin", caller.status());
  if (request.name() == caller->id.name) {
    return RefuseCall(
        "RevokeAdmin",
        absl::FailedPreconditionError(absl::StrCat(
            "admin '", caller->id.name,
            "' may not revoke itself; another admin must (add one with `admins add`)")));
  }
  absl::StatusOr<AdminRecord> admin = context_.store->RevokeAdmin(
      request.name(), request.reason().substr(0, 256), caller->id.name, absl::Now());
  if (!admin.ok()) return RefuseCall("RevokeAdmin", admin.status());
  LogEvent(LogLevel::kInfo, "admin_revoked")
      .Field("name", admin->name)
      .Field("by", caller->id.ToUri())
      .Field("reason", admin->reason);
  FillAdmin(*admin, response.mutable_admin());
  return grpc::Status::OK;
}

absl::StatusOr<v1::GetStatusResponse> CollectStatus(const ServiceContext& context) {
  absl::StatusOr<Store::ClientCounts> counts = context.store->CountClients();
  if (!counts.ok()) return counts.status();
  absl::StatusOr<Store::RoundCounts> round_counts = context.store->CountRounds();
  if (!round_counts.ok()) return round_counts.status();
  v1::GetStatusResponse response;
  response.set_federation(context.config->federation);
  response.set_version(FEDMOE_VERSION);
  SetTimestamp(context.started_at, response.mutable_started_at());
  response.set_clients_enrolled(static_cast<uint32_t>(counts->enrolled));
  response.set_clients_online(static_cast<uint32_t>(context.presence->CountOnline(absl::Now())));
  response.set_clients_revoked(static_cast<uint32_t>(counts->revoked));
  const RoundEngine::Snapshot rounds = context.rounds->snapshot();
  response.set_model_version(rounds.model_version);
  response.set_current_round_id(rounds.round_id);
  response.set_current_round_stage(rounds.stage);
  response.set_rounds_committed(static_cast<uint64_t>(round_counts->committed));
  response.set_rounds_aborted(static_cast<uint64_t>(round_counts->aborted));
  response.set_epsilon_spent(rounds.epsilon_spent);
  response.set_privacy_delta(context.config->rounds.delta);
  response.set_target_epsilon(context.config->rounds.target_epsilon);
  response.set_rounds_paused_reason(rounds.paused_reason);
  response.set_polls_parked(static_cast<uint32_t>(context.polls->parked()));
  return response;
}

grpc::Status CoordinatorApi::GetStatus(const grpc::AuthContext& peer,
                                       const v1::GetStatusRequest& /*request*/,
                                       v1::GetStatusResponse& response) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeAdmin(peer);
  if (!caller.ok()) return RefuseCall("GetStatus", caller.status());
  absl::StatusOr<v1::GetStatusResponse> status = CollectStatus(context_);
  if (!status.ok()) return ToGrpc(status.status());
  response = *std::move(status);
  return grpc::Status::OK;
}

grpc::Status CoordinatorApi::ListRounds(const grpc::AuthContext& peer,
                                        const v1::ListRoundsRequest& request,
                                        v1::ListRoundsResponse& response) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeAdmin(peer);
  if (!caller.ok()) return RefuseCall("ListRounds", caller.status());
  const int page_size = PageSize(request.page());
  int64_t before = 0;
  if (!request.page().page_token().empty() &&
      !absl::SimpleAtoi(request.page().page_token(), &before)) {
    return RefuseCall("ListRounds",
                      absl::InvalidArgumentError("page_token is not from ListRounds"));
  }
  absl::StatusOr<std::vector<RoundRecord>> rounds = context_.store->ListRounds(before, page_size);
  if (!rounds.ok()) return ToGrpc(rounds.status());
  const RoundEngine::Snapshot live = context_.rounds->snapshot();
  for (const RoundRecord& record : *rounds) {
    v1::RoundInfo* info = response.add_rounds();
    info->set_round_id(static_cast<uint64_t>(record.round_id));
    info->set_stage(StageFromName(record.stage));
    info->set_cohort_size(static_cast<uint32_t>(record.cohort_size));
    info->set_survivors(static_cast<uint32_t>(record.survivors));
    SetTimestamp(record.started_at, info->mutable_started_at());
    if (record.finished_at.has_value())
      SetTimestamp(*record.finished_at, info->mutable_finished_at());
    info->set_base_model_version(static_cast<uint64_t>(record.base_model_version));
    info->set_committed_model_version(
        static_cast<uint64_t>(record.committed_model_version.value_or(0)));
    info->set_epsilon_after(record.epsilon_after.value_or(live.epsilon_spent));
    info->set_abort_reason(record.abort_reason);
    for (const std::string& line : record.left_reasons) info->add_left_reasons(line);
  }
  if (static_cast<int>(rounds->size()) == page_size) {
    response.mutable_page()->set_next_page_token(absl::StrCat(rounds->back().round_id));
  }
  return grpc::Status::OK;
}

grpc::Status CoordinatorApi::GetPrivacyLedger(const grpc::AuthContext& peer,
                                              const v1::GetPrivacyLedgerRequest& /*request*/,
                                              v1::GetPrivacyLedgerResponse& response) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeAdmin(peer);
  if (!caller.ok()) return RefuseCall("GetPrivacyLedger", caller.status());
  absl::StatusOr<std::vector<LedgerEntry>> entries = context_.store->Ledger();
  if (!entries.ok()) return ToGrpc(entries.status());
  for (const LedgerEntry& entry : *entries) {
    v1::PrivacyLedgerEntry* out = response.add_entries();
    out->set_round_id(static_cast<uint64_t>(entry.round_id));
    out->set_sampling_rate(entry.sampling_rate);
    out->set_planned_noise_multiplier(entry.planned_noise_multiplier);
    out->set_effective_noise_multiplier(entry.effective_noise_multiplier);
    out->set_mechanism(entry.mechanism);
    out->set_mode(entry.mode);
    for (double order : entry.orders) out->add_orders(order);
    for (double rdp : entry.rdp) out->add_rdp(rdp);
    out->set_epsilon_after(entry.epsilon_after);
    out->set_delta(entry.delta);
    out->set_best_order(entry.best_order);
    SetTimestamp(entry.committed_at, out->mutable_committed_at());
    out->set_sampler_total_variation(entry.sampler_total_variation);
  }
  const RoundEngine::Snapshot snapshot = context_.rounds->snapshot();
  response.set_epsilon_spent(snapshot.epsilon_spent);
  response.set_sampler_total_variation(snapshot.sampler_total_variation);
  response.set_delta(context_.config->rounds.delta);
  response.set_target_epsilon(context_.config->rounds.target_epsilon);
  if (!entries->empty() && !std::isfinite(snapshot.epsilon_spent)) {
    const std::vector<double>& orders = entries->front().orders;
    std::vector<double> total(orders.size(), 0.0);
    for (const LedgerEntry& entry : *entries) {
      for (size_t i = 0; i < total.size() && i < entry.rdp.size(); ++i) total[i] += entry.rdp[i];
    }
    response.set_epsilon_note(privacy::ExplainInfiniteEpsilon(
        orders, total, context_.config->rounds.delta, snapshot.sampler_total_variation));
  }
  return grpc::Status::OK;
}

CoordinatorApi::CoordinatorApi(ServiceContext context)
    : context_(context),
      renewals_(static_cast<double>(context.config->renewals_per_hour) / 3600.0,
                static_cast<double>(context.config->renewals_per_hour)),
      enrollment_failures_(
          static_cast<double>(context.config->enrollment_failures_per_minute) / 60.0,
          static_cast<double>(context.config->enrollment_failures_per_minute)),
      trust_bundle_sha256_(absl::HexStringToBytes(context.authority->trust().Digest())) {}

void CoordinatorApi::PollTask(const grpc::AuthContext& peer, const v1::PollTaskRequest& request,
                              PollFinish finish, PollHub::Abandoned abandoned) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeClient(peer);
  if (!caller.ok()) {
    finish(LogRefusal("PollTask", caller.status()));
    return;
  }
  const absl::Time now = absl::Now();
  context_.store->TouchClient(caller->id.name, now).IgnoreError();
  const int polls_allowed = static_cast<int>(context_.config->polls_per_client);
  if (!context_.presence->TryStartPoll(caller->id.name, now, polls_allowed)) {
    // Polls of a daemon that restarted or reconnected may still be parked, abandoned.
    context_.polls->FinishAbandoned();
    if (!context_.presence->TryStartPoll(caller->id.name, now, polls_allowed)) {
      finish(Throttled("PollTask", caller->id.name,
                       absl::ResourceExhaustedError(absl::StrCat(
                           "client '", caller->id.name, "' already has ", polls_allowed,
                           " polls open (limits.polls_per_client); a daemon needs one"))));
      return;
    }
  }

  absl::Duration wait = context_.config->poll_max_wait;
  if (request.has_max_wait()) wait = std::min(wait, FromProto(request.max_wait()));
  wait = std::max(wait, absl::ZeroDuration());
  // Answers with the caller's task if it has one; otherwise, when the wait is over or the hub
  // has no room for it, Idle with when to poll again.
  auto answer = [this, finish = std::move(finish), request,
                 client_id = caller->id.name](PollHub::Reason reason) -> bool {
    if (RevokedWhilePolling(client_id)) {
      context_.presence->PollFinished(client_id, absl::Now());
      finish(absl::PermissionDeniedError(
          absl::StrCat("client '", client_id, "' is revoked; its open poll ends here")));
      return true;
    }
    std::optional<v1::PollTaskResponse> task = context_.rounds->NextTask(client_id, request);
    if (!task.has_value() && reason == PollHub::Reason::kWoken) return false;
    v1::PollTaskResponse response;
    if (task.has_value()) {
      response = std::move(*task);
    } else {
      v1::Idle* idle = response.mutable_idle();
      // After a full wait the client polls again at once; told there was no room, it waits.
      if (reason == PollHub::Reason::kNoRoom) {
        *idle->mutable_retry_after() =
            TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(DeferredPollInterval()));
        if (context_.metrics != nullptr) context_.metrics->PollDeferred();
      }
      idle->set_latest_model_version(context_.rounds->snapshot().model_version);
    }
    response.set_trust_bundle_sha256(trust_bundle_sha256_);
    context_.presence->PollFinished(client_id, absl::Now());
    finish(std::move(response));
    return true;
  };
  if (answer(PollHub::Reason::kWoken)) return;
  const PollPriority priority = context_.rounds->InOpenRound(caller->id.name)
                                    ? PollPriority::kInRound
                                    : PollPriority::kAwaitingRound;
  context_.polls->Park(now + wait, priority, std::move(answer), std::move(abandoned));
}

bool CoordinatorApi::RevokedWhilePolling(const std::string& client_id) {
  absl::MutexLock lock(&revoked_mutex_);
  return revoked_.contains(client_id);
}

absl::Duration CoordinatorApi::DeferredPollInterval() {
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&deferral_mutex_);
  // Counting the online clients walks all of them; once a second is often enough.
  if (now - deferral_computed_at_ >= absl::Seconds(1)) {
    deferral_interval_ = coordinator::DeferredPollInterval(
        context_.presence->CountOnline(now), context_.polls->capacity(),
        context_.config->deferred_polls_per_second, context_.config->poll_max_wait);
    deferral_computed_at_ = now;
  }
  return deferral_interval_;
}

grpc::Status CoordinatorApi::RunStage(
    std::string_view method, const grpc::AuthContext& peer,
    absl::FunctionRef<absl::StatusOr<v1::StageAck>(const Caller&)> handle, v1::StageAck& response) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeClient(peer);
  if (!caller.ok()) return RefuseCall(method, caller.status());
  absl::StatusOr<v1::StageAck> ack = handle(*caller);
  if (!ack.ok()) return RefuseCall(method, ack.status());
  response = *std::move(ack);
  return grpc::Status::OK;
}

grpc::Status CoordinatorApi::AdvertiseKeys(const grpc::AuthContext& peer,
                                           const v1::AdvertiseKeysRequest& request,
                                           v1::StageAck& response) {
  return RunStage(
      "AdvertiseKeys", peer,
      [&](const Caller& caller) {
        return context_.rounds->AdvertiseKeys(caller.id.name, caller.certificate_der, request);
      },
      response);
}

grpc::Status CoordinatorApi::ShareKeys(const grpc::AuthContext& peer,
                                       const v1::ShareKeysRequest& request,
                                       v1::StageAck& response) {
  return RunStage(
      "ShareKeys", peer,
      [&](const Caller& caller) { return context_.rounds->ShareKeys(caller.id.name, request); },
      response);
}

grpc::Status CoordinatorApi::Unmask(const grpc::AuthContext& peer, const v1::UnmaskRequest& request,
                                    v1::StageAck& response) {
  return RunStage(
      "Unmask", peer,
      [&](const Caller& caller) { return context_.rounds->Unmask(caller.id.name, request); },
      response);
}

grpc::Status CoordinatorApi::GetModelManifest(const grpc::AuthContext& peer,
                                              const v1::GetModelManifestRequest& request,
                                              v1::ModelManifest& response) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeClient(peer);
  if (!caller.ok()) return RefuseCall("GetModelManifest", caller.status());
  absl::StatusOr<ModelVersionRecord> record = context_.rounds->Model(request.version());
  if (!record.ok()) return ToGrpc(record.status());
  absl::StatusOr<v1::ModelManifest> manifest = ModelRepository::Manifest(*record);
  if (!manifest.ok()) return ToGrpc(manifest.status());
  response = *std::move(manifest);
  return grpc::Status::OK;
}

grpc::Status CoordinatorApi::DownloadModel(const grpc::AuthContext& peer,
                                           const v1::DownloadModelRequest& request,
                                           absl::FunctionRef<bool(const v1::ModelChunk&)> write,
                                           absl::FunctionRef<bool()> cancelled) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeClient(peer);
  if (!caller.ok()) return RefuseCall("DownloadModel", caller.status());
  absl::StatusOr<ModelVersionRecord> record = context_.rounds->Model(request.version());
  if (!record.ok()) return ToGrpc(record.status());
  absl::StatusOr<v1::ModelManifest> manifest = ModelRepository::Manifest(*record);
  if (!manifest.ok()) return ToGrpc(manifest.status());
  const v1::ModelFile* file = nullptr;
  for (const v1::ModelFile& candidate : manifest->files()) {
    if (candidate.name() == request.file_name()) file = &candidate;
  }
  if (file == nullptr) {
    return RefuseCall("DownloadModel", absl::NotFoundError(absl::StrCat(
                                           "model version ", record->version,
                                           " has no file named '", request.file_name(), "'")));
  }
  if (request.offset() > file->size_bytes()) {
    return RefuseCall("DownloadModel", absl::OutOfRangeError(absl::StrCat(
                                           "offset ", request.offset(), " is past the end of ",
                                           file->name(), " (", file->size_bytes(), " bytes)")));
  }
  std::ifstream in(context_.rounds->ModelDirectory(*record) / file->name(), std::ios::binary);
  if (!in) return ToGrpc(absl::InternalError(absl::StrCat("cannot open ", file->name())));
  in.seekg(static_cast<std::streamoff>(request.offset()));
  constexpr uint64_t kMaxChunk = uint64_t{1} << 20;
  const uint64_t chunk_bytes = request.max_chunk_bytes() == 0
                                   ? kMaxChunk
                                   : std::min<uint64_t>(request.max_chunk_bytes(), kMaxChunk);
  uint64_t offset = request.offset();
  v1::ModelChunk chunk;
  chunk.set_file_size(file->size_bytes());
  chunk.set_file_sha256(file->sha256());
  std::string buffer;
  while (offset < file->size_bytes()) {
    if (cancelled()) return grpc::Status::CANCELLED;
    const uint64_t n = std::min(chunk_bytes, file->size_bytes() - offset);
    buffer.resize(n);
    if (!in.read(buffer.data(), static_cast<std::streamsize>(n))) {
      return ToGrpc(
          absl::DataLossError(absl::StrCat(file->name(), " is shorter than its manifest says")));
    }
    chunk.set_offset(offset);
    chunk.set_data(buffer);
    if (!write(chunk)) return grpc::Status::CANCELLED;
    if (context_.metrics != nullptr) context_.metrics->BytesSent(chunk.ByteSizeLong());
    offset += n;
  }
  return grpc::Status::OK;
}

grpc::Status CoordinatorApi::UploadMaskedInput(const grpc::AuthContext& peer,
                                               absl::FunctionRef<bool(v1::MaskedInputChunk&)> read,
                                               v1::StageAck& response) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeClient(peer);
  if (!caller.ok()) return RefuseCall("UploadMaskedInput", caller.status());
  v1::MaskedInputChunk chunk;
  if (!read(chunk)) {
    return RefuseCall("UploadMaskedInput",
                      absl::InvalidArgumentError("the upload carried no chunk"));
  }
  absl::StatusOr<RoundEngine::MaskedUpload> upload =
      context_.rounds->BeginMaskedInput(caller->id.name, chunk.round_id(), chunk.total_values());
  if (!upload.ok()) return RefuseCall("UploadMaskedInput", upload.status());
  const uint64_t max_values = (uint64_t{8} << 20) / static_cast<uint64_t>(upload->bits());
  std::vector<RoundEngine::StagedChunk> staged;
  std::vector<uint64_t> values;
  uint64_t received = 0;
  do {
    if (context_.metrics != nullptr) context_.metrics->BytesReceived(chunk.ByteSizeLong());
    if (upload->already_in_sum()) continue;  // Drained; the acknowledgement says so.
    if (chunk.round_id() != upload->round_id() || chunk.total_values() != upload->total_values()) {
      return RefuseCall(
          "UploadMaskedInput",
          absl::InvalidArgumentError("a masked-input stream changed its round or length"));
    }
    if (chunk.first_value() != received) {
      return RefuseCall("UploadMaskedInput",
                        absl::OutOfRangeError(absl::StrCat(
                            "a masked-input chunk starts at value ", chunk.first_value(), ", not ",
                            received, "; an upload is sent whole, from value 0")));
    }
    if (chunk.value_count() == 0 || chunk.value_count() > max_values ||
        chunk.value_count() > upload->total_values() - received) {
      return RefuseCall(
          "UploadMaskedInput",
          absl::InvalidArgumentError(absl::StrCat(
              "a chunk must carry 1 to ", std::min(max_values, upload->total_values() - received),
              " values, not ", chunk.value_count())));
    }
    // Unpacking checks the packed length and that every value fits in b bits.
    values.resize(chunk.value_count());
    if (absl::Status status =
            secure_agg::UnpackValues(chunk.packed_values(), upload->bits(), values);
        !status.ok()) {
      return RefuseCall("UploadMaskedInput", status);
    }
    received += chunk.value_count();
    staged.push_back({chunk.value_count(), std::move(*chunk.mutable_packed_values())});
  } while (read(chunk));
  if (!upload->already_in_sum() && received != upload->total_values()) {
    // Nothing of it is in the sum; ABORTED tells the client to send it again.
    return RefuseCall("UploadMaskedInput",
                      absl::AbortedError(absl::StrCat("the upload ended after ", received, " of ",
                                                      upload->total_values(),
                                                      " values; send it again from value 0")));
  }
  absl::StatusOr<v1::StageAck> ack =
      context_.rounds->FinishMaskedInput(caller->id.name, *upload, staged);
  if (!ack.ok()) return RefuseCall("UploadMaskedInput", ack.status());
  response = *std::move(ack);
  return grpc::Status::OK;
}

grpc::Status CoordinatorApi::GetRoundStatus(const grpc::AuthContext& peer,
                                            const v1::GetRoundStatusRequest& request,
                                            v1::RoundStatus& response) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeClient(peer);
  if (!caller.ok()) return RefuseCall("GetRoundStatus", caller.status());
  response = context_.rounds->RoundStatusFor(caller->id.name, request.round_id());
  return grpc::Status::OK;
}

}  // namespace fedmoe::coordinator
