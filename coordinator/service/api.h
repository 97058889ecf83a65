// What each method of the coordinator's three gRPC services does, apart from gRPC's call
// objects: the verified TLS peer (its auth context) and a parsed request go in, a status and a
// reply come out. The services in services.h are shells that parse bytes, call this and finish
// the call; the request fuzzer (tests/fuzz/coordinator_requests.cc) calls it directly, with no
// network between.
//
// Every method that needs an identity checks it here, against the store, on every call: a
// revocation takes effect at the caller's next request, whichever way the request arrives.
#ifndef FEDMOE_COORDINATOR_SERVICE_API_H_
#define FEDMOE_COORDINATOR_SERVICE_API_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/config.h"
#include "coordinator/identity/caller.h"
#include "coordinator/identity/enrollment_authority.h"
#include "coordinator/round/client_presence.h"
#include "coordinator/round/poll_hub.h"
#include "coordinator/round/round_engine.h"
#include "coordinator/service/metrics.h"
#include "coordinator/service/rate_limiter.h"
#include "coordinator/state/store.h"
#include "fedmoe/v1/admin.pb.h"
#include "fedmoe/v1/enrollment.pb.h"
#include "fedmoe/v1/federation.pb.h"

namespace fedmoe::coordinator {

// Everything the methods share; owned by the server (or a test), outliving every call.
struct ServiceContext {
  const CoordinatorConfig* config;
  Store* store;
  EnrollmentAuthority* authority;
  CallerAuthorizer* authorizer;
  ClientPresence* presence;
  PollHub* polls;
  RoundEngine* rounds;
  absl::Time started_at;
  // Null when metrics are off.
  CoordinatorMetrics* metrics = nullptr;
};

// Logs a refused call in one line, which method and why, and returns why.
absl::Status LogRefusal(std::string_view method, absl::Status status);
// The same, as the call's answer.
grpc::Status RefuseCall(std::string_view method, const absl::Status& status);

// What `fedmoe-coordinator status` shows, for the admin API and the /metrics endpoint.
absl::StatusOr<v1::GetStatusResponse> CollectStatus(const ServiceContext& context);

class CoordinatorApi {
 public:
  explicit CoordinatorApi(ServiceContext context);
  CoordinatorApi(const CoordinatorApi&) = delete;
  CoordinatorApi& operator=(const CoordinatorApi&) = delete;

  // The enrollment port: no identity yet, the token is the credential. `peer_address` (the
  // connection's IP address) is what failed attempts are counted and logged by.
  grpc::Status Enroll(const std::string& peer_address, const v1::EnrollRequest& request,
                      v1::EnrollResponse& response);
  grpc::Status Renew(const grpc::AuthContext& peer, const v1::RenewCertificateRequest& request,
                     v1::RenewCertificateResponse& response);

  // The admin service: every method requires an unrevoked admin certificate.
  grpc::Status CreateEnrollmentToken(const grpc::AuthContext& peer,
                                     const v1::CreateEnrollmentTokenRequest& request,
                                     v1::CreateEnrollmentTokenResponse& response);
  grpc::Status ListEnrollmentTokens(const grpc::AuthContext& peer,
                                    const v1::ListEnrollmentTokensRequest& request,
                                    v1::ListEnrollmentTokensResponse& response);
  grpc::Status RevokeEnrollmentToken(const grpc::AuthContext& peer,
                                     const v1::RevokeEnrollmentTokenRequest& request,
                                     v1::RevokeEnrollmentTokenResponse& response);
  grpc::Status ListClients(const grpc::AuthContext& peer, const v1::ListClientsRequest& request,
                           v1::ListClientsResponse& response);
  grpc::Status RevokeClient(const grpc::AuthContext& peer, const v1::RevokeClientRequest& request,
                            v1::RevokeClientResponse& response);
  grpc::Status GetStatus(const grpc::AuthContext& peer, const v1::GetStatusRequest& request,
                         v1::GetStatusResponse& response);
  grpc::Status ListRounds(const grpc::AuthContext& peer, const v1::ListRoundsRequest& request,
                          v1::ListRoundsResponse& response);
  grpc::Status GetPrivacyLedger(const grpc::AuthContext& peer,
                                const v1::GetPrivacyLedgerRequest& request,
                                v1::GetPrivacyLedgerResponse& response);
  grpc::Status AddAdmin(const grpc::AuthContext& peer, const v1::AddAdminRequest& request,
                        v1::AddAdminResponse& response);
  grpc::Status ListAdmins(const grpc::AuthContext& peer, const v1::ListAdminsRequest& request,
                          v1::ListAdminsResponse& response);
  grpc::Status RevokeAdmin(const grpc::AuthContext& peer, const v1::RevokeAdminRequest& request,
                           v1::RevokeAdminResponse& response);

  // The federation service: every method requires an enrolled, unrevoked client.
  //
  // A long poll. `finish` gets the caller's task, or Idle when none came before the wait ended
  // (or the hub had no room), or the refusal; it runs exactly once, on this thread or later on
  // the poll hub's. `abandoned` tells the hub the caller has gone.
  using PollFinish = std::function<void(absl::StatusOr<v1::PollTaskResponse>)>;
  void PollTask(const grpc::AuthContext& peer, const v1::PollTaskRequest& request,
                PollFinish finish, PollHub::Abandoned abandoned);
  grpc::Status AdvertiseKeys(const grpc::AuthContext& peer, const v1::AdvertiseKeysRequest& request,
                             v1::StageAck& response);
  grpc::Status ShareKeys(const grpc::AuthContext& peer, const v1::ShareKeysRequest& request,
                         v1::StageAck& response);
  grpc::Status Unmask(const grpc::AuthContext& peer, const v1::UnmaskRequest& request,
                      v1::StageAck& response);
  grpc::Status GetModelManifest(const grpc::AuthContext& peer,
                                const v1::GetModelManifestRequest& request,
                                v1::ModelManifest& response);
  // Streams the file from the request's offset; `write` returns false when the caller has gone,
  // and `cancelled` is asked between chunks.
  grpc::Status DownloadModel(const grpc::AuthContext& peer, const v1::DownloadModelRequest& request,
                             absl::FunctionRef<bool(const v1::ModelChunk&)> write,
                             absl::FunctionRef<bool()> cancelled);
  // Reads the upload's chunks with `read` (false: the stream ended) until the vector is whole.
  grpc::Status UploadMaskedInput(const grpc::AuthContext& peer,
                                 absl::FunctionRef<bool(v1::MaskedInputChunk&)> read,
                                 v1::StageAck& response);
  grpc::Status GetRoundStatus(const grpc::AuthContext& peer,
                              const v1::GetRoundStatusRequest& request, v1::RoundStatus& response);

 private:
  // The stage methods' shared path: authorize, run the round engine's handler, answer.
  grpc::Status RunStage(std::string_view method, const grpc::AuthContext& peer,
                        absl::FunctionRef<absl::StatusOr<v1::StageAck>(const Caller&)> handle,
                        v1::StageAck& response);
  void FillClient(const ClientRecord& record, v1::ClientInfo* out) const;
  // How long a client whose poll the hub could not hold waits before the next.
  absl::Duration DeferredPollInterval();

  // Whether `client_id` was revoked since this coordinator started: its parked poll ends with a
  // refusal at once rather than at its deadline.
  bool RevokedWhilePolling(const std::string& client_id);

  // Logs a refusal of `method` to `key` (a client, a peer address) at most once per interval,
  // with how many were not logged, and returns `status`.
  absl::Status Throttled(std::string_view method, const std::string& key, absl::Status status);

  ServiceContext context_;
  // limits.renewals_per_hour per client identity.
  KeyedRateLimiter renewals_;
  // limits.enrollment_failures_per_minute per peer address: charged by failures only.
  KeyedRateLimiter enrollment_failures_;
  LogThrottle refusal_log_{absl::Seconds(10)};
  absl::Mutex revoked_mutex_;
  // Clients revoked since the start (a handful: revocations are rare), checked by every parked
  // poll's answer without a database read.
  absl::flat_hash_set<std::string> revoked_ ABSL_GUARDED_BY(revoked_mutex_);
  // Announced in every PollTask answer (raw 32 bytes), so clients notice a CA rotation.
  std::string trust_bundle_sha256_;
  absl::Mutex deferral_mutex_;
  absl::Time deferral_computed_at_ ABSL_GUARDED_BY(deferral_mutex_) = absl::InfinitePast();
  absl::Duration deferral_interval_ ABSL_GUARDED_BY(deferral_mutex_);
};

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_SERVICE_API_H_
