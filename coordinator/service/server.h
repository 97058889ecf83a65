// The running coordinator: the enrollment port (server-only TLS) and the mTLS port (federation,
// certificates and admin services), each with the standard gRPC health service, keepalive,
// and bounded message sizes and concurrent streams. The coordinator accepts connections itself
// (coordinator/service/listener.h) and hands them to gRPC.
#ifndef FEDMOE_COORDINATOR_SERVICE_SERVER_H_
#define FEDMOE_COORDINATOR_SERVICE_SERVER_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/config.h"
#include "coordinator/core.h"
#include "coordinator/service/listener.h"
#include "coordinator/service/metrics.h"
#include "coordinator/service/services.h"
#include "metrics/metrics_server.h"

namespace fedmoe::coordinator {

class CoordinatorServer {
 public:
  // Opens the store, loads the CA and server keys from the state directory, and starts
  // serving. Ports given as 0 are chosen by the kernel (see the port accessors).
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Start(CoordinatorConfig config);

  CoordinatorServer(const CoordinatorServer&) = delete;
  CoordinatorServer& operator=(const CoordinatorServer&) = delete;
  ~CoordinatorServer();

  int mtls_port() const { return mtls_port_; }
  int enrollment_port() const { return enrollment_port_; }

  // Each port's listener state, for /metrics.
  std::vector<PortHealth> Ports() const;

  // Stops accepting calls, finishes parked polls, and waits up to `grace` for calls in
  // flight. Committed state is already durable: nothing else needs flushing.
  void Shutdown(absl::Duration grace);

 private:
  CoordinatorServer() = default;
  // Sets the gRPC health services' statuses from the listeners' (both ports, both servers).
  void ReportHealth();

  std::unique_ptr<metrics::MetricsServer> metrics_server_;
  std::unique_ptr<CoordinatorMetrics> metrics_;
  std::shared_ptr<StatusCollectable> status_metrics_;
  std::unique_ptr<CoordinatorApi> api_;
  std::unique_ptr<EnrollmentService> enrollment_service_;
  std::unique_ptr<CertificatesService> certificates_service_;
  std::unique_ptr<AdminService> admin_service_;
  std::unique_ptr<FederationService> federation_service_;
  std::unique_ptr<Listener> enrollment_listener_;
  std::unique_ptr<Listener> mtls_listener_;
  std::unique_ptr<grpc::Server> enrollment_server_;
  std::unique_ptr<grpc::Server> mtls_server_;
  // Declared after the servers so that it is destroyed first: its poll hub finishes the parked
  // polls while the servers and the services they call back into still exist.
  std::unique_ptr<CoordinatorCore> core_;
  int mtls_port_ = 0;
  int enrollment_port_ = 0;
  bool shut_down_ = false;
};

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_SERVICE_SERVER_H_
