#include "coordinator/services.h"

#include <google/protobuf/util/time_util.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "coordinator/wire.h"
#include "logging/log.h"

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

// Logs a refused call in one line: which method, and why.
grpc::Status Refuse(std::string_view method, const absl::Status& status) {
  LogEvent(LogLevel::kWarning, "call_refused").Field("method", method).Error(status);
  return ToGrpc(status);
}

// Runs a raw unary method: parse, handle, serialize, finish; a parse failure is answered
// with its own message.
template <typename Request, typename Reply, typename Handler>
grpc::ServerUnaryReactor* RunRaw(grpc::CallbackServerContext* context, std::string_view method,
                                 const grpc::ByteBuffer* request_bytes,
                                 grpc::ByteBuffer* reply_bytes, Handler handle) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  Request request;
  if (absl::Status parsed = ParseRequest(*request_bytes, request); !parsed.ok()) {
    reactor->Finish(Refuse(method, parsed));
    return reactor;
  }
  Reply reply;
  grpc::Status status = handle(request, reply);
  if (status.ok()) status = ToGrpc(SerializeReply(reply, *reply_bytes));
  reactor->Finish(status);
  return reactor;
}

}  // namespace

grpc::ServerUnaryReactor* EnrollmentService::Enroll(grpc::CallbackServerContext* context,
                                                    const grpc::ByteBuffer* request,
                                                    grpc::ByteBuffer* response) {
  return RunRaw<v1::EnrollRequest, v1::EnrollResponse>(
      context, "Enroll", request, response,
      [this](const v1::EnrollRequest& in, v1::EnrollResponse& out) { return Handle(in, out); });
}

grpc::ServerUnaryReactor* CertificatesService::Renew(grpc::CallbackServerContext* context,
                                                     const grpc::ByteBuffer* request,
                                                     grpc::ByteBuffer* response) {
  return RunRaw<v1::RenewCertificateRequest, v1::RenewCertificateResponse>(
      context, "Renew", request, response,
      [this, context](const v1::RenewCertificateRequest& in, v1::RenewCertificateResponse& out) {
        return Handle(*context->auth_context(), in, out);
      });
}

grpc::Status EnrollmentService::Handle(const v1::EnrollRequest& request,
                                       v1::EnrollResponse& response) {
  if (request.csr_der().size() > kMaxCsrBytes) {
    return Refuse("Enroll", absl::InvalidArgumentError("CSR larger than 16 KiB"));
  }
  absl::StatusOr<EnrollmentAuthority::Enrolled> enrolled =
      context_.authority->Enroll(request.token(), request.csr_der(), request.client_version());
  if (!enrolled.ok()) return ToGrpc(enrolled.status());
  response.set_client_id(enrolled->client.client_id);
  response.set_federation(context_.config->federation);
  FillCertificate(enrolled->certificate, context_.authority->ca().certificate(),
                  response.mutable_certificate());
  response.set_federation_endpoint(context_.config->advertised_endpoint());
  return grpc::Status::OK;
}

grpc::Status CertificatesService::Handle(const grpc::AuthContext& auth,
                                         const v1::RenewCertificateRequest& request,
                                         v1::RenewCertificateResponse& response) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeClient(auth);
  if (!caller.ok()) return Refuse("Renew", caller.status());
  if (request.csr_der().size() > kMaxCsrBytes) {
    return Refuse("Renew", absl::InvalidArgumentError("CSR larger than 16 KiB"));
  }
  absl::StatusOr<pki::Certificate> certificate =
      context_.authority->Renew(caller->id.name, request.csr_der());
  if (!certificate.ok()) return Refuse("Renew", certificate.status());
  FillCertificate(*certificate, context_.authority->ca().certificate(),
                  response.mutable_certificate());
  return grpc::Status::OK;
}

grpc::Status AdminService::CreateEnrollmentToken(grpc::ServerContext* context,
                                                 const v1::CreateEnrollmentTokenRequest* request,
                                                 v1::CreateEnrollmentTokenResponse* response) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeAdmin(*context->auth_context());
  if (!caller.ok()) return Refuse("CreateEnrollmentToken", caller.status());
  absl::StatusOr<EnrollmentAuthority::CreatedToken> created =
      context_.authority->CreateToken(request->client_id(), FromProto(request->ttl()));
  if (!created.ok()) return ToGrpc(created.status());
  response->set_token(created->token.ToString());
  response->set_token_id(created->token.token_id);
  response->set_client_id(created->record.client_id);
  SetTimestamp(created->record.expires_at, response->mutable_expires_at());
  response->set_ca_fingerprint_sha256(context_.authority->ca().certificate().Sha256Fingerprint());
  return grpc::Status::OK;
}

grpc::Status AdminService::ListEnrollmentTokens(grpc::ServerContext* context,
                                                const v1::ListEnrollmentTokensRequest* request,
                                                v1::ListEnrollmentTokensResponse* response) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeAdmin(*context->auth_context());
  if (!caller.ok()) return Refuse("ListEnrollmentTokens", caller.status());
  absl::StatusOr<std::vector<TokenRecord>> tokens =
      context_.store->ListTokens(PageSize(request->page()));
  if (!tokens.ok()) return ToGrpc(tokens.status());
  const absl::Time now = absl::Now();
  for (const TokenRecord& token : *tokens) FillToken(token, now, response->add_tokens());
  return grpc::Status::OK;
}

grpc::Status AdminService::RevokeEnrollmentToken(grpc::ServerContext* context,
                                                 const v1::RevokeEnrollmentTokenRequest* request,
                                                 v1::RevokeEnrollmentTokenResponse* response) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeAdmin(*context->auth_context());
  if (!caller.ok()) return Refuse("RevokeEnrollmentToken", caller.status());
  const absl::Time now = absl::Now();
  absl::StatusOr<TokenRecord> token = context_.store->RevokeToken(request->token_id(), now);
  if (!token.ok()) return ToGrpc(token.status());
  FillToken(*token, now, response->mutable_token());
  LogEvent(LogLevel::kInfo, "token_revoked")
      .Field("token_id", token->token_id)
      .Field("by", caller->id.ToUri());
  return grpc::Status::OK;
}

void AdminService::FillClient(const ClientRecord& record, v1::ClientInfo* out) const {
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

grpc::Status AdminService::ListClients(grpc::ServerContext* context,
                                       const v1::ListClientsRequest* request,
                                       v1::ListClientsResponse* response) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeAdmin(*context->auth_context());
  if (!caller.ok()) return Refuse("ListClients", caller.status());
  const int page_size = PageSize(request->page());
  // The page token is the last client id of the previous page.
  absl::StatusOr<std::vector<ClientRecord>> clients = context_.store->ListClients(
      request->include_revoked(), request->page().page_token(), page_size);
  if (!clients.ok()) return ToGrpc(clients.status());
  for (const ClientRecord& client : *clients) FillClient(client, response->add_clients());
  if (static_cast<int>(clients->size()) == page_size) {
    response->mutable_page()->set_next_page_token(clients->back().client_id);
  }
  return grpc::Status::OK;
}

grpc::Status AdminService::RevokeClient(grpc::ServerContext* context,
                                        const v1::RevokeClientRequest* request,
                                        v1::RevokeClientResponse* response) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeAdmin(*context->auth_context());
  if (!caller.ok()) return Refuse("RevokeClient", caller.status());
  absl::StatusOr<ClientRecord> client = context_.store->RevokeClient(
      request->client_id(), request->reason().substr(0, 256), absl::Now());
  if (!client.ok()) return ToGrpc(client.status());
  context_.presence->Forget(client->client_id);
  LogEvent(LogLevel::kInfo, "client_revoked")
      .Field("client_id", client->client_id)
      .Field("by", caller->id.ToUri())
      .Field("reason", client->revocation_reason);
  FillClient(*client, response->mutable_client());
  return grpc::Status::OK;
}

grpc::Status AdminService::GetStatus(grpc::ServerContext* context,
                                     const v1::GetStatusRequest* /*request*/,
                                     v1::GetStatusResponse* response) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeAdmin(*context->auth_context());
  if (!caller.ok()) return Refuse("GetStatus", caller.status());
  absl::StatusOr<Store::ClientCounts> counts = context_.store->CountClients();
  if (!counts.ok()) return ToGrpc(counts.status());
  response->set_federation(context_.config->federation);
  response->set_version(FEDMOE_VERSION);
  SetTimestamp(context_.started_at, response->mutable_started_at());
  response->set_clients_enrolled(static_cast<uint32_t>(counts->enrolled));
  response->set_clients_online(static_cast<uint32_t>(context_.presence->CountOnline(absl::Now())));
  response->set_clients_revoked(static_cast<uint32_t>(counts->revoked));
  response->set_current_round_stage(v1::ROUND_STAGE_WAITING);
  return grpc::Status::OK;
}

grpc::ServerUnaryReactor* FederationService::PollTask(grpc::CallbackServerContext* context,
                                                      const grpc::ByteBuffer* request_bytes,
                                                      grpc::ByteBuffer* response_bytes) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  v1::PollTaskRequest request;
  if (absl::Status parsed = ParseRequest(*request_bytes, request); !parsed.ok()) {
    reactor->Finish(Refuse("PollTask", parsed));
    return reactor;
  }
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeClient(*context->auth_context());
  if (!caller.ok()) {
    reactor->Finish(Refuse("PollTask", caller.status()));
    return reactor;
  }
  const absl::Time now = absl::Now();
  context_.store->TouchClient(caller->id.name, now).IgnoreError();
  context_.presence->PollStarted(caller->id.name, now);

  absl::Duration wait = context_.config->poll_max_wait;
  if (request.has_max_wait()) wait = std::min(wait, FromProto(request.max_wait()));
  wait = std::max(wait, absl::ZeroDuration());
  // No round engine hands out tasks yet, so every poll ends Idle when its wait runs out.
  context_.polls->Park(now + wait, [this, reactor, response_bytes, client_id = caller->id.name] {
    v1::PollTaskResponse response;
    response.mutable_idle()->mutable_retry_after()->set_seconds(1);
    context_.presence->PollFinished(client_id, absl::Now());
    reactor->Finish(ToGrpc(SerializeReply(response, *response_bytes)));
  });
  return reactor;
}

}  // namespace fedmoe::coordinator
