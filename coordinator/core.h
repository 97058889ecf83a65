// A coordinator's working parts without its listeners: the store, the federation CA and its
// trust bundle, the caller check, client presence, the poll hub and the round engine. The
// server (server.h) puts gRPC ports in front of them; the request fuzzer drives them through
// CoordinatorApi directly.
#ifndef FEDMOE_COORDINATOR_CORE_H_
#define FEDMOE_COORDINATOR_CORE_H_

#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "coordinator/config.h"
#include "coordinator/identity/ca_rotation.h"
#include "coordinator/service/api.h"

namespace fedmoe::coordinator {

class CoordinatorCore {
 public:
  // Opens the store and loads the trusted CAs from the config's state directory, and loads
  // the round engine (which publishes the initial model if there is none). Starts no thread:
  // the owner calls rounds().Start() when it is ready to serve.
  static absl::StatusOr<std::unique_ptr<CoordinatorCore>> Open(CoordinatorConfig config);

  CoordinatorCore(const CoordinatorCore&) = delete;
  CoordinatorCore& operator=(const CoordinatorCore&) = delete;
  // Stops the round engine and finishes every parked poll before the parts they use go.
  ~CoordinatorCore();

  const CoordinatorConfig& config() const { return config_; }
  // The CAs clients and admins are checked against, issuer first.
  const pki::TrustBundle& trust_bundle() const { return *trust_bundle_; }
  CaRotationPhase ca_rotation_phase() const { return ca_rotation_phase_; }
  RoundEngine& rounds() { return *rounds_; }
  PollHub& polls() { return *polls_; }
  // Every part, for CoordinatorApi; metrics off.
  ServiceContext context();

 private:
  CoordinatorCore() = default;

  CoordinatorConfig config_;
  std::optional<pki::TrustBundle> trust_bundle_;
  CaRotationPhase ca_rotation_phase_ = CaRotationPhase::kNone;
  absl::Time started_at_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<EnrollmentAuthority> authority_;
  std::unique_ptr<CallerAuthorizer> authorizer_;
  std::unique_ptr<ClientPresence> presence_;
  std::unique_ptr<RoundEngine> rounds_;
  // Declared last so that it is destroyed first: its thread finishes the parked polls, whose
  // callbacks use the parts above.
  std::unique_ptr<PollHub> polls_;
};

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_CORE_H_
