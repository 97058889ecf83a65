// The coordinator's gRPC services: shells over CoordinatorApi (api.h), which holds what each
// method does. A shell parses the request, hands it with the call's TLS peer to the API, and
// finishes the call with the reply.
#ifndef FEDMOE_COORDINATOR_SERVICE_SERVICES_H_
#define FEDMOE_COORDINATOR_SERVICE_SERVICES_H_

#include "coordinator/service/api.h"
#include "fedmoe/v1/admin.grpc.pb.h"
#include "fedmoe/v1/enrollment.grpc.pb.h"
#include "fedmoe/v1/federation.grpc.pb.h"

namespace fedmoe::coordinator {

// On the enrollment port (server-only TLS). Raw, so that malformed bytes get a specific error
// (see wire.h).
// The IP address of a gRPC peer string ("ipv4:10.0.0.7:51234" gives "10.0.0.7").
std::string PeerAddress(const std::string& grpc_peer);

class EnrollmentService final
    : public v1::Enrollment::WithRawCallbackMethod_Enroll<v1::Enrollment::CallbackService> {
 public:
  explicit EnrollmentService(CoordinatorApi* api) : api_(api) {}
  grpc::ServerUnaryReactor* Enroll(grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;

 private:
  CoordinatorApi* api_;
};

// On the mTLS port. Raw, like EnrollmentService.
class CertificatesService final
    : public v1::Certificates::WithRawCallbackMethod_Renew<v1::Certificates::CallbackService> {
 public:
  explicit CertificatesService(CoordinatorApi* api) : api_(api) {}
  grpc::ServerUnaryReactor* Renew(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;

 private:
  CoordinatorApi* api_;
};

// On the mTLS port; every method requires an admin certificate.
class AdminService final : public v1::Admin::Service {
 public:
  explicit AdminService(CoordinatorApi* api) : api_(api) {}
  grpc::Status CreateEnrollmentToken(grpc::ServerContext* context,
                                     const v1::CreateEnrollmentTokenRequest* request,
                                     v1::CreateEnrollmentTokenResponse* response) override;
  grpc::Status ListEnrollmentTokens(grpc::ServerContext* context,
                                    const v1::ListEnrollmentTokensRequest* request,
                                    v1::ListEnrollmentTokensResponse* response) override;
  grpc::Status RevokeEnrollmentToken(grpc::ServerContext* context,
                                     const v1::RevokeEnrollmentTokenRequest* request,
                                     v1::RevokeEnrollmentTokenResponse* response) override;
  grpc::Status ListClients(grpc::ServerContext* context, const v1::ListClientsRequest* request,
                           v1::ListClientsResponse* response) override;
  grpc::Status RevokeClient(grpc::ServerContext* context, const v1::RevokeClientRequest* request,
                            v1::RevokeClientResponse* response) override;
  grpc::Status GetStatus(grpc::ServerContext* context, const v1::GetStatusRequest* request,
                         v1::GetStatusResponse* response) override;
  grpc::Status ListRounds(grpc::ServerContext* context, const v1::ListRoundsRequest* request,
                          v1::ListRoundsResponse* response) override;
  grpc::Status GetPrivacyLedger(grpc::ServerContext* context,
                                const v1::GetPrivacyLedgerRequest* request,
                                v1::GetPrivacyLedgerResponse* response) override;
  grpc::Status AddAdmin(grpc::ServerContext* context, const v1::AddAdminRequest* request,
                        v1::AddAdminResponse* response) override;
  grpc::Status ListAdmins(grpc::ServerContext* context, const v1::ListAdminsRequest* request,
                          v1::ListAdminsResponse* response) override;
  grpc::Status RevokeAdmin(grpc::ServerContext* context, const v1::RevokeAdminRequest* request,
                           v1::RevokeAdminResponse* response) override;

 private:
  CoordinatorApi* api_;
};

// On the mTLS port. PollTask uses the callback API so that a parked long poll holds no thread.
// The unary stage methods are raw, like EnrollmentService, so a malformed message gets a
// specific error; the streams and the small queries use the synchronous API.
using FederationBase = v1::Federation::WithRawCallbackMethod_PollTask<
    v1::Federation::WithRawCallbackMethod_AdvertiseKeys<
        v1::Federation::WithRawCallbackMethod_ShareKeys<
            v1::Federation::WithRawCallbackMethod_Unmask<v1::Federation::Service>>>>;

class FederationService final : public FederationBase {
 public:
  FederationService(CoordinatorApi* api, CoordinatorMetrics* metrics)
      : api_(api), metrics_(metrics) {}
  grpc::ServerUnaryReactor* PollTask(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* AdvertiseKeys(grpc::CallbackServerContext* context,
                                          const grpc::ByteBuffer* request,
                                          grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ShareKeys(grpc::CallbackServerContext* context,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Unmask(grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  grpc::Status GetModelManifest(grpc::ServerContext* context,
                                const v1::GetModelManifestRequest* request,
                                v1::ModelManifest* response) override;
  grpc::Status DownloadModel(grpc::ServerContext* context, const v1::DownloadModelRequest* request,
                             grpc::ServerWriter<v1::ModelChunk>* writer) override;
  grpc::Status UploadMaskedInput(grpc::ServerContext* context,
                                 grpc::ServerReader<v1::MaskedInputChunk>* reader,
                                 v1::StageAck* response) override;
  grpc::Status GetRoundStatus(grpc::ServerContext* context,
                              const v1::GetRoundStatusRequest* request,
                              v1::RoundStatus* response) override;

 private:
  CoordinatorApi* api_;
  // Null when metrics are off; counts the bytes of the raw methods, which only the shell sees.
  CoordinatorMetrics* metrics_;
};

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_SERVICE_SERVICES_H_
