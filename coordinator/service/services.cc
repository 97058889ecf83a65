#include "coordinator/service/services.h"

#include "coordinator/service/wire.h"

namespace fedmoe::coordinator {
namespace {

// Runs a raw unary method: parse, handle, serialize, finish; a parse failure is answered
// with its own message.
template <typename Request, typename Reply, typename Handler>
grpc::ServerUnaryReactor* RunRaw(grpc::CallbackServerContext* context, std::string_view method,
                                 const grpc::ByteBuffer* request_bytes,
                                 grpc::ByteBuffer* reply_bytes, Handler handle) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  Request request;
  if (absl::Status parsed = ParseRequest(*request_bytes, request); !parsed.ok()) {
    reactor->Finish(RefuseCall(method, parsed));
    return reactor;
  }
  Reply reply;
  grpc::Status status = handle(*context->auth_context(), request, reply);
  if (status.ok()) status = ToGrpc(SerializeReply(reply, *reply_bytes));
  reactor->Finish(status);
  return reactor;
}

}  // namespace

std::string PeerAddress(const std::string& grpc_peer) {
  // "ipv4:10.0.0.7:51234" or "ipv6:[2001:db8::7]:51234": the address without the port.
  std::string_view address = grpc_peer;
  if (const size_t scheme = address.find(':'); scheme != std::string_view::npos) {
    address.remove_prefix(scheme + 1);
  }
  if (const size_t port = address.rfind(':'); port != std::string_view::npos) {
    address = address.substr(0, port);
  }
  if (address.size() >= 2 && address.front() == '[' && address.back() == ']') {
    address = address.substr(1, address.size() - 2);
  }
  return std::string(address);
}

grpc::ServerUnaryReactor* EnrollmentService::Enroll(grpc::CallbackServerContext* context,
                                                    const grpc::ByteBuffer* request,
                                                    grpc::ByteBuffer* response) {
  return RunRaw<v1::EnrollRequest, v1::EnrollResponse>(
      context, "Enroll", request, response,
      [this, peer = PeerAddress(context->peer())](
          const grpc::AuthContext&, const v1::EnrollRequest& in, v1::EnrollResponse& out) {
        return api_->Enroll(peer, in, out);
      });
}

grpc::ServerUnaryReactor* CertificatesService::Renew(grpc::CallbackServerContext* context,
                                                     const grpc::ByteBuffer* request,
                                                     grpc::ByteBuffer* response) {
  return RunRaw<v1::RenewCertificateRequest, v1::RenewCertificateResponse>(
      context, "Renew", request, response,
      [this](const grpc::AuthContext& peer, const v1::RenewCertificateRequest& in,
             v1::RenewCertificateResponse& out) { return api_->Renew(peer, in, out); });
}

grpc::Status AdminService::CreateEnrollmentToken(grpc::ServerContext* context,
                                                 const v1::CreateEnrollmentTokenRequest* request,
                                                 v1::CreateEnrollmentTokenResponse* response) {
  return api_->CreateEnrollmentToken(*context->auth_context(), *request, *response);
}

grpc::Status AdminService::ListEnrollmentTokens(grpc::ServerContext* context,
                                                const v1::ListEnrollmentTokensRequest* request,
                                                v1::ListEnrollmentTokensResponse* response) {
  return api_->ListEnrollmentTokens(*context->auth_context(), *request, *response);
}

grpc::Status AdminService::RevokeEnrollmentToken(grpc::ServerContext* context,
                                                 const v1::RevokeEnrollmentTokenRequest* request,
                                                 v1::RevokeEnrollmentTokenResponse* response) {
  return api_->RevokeEnrollmentToken(*context->auth_context(), *request, *response);
}

grpc::Status AdminService::ListClients(grpc::ServerContext* context,
                                       const v1::ListClientsRequest* request,
                                       v1::ListClientsResponse* response) {
  return api_->ListClients(*context->auth_context(), *request, *response);
}

grpc::Status AdminService::RevokeClient(grpc::ServerContext* context,
                                        const v1::RevokeClientRequest* request,
                                        v1::RevokeClientResponse* response) {
  return api_->RevokeClient(*context->auth_context(), *request, *response);
}

grpc::Status AdminService::GetStatus(grpc::ServerContext* context,
                                     const v1::GetStatusRequest* request,
                                     v1::GetStatusResponse* response) {
  return api_->GetStatus(*context->auth_context(), *request, *response);
}

grpc::Status AdminService::ListRounds(grpc::ServerContext* context,
                                      const v1::ListRoundsRequest* request,
                                      v1::ListRoundsResponse* response) {
  return api_->ListRounds(*context->auth_context(), *request, *response);
}

grpc::Status AdminService::GetPrivacyLedger(grpc::ServerContext* context,
                                            const v1::GetPrivacyLedgerRequest* request,
                                            v1::GetPrivacyLedgerResponse* response) {
  return api_->GetPrivacyLedger(*context->auth_context(), *request, *response);
}

grpc::Status AdminService::AddAdmin(grpc::ServerContext* context,
                                    const v1::AddAdminRequest* request,
                                    v1::AddAdminResponse* response) {
  return api_->AddAdmin(*context->auth_context(), *request, *response);
}

grpc::Status AdminService::ListAdmins(grpc::ServerContext* context,
                                      const v1::ListAdminsRequest* request,
                                      v1::ListAdminsResponse* response) {
  return api_->ListAdmins(*context->auth_context(), *request, *response);
}

grpc::Status AdminService::RevokeAdmin(grpc::ServerContext* context,
                                       const v1::RevokeAdminRequest* request,
                                       v1::RevokeAdminResponse* response) {
  return api_->RevokeAdmin(*context->auth_context(), *request, *response);
}

grpc::ServerUnaryReactor* FederationService::PollTask(grpc::CallbackServerContext* context,
                                                      const grpc::ByteBuffer* request_bytes,
                                                      grpc::ByteBuffer* response_bytes) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (metrics_ != nullptr) metrics_->BytesReceived(request_bytes->Length());
  v1::PollTaskRequest request;
  if (absl::Status parsed = ParseRequest(*request_bytes, request); !parsed.ok()) {
    reactor->Finish(RefuseCall("PollTask", parsed));
    return reactor;
  }
  api_->PollTask(
      *context->auth_context(), request,
      [this, reactor, response_bytes](absl::StatusOr<v1::PollTaskResponse> response) {
        if (!response.ok()) {
          reactor->Finish(ToGrpc(response.status()));
          return;
        }
        const absl::Status serialized = SerializeReply(*response, *response_bytes);
        if (metrics_ != nullptr && serialized.ok()) metrics_->BytesSent(response_bytes->Length());
        reactor->Finish(ToGrpc(serialized));
      },
      [context] { return context->IsCancelled(); });
  return reactor;
}

grpc::ServerUnaryReactor* FederationService::AdvertiseKeys(grpc::CallbackServerContext* context,
                                                           const grpc::ByteBuffer* request,
                                                           grpc::ByteBuffer* response) {
  if (metrics_ != nullptr) metrics_->BytesReceived(request->Length());
  return RunRaw<v1::AdvertiseKeysRequest, v1::StageAck>(
      context, "AdvertiseKeys", request, response,
      [this](const grpc::AuthContext& peer, const v1::AdvertiseKeysRequest& in, v1::StageAck& out) {
        return api_->AdvertiseKeys(peer, in, out);
      });
}

grpc::ServerUnaryReactor* FederationService::ShareKeys(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request,
                                                       grpc::ByteBuffer* response) {
  if (metrics_ != nullptr) metrics_->BytesReceived(request->Length());
  return RunRaw<v1::ShareKeysRequest, v1::StageAck>(
      context, "ShareKeys", request, response,
      [this](const grpc::AuthContext& peer, const v1::ShareKeysRequest& in, v1::StageAck& out) {
        return api_->ShareKeys(peer, in, out);
      });
}

grpc::ServerUnaryReactor* FederationService::Unmask(grpc::CallbackServerContext* context,
                                                    const grpc::ByteBuffer* request,
                                                    grpc::ByteBuffer* response) {
  if (metrics_ != nullptr) metrics_->BytesReceived(request->Length());
  return RunRaw<v1::UnmaskRequest, v1::StageAck>(
      context, "Unmask", request, response,
      [this](const grpc::AuthContext& peer, const v1::UnmaskRequest& in, v1::StageAck& out) {
        return api_->Unmask(peer, in, out);
      });
}

grpc::Status FederationService::GetModelManifest(grpc::ServerContext* context,
                                                 const v1::GetModelManifestRequest* request,
                                                 v1::ModelManifest* response) {
  return api_->GetModelManifest(*context->auth_context(), *request, *response);
}

grpc::Status FederationService::DownloadModel(grpc::ServerContext* context,
                                              const v1::DownloadModelRequest* request,
                                              grpc::ServerWriter<v1::ModelChunk>* writer) {
  return api_->DownloadModel(
      *context->auth_context(), *request,
      [writer](const v1::ModelChunk& chunk) { return writer->Write(chunk); },
      [context] { return context->IsCancelled(); });
}

grpc::Status FederationService::UploadMaskedInput(grpc::ServerContext* context,
                                                  grpc::ServerReader<v1::MaskedInputChunk>* reader,
                                                  v1::StageAck* response) {
  return api_->UploadMaskedInput(
      *context->auth_context(),
      [reader](v1::MaskedInputChunk& chunk) { return reader->Read(&chunk); }, *response);
}

grpc::Status FederationService::GetRoundStatus(grpc::ServerContext* context,
                                               const v1::GetRoundStatusRequest* request,
                                               v1::RoundStatus* response) {
  return api_->GetRoundStatus(*context->auth_context(), *request, *response);
}

}  // namespace fedmoe::coordinator
