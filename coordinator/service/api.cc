#include "coordinator/service/api.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "coordinator/service/wire.h"
#include "logging/log.h"
#include "model/frozen_base.h"
#include "privacy/rdp_accountant.h"

namespace fedmoe::coordinator {
namespace {

constexpr size_t kMaxCsrBytes = size_t{16} * 1024;
constexpr int kDefaultPageSize = 100;
constexpr int kMaxPageSize = 1000;

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
  if (absl::StatusOr<const BaseIdentity*> base = context.rounds->Base(); base.ok()) {
    response.set_adapter_base_sha256((*base)->content_sha256);
    response.set_adapter_base_format(std::string(model::WeightFormatName((*base)->format)));
  }
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

}  // namespace fedmoe::coordinator
