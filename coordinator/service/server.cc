#include "coordinator/service/server.h"

#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>
#include <grpcpp/security/server_credentials.h>

#include "absl/strings/str_cat.h"
#include "coordinator/identity/ca_rotation.h"
#include "coordinator/service/listener.h"
#include "logging/log.h"
#include "metrics/metrics_server.h"
#include "pki/key_pair_files.h"

namespace fedmoe::coordinator {
namespace {

void ApplyLimits(const CoordinatorConfig& config, grpc::ServerBuilder& builder) {
  builder.SetMaxReceiveMessageSize(static_cast<int>(config.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(config.max_message_bytes));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                             static_cast<int>(config.max_concurrent_streams));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS,
                             static_cast<int>(absl::ToInt64Milliseconds(config.keepalive_time)));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                             static_cast<int>(absl::ToInt64Milliseconds(config.keepalive_timeout)));
  // Clients ping while a long poll is open; allow it as often as they are configured to.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10'000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // TLS frames of 4 KiB instead of 16 KiB: each connection's frame protector buffers shrink
  // by 12 KiB, which adds up over a thousand idle clients; records stay far above the
  // 22-byte AEAD overhead.
  builder.AddChannelArgument(GRPC_ARG_TSI_MAX_FRAME_SIZE, 4096);
  // A connection that never finishes its TLS handshake holds memory and a descriptor.
  builder.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS,
                             static_cast<int>(absl::ToInt64Milliseconds(config.handshake_timeout)));
  grpc::ResourceQuota quota("fedmoe-transport");
  quota.Resize(static_cast<size_t>(config.transport_memory_bytes));
  builder.SetResourceQuota(quota);
}

// The CA of the bundle that issued the server certificate. Checked at the certificate's own
// start of validity: which CA signed it is the question here, not whether it has expired
// (an expired one is still served, and clients say so precisely).
absl::StatusOr<pki::Certificate> ServerCertificateCa(const pki::Certificate& server,
                                                     const pki::TrustBundle& trust) {
  for (const pki::Certificate& ca : trust.certificates()) {
    if (pki::VerifyPeer(server, ca, trust.federation(), pki::Purpose::kServer, server.NotBefore())
            .ok()) {
      return ca;
    }
  }
  return absl::FailedPreconditionError(
      "the server certificate was not issued by a CA of this federation; run "
      "`fedmoe-coordinator certificates renew`");
}

// Binds `address` for the port `name` and accepts into `builder`'s server
// (coordinator/service/listener.h).
absl::StatusOr<std::unique_ptr<Listener>> BindPort(
    const std::string& name, const std::string& key, const std::string& address,
    ListenerLimits limits, const std::shared_ptr<grpc::ServerCredentials>& credentials,
    grpc::ServerBuilder& builder,
    std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor>& acceptor) {
  absl::StatusOr<std::unique_ptr<Listener>> listener = Listener::Bind(name, address, limits);
  if (!listener.ok()) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", key, " ", address, " (",
                                               listener.status().message(), ")"));
  }
  acceptor = builder.experimental().AddExternalConnectionAcceptor(
      grpc::ServerBuilder::experimental_type::ExternalConnectionType::FROM_FD, credentials);
  return listener;
}

}  // namespace

absl::StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Start(
    CoordinatorConfig config) {
  std::unique_ptr<CoordinatorServer> server(new CoordinatorServer());
  const StateDir dir = config.state_dir;
  // A `certificates renew` that a crash interrupted is finished before the pairs are read.
  if (absl::Status status = CompleteCoordinatorKeySwaps(dir); !status.ok()) return status;
  absl::StatusOr<pki::Certificate> server_certificate =
      pki::Certificate::ReadFile(dir.server_certificate());
  if (!server_certificate.ok()) return server_certificate.status();
  absl::StatusOr<pki::PrivateKey> server_key = pki::PrivateKey::ReadFile(dir.server_key());
  if (!server_key.ok()) return server_key.status();
  absl::StatusOr<std::string> server_key_pem = server_key->ToPem();
  if (!server_key_pem.ok()) return server_key_pem.status();

  absl::StatusOr<std::unique_ptr<CoordinatorCore>> core = CoordinatorCore::Open(std::move(config));
  if (!core.ok()) return core.status();
  server->core_ = *std::move(core);
  const CoordinatorConfig& cfg = server->core_->config();
  const pki::TrustBundle& trust = server->core_->trust_bundle();
  ServiceContext context = server->core_->context();
  if (!cfg.metrics_listen.empty()) {
    absl::StatusOr<std::unique_ptr<metrics::MetricsServer>> exposer =
        metrics::MetricsServer::Start(cfg.metrics_listen);
    if (!exposer.ok()) return exposer.status();
    server->metrics_server_ = *std::move(exposer);
    server->metrics_ = std::make_unique<CoordinatorMetrics>(server->metrics_server_->registry());
    context.metrics = server->metrics_.get();
    CoordinatorServer* self = server.get();
    server->status_metrics_ = std::make_shared<StatusCollectable>(
        [context]() { return CollectStatus(context); }, [self]() { return self->Ports(); });
    server->core_->rounds().SetObserver(server->metrics_.get());
    LogEvent(LogLevel::kInfo, "metrics_served")
        .Field("address", cfg.metrics_listen)
        .Field("port", server->metrics_server_->port());
  }
  server->api_ = std::make_unique<CoordinatorApi>(context);
  server->enrollment_service_ = std::make_unique<EnrollmentService>(server->api_.get());
  server->certificates_service_ = std::make_unique<CertificatesService>(server->api_.get());
  server->admin_service_ = std::make_unique<AdminService>(server->api_.get());
  server->federation_service_ =
      std::make_unique<FederationService>(server->api_.get(), context.metrics);

  // The chain includes the CA, so that an enrolling client can pin it by fingerprint. That is
  // the issuing CA, except after a switch that a crash cut short
  // (coordinator/identity/ca_rotation.h).
  absl::StatusOr<pki::Certificate> server_ca = ServerCertificateCa(*server_certificate, trust);
  if (!server_ca.ok()) return server_ca.status();
  const std::string chain = server_certificate->ToPem() + server_ca->ToPem();
  grpc::EnableDefaultHealthCheckService(true);

  const int64_t open_files = RaiseOpenFileLimit();
  ListenerLimits limits;
  limits.max_connections = cfg.max_connections;
  limits.max_connections_per_peer = cfg.max_connections_per_peer;
  ListenerLimits enrollment_limits = limits;
  enrollment_limits.connections_per_second_per_peer = cfg.enrollment_connections_per_second;
  enrollment_limits.bytes_per_connection = cfg.enrollment_bytes_per_connection;

  grpc::SslServerCredentialsOptions enrollment_tls(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  enrollment_tls.pem_key_cert_pairs.push_back({*server_key_pem, chain});
  grpc::ServerBuilder enrollment_builder;
  std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> enrollment_acceptor;
  absl::StatusOr<std::unique_ptr<Listener>> enrollment_listener =
      BindPort("enrollment", "enroll_listen", cfg.enroll_listen, enrollment_limits,
               grpc::SslServerCredentials(enrollment_tls), enrollment_builder, enrollment_acceptor);
  if (!enrollment_listener.ok()) return enrollment_listener.status();
  server->enrollment_listener_ = *std::move(enrollment_listener);
  server->enrollment_port_ = server->enrollment_listener_->port();
  enrollment_builder.RegisterService(server->enrollment_service_.get());
  ApplyLimits(cfg, enrollment_builder);
  // Enrolling takes one call; a connection kept open after it only holds a descriptor. (The
  // mTLS port keeps gRPC's defaults: its clients hold connections for long polls.)
  enrollment_builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS, 30'000);
  enrollment_builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS, 120'000);
  enrollment_builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS, 30'000);
  server->enrollment_server_ = enrollment_builder.BuildAndStart();
  if (server->enrollment_server_ == nullptr) {
    return absl::UnavailableError("the enrollment port's gRPC server did not start");
  }

  grpc::SslServerCredentialsOptions mtls(
      GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  mtls.pem_root_certs = trust.ToPem();
  mtls.pem_key_cert_pairs.push_back({*server_key_pem, chain});
  grpc::ServerBuilder mtls_builder;
  std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> mtls_acceptor;
  absl::StatusOr<std::unique_ptr<Listener>> mtls_listener =
      BindPort("federation", "listen", cfg.listen, limits, grpc::SslServerCredentials(mtls),
               mtls_builder, mtls_acceptor);
  if (!mtls_listener.ok()) {
    server->enrollment_server_->Shutdown();
    return mtls_listener.status();
  }
  server->mtls_listener_ = *std::move(mtls_listener);
  server->mtls_port_ = server->mtls_listener_->port();
  mtls_builder.RegisterService(server->certificates_service_.get());
  mtls_builder.RegisterService(server->admin_service_.get());
  mtls_builder.RegisterService(server->federation_service_.get());
  ApplyLimits(cfg, mtls_builder);
  server->mtls_server_ = mtls_builder.BuildAndStart();
  if (server->mtls_server_ == nullptr) {
    server->enrollment_server_->Shutdown();
    return absl::UnavailableError("the mTLS port's gRPC server did not start");
  }
  CoordinatorServer* self = server.get();
  auto report_health = [self](bool) { self->ReportHealth(); };
  server->ReportHealth();
  server->enrollment_listener_->Start(std::move(enrollment_acceptor), report_health);
  server->mtls_listener_->Start(std::move(mtls_acceptor), report_health);
  // Served once the listeners exist: its scrapes read them.
  if (server->status_metrics_ != nullptr) {
    server->metrics_server_->Add(server->status_metrics_);
    server->metrics_server_->SetHealth([self, context]() -> std::optional<std::string> {
      for (const PortHealth& port : self->Ports()) {
        if (!port.stats.accepting) {
          return absl::StrCat("the ", port.name,
                              " port cannot accept connections (no file "
                              "descriptor free)");
        }
      }
      if (absl::StatusOr<v1::GetStatusResponse> status = CollectStatus(context); !status.ok()) {
        return absl::StrCat("the store cannot be read: ", status.status().message());
      }
      return std::nullopt;
    });
  }
  server->core_->rounds().Start();
  LogEvent(LogLevel::kInfo, "coordinator_started")
      .Field("federation", cfg.federation)
      .Field("listen", cfg.listen)
      .Field("mtls_port", server->mtls_port_)
      .Field("enroll_listen", cfg.enroll_listen)
      .Field("enrollment_port", server->enrollment_port_)
      .Field("ca_fingerprint", trust.issuer().Sha256Fingerprint())
      .Field("ca_rotation", CaRotationPhaseName(server->core_->ca_rotation_phase()))
      .Field("open_file_limit", open_files);
  return server;
}

void CoordinatorServer::Shutdown(absl::Duration grace) {
  if (shut_down_) return;
  shut_down_ = true;
  if (core_ != nullptr) {
    core_->rounds().Stop();
    core_->polls().Shutdown();
  }
  const gpr_timespec deadline =
      gpr_time_add(gpr_now(GPR_CLOCK_REALTIME),
                   gpr_time_from_millis(absl::ToInt64Milliseconds(grace), GPR_TIMESPAN));
  // No new connections while the calls in flight finish.
  if (mtls_listener_ != nullptr) mtls_listener_->Stop();
  if (enrollment_listener_ != nullptr) enrollment_listener_->Stop();
  if (mtls_server_ != nullptr) mtls_server_->Shutdown(deadline);
  if (enrollment_server_ != nullptr) enrollment_server_->Shutdown(deadline);
  if (mtls_server_ == nullptr && enrollment_server_ == nullptr) return;
  LogEvent(LogLevel::kInfo, "coordinator_stopped").Field("federation", core_->config().federation);
}

std::vector<PortHealth> CoordinatorServer::Ports() const {
  std::vector<PortHealth> ports;
  for (Listener* listener : {mtls_listener_.get(), enrollment_listener_.get()}) {
    if (listener != nullptr) ports.push_back({listener->name(), listener->stats()});
  }
  return ports;
}

void CoordinatorServer::ReportHealth() {
  const bool federation = mtls_listener_ == nullptr || mtls_listener_->accepting();
  const bool enrollment = enrollment_listener_ == nullptr || enrollment_listener_->accepting();
  // Each port's health service also speaks for the other, which may be the one that cannot
  // accept (and so cannot answer for itself).
  for (grpc::Server* grpc_server : {mtls_server_.get(), enrollment_server_.get()}) {
    if (grpc_server == nullptr || grpc_server->GetHealthCheckService() == nullptr) continue;
    grpc::HealthCheckServiceInterface* health = grpc_server->GetHealthCheckService();
    health->SetServingStatus("fedmoe.v1.Federation", federation);
    health->SetServingStatus("fedmoe.v1.Enrollment", enrollment);
    health->SetServingStatus("", federation && enrollment);
  }
}

CoordinatorServer::~CoordinatorServer() {
  Shutdown(absl::Seconds(5));
  // Its scrapes read the core's parts, which go before it otherwise.
  metrics_server_.reset();
}

}  // namespace fedmoe::coordinator
