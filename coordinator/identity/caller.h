// Who is calling: the identity in the TLS peer certificate that gRPC verified against the
// federation CA, checked again here (federation, purpose) and against the registry on every
// call, so that a revocation takes effect at the caller's next RPC.
#ifndef FEDMOE_COORDINATOR_IDENTITY_CALLER_H_
#define FEDMOE_COORDINATOR_IDENTITY_CALLER_H_

#include <grpcpp/grpcpp.h>

#include <string>

#include "absl/status/statusor.h"
#include "coordinator/state/store.h"
#include "pki/certificate.h"
#include "pki/trust_bundle.h"

namespace fedmoe::coordinator {

struct Caller {
  pki::SpiffeId id;
  std::string serial;
  // The verified peer certificate, DER: relayed to peers with advertised keys (DESIGN §3.3).
  std::string certificate_der;
};

class CallerAuthorizer {
 public:
  // `trust`: the CAs whose certificates are accepted (two during a CA rotation).
  CallerAuthorizer(pki::TrustBundle trust, Store* store)
      : trust_(std::move(trust)), store_(store) {}

  // An enrolled, unrevoked client presenting a certificate issued to it.
  absl::StatusOr<Caller> AuthorizeClient(const grpc::AuthContext& auth) const;
  // An operator presenting an admin certificate of this federation.
  absl::StatusOr<Caller> AuthorizeAdmin(const grpc::AuthContext& auth) const;

 private:
  absl::StatusOr<Caller> Identify(const grpc::AuthContext& auth) const;

  pki::TrustBundle trust_;
  Store* store_;
};

// absl::Status → grpc::Status, code and message unchanged, except for the coordinator's own
// failures (INTERNAL, UNKNOWN, DATA_LOSS: a database error, a damaged file): those reach the
// caller as INTERNAL with an incident id only, and the log line "internal_error" keeps the
// details under that id. Their text names tables, SQL and paths that a remote caller has no
// business reading.
grpc::Status ToGrpc(const absl::Status& status);

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_IDENTITY_CALLER_H_
