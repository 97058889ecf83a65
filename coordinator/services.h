// The coordinator's gRPC services. Each is a thin translation between wire messages and the
// plain objects beneath (EnrollmentAuthority, Store, ClientPresence), which carry the logic.
#ifndef FEDMOE_COORDINATOR_SERVICES_H_
#define FEDMOE_COORDINATOR_SERVICES_H_

#include <string>

#include "coordinator/caller.h"
#include "coordinator/client_presence.h"
#include "coordinator/config.h"
#include "coordinator/enrollment_authority.h"
#include "coordinator/poll_hub.h"
#include "coordinator/store.h"
#include "fedmoe/v1/admin.grpc.pb.h"
#include "fedmoe/v1/enrollment.grpc.pb.h"
#include "fedmoe/v1/federation.grpc.pb.h"

namespace fedmoe::coordinator {

// Everything the services share; owned by the server, outliving every call.
struct ServiceContext {
  const CoordinatorConfig* config;
  Store* store;
  EnrollmentAuthority* authority;
  CallerAuthorizer* authorizer;
  ClientPresence* presence;
  PollHub* polls;
  absl::Time started_at;
};

// On the enrollment port (server-only TLS). Raw, so that malformed bytes get a specific error
// (see wire.h).
class EnrollmentService final
    : public v1::Enrollment::WithRawCallbackMethod_Enroll<v1::Enrollment::CallbackService> {
 public:
  explicit EnrollmentService(ServiceContext context) : context_(context) {}
  grpc::ServerUnaryReactor* Enroll(grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;

 private:
  grpc::Status Handle(const v1::EnrollRequest& request, v1::EnrollResponse& response);
  ServiceContext context_;
};

// On the mTLS port. Raw, like EnrollmentService.
class CertificatesService final
    : public v1::Certificates::WithRawCallbackMethod_Renew<v1::Certificates::CallbackService> {
 public:
  explicit CertificatesService(ServiceContext context) : context_(context) {}
  grpc::ServerUnaryReactor* Renew(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;

 private:
  grpc::Status Handle(const grpc::AuthContext& auth, const v1::RenewCertificateRequest& request,
                      v1::RenewCertificateResponse& response);
  ServiceContext context_;
};

// On the mTLS port; every method requires an admin certificate.
class AdminService final : public v1::Admin::Service {
 public:
  explicit AdminService(ServiceContext context) : context_(context) {}
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

 private:
  void FillClient(const ClientRecord& record, v1::ClientInfo* out) const;
  ServiceContext context_;
};

// On the mTLS port. PollTask uses the callback API so that a parked long poll holds no thread,
// and is raw, like EnrollmentService.
class FederationService final
    : public v1::Federation::WithRawCallbackMethod_PollTask<v1::Federation::CallbackService> {
 public:
  explicit FederationService(ServiceContext context) : context_(context) {}
  grpc::ServerUnaryReactor* PollTask(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;

 private:
  ServiceContext context_;
};

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_SERVICES_H_
