#include "coordinator/config.h"

#include <sys/stat.h>

#include "absl/strings/str_cat.h"
#include "config/address.h"
#include "config/yaml_config.h"
#include "coordinator/state/store.h"
#include "logging/log.h"
#include "pki/certificate_authority.h"
#include "pki/key_pair_files.h"
#include "storage/atomic_file.h"
#include "storage/file_status.h"

namespace fedmoe::coordinator {
namespace {

std::string ConfigDuration(absl::Duration duration) {
  // Whole hours read best for certificate lifetimes ("720h"), seconds for the rest.
  if (duration >= absl::Hours(1) && duration % absl::Hours(1) == absl::ZeroDuration()) {
    return absl::StrCat(duration / absl::Hours(1), "h");
  }
  return absl::FormatDuration(duration);
}

// The coordinator's own identities: a server certificate for `hosts` and the operator's admin
// certificate, each with a new P-256 key, for the configured lifetimes.
struct CoordinatorPairs {
  pki::PrivateKey server_key;
  pki::Certificate server;
  pki::PrivateKey admin_key;
  pki::Certificate admin;
};

absl::StatusOr<CoordinatorPairs> IssueCoordinatorPairs(const pki::CertificateAuthority& ca,
                                                       const std::vector<std::string>& hosts,
                                                       const CoordinatorConfig& config) {
  absl::StatusOr<pki::PrivateKey> server_key = pki::PrivateKey::GenerateP256();
  if (!server_key.ok()) return server_key.status();
  absl::StatusOr<pki::Certificate> server =
      ca.IssueServer(*server_key, hosts, config.server_certificate_validity);
  if (!server.ok()) return server.status();
  absl::StatusOr<pki::PrivateKey> admin_key = pki::PrivateKey::GenerateP256();
  if (!admin_key.ok()) return admin_key.status();
  absl::StatusOr<std::string> admin_csr = pki::MakeCsr(*admin_key, "operator");
  if (!admin_csr.ok()) return admin_csr.status();
  absl::StatusOr<pki::Certificate> admin =
      ca.IssueFromCsr(*admin_csr, {config.federation, pki::IdentityKind::kAdmin, "operator"},
                      config.admin_certificate_validity);
  if (!admin.ok()) return admin.status();
  return CoordinatorPairs{*std::move(server_key), *std::move(server), *std::move(admin_key),
                          *std::move(admin)};
}

}  // namespace

absl::StatusOr<CoordinatorConfig> CoordinatorConfig::Load(const std::filesystem::path& path) {
  absl::StatusOr<config::YamlConfigReader> reader = config::YamlConfigReader::FromFile(path);
  if (!reader.ok()) return reader.status();
  CoordinatorConfig config;
  std::string state_dir;
  reader->Require("federation");
  reader->Require("state_dir");
  reader->Read("federation", &config.federation);
  reader->Read("state_dir", &state_dir);
  reader->Read("listen", &config.listen);
  reader->Read("enroll_listen", &config.enroll_listen);
  reader->Read("advertise", &config.advertise);
  reader->Read("certificates.client_validity", &config.client_certificate_validity);
  reader->Read("certificates.admin_validity", &config.admin_certificate_validity);
  reader->Read("certificates.server_validity", &config.server_certificate_validity);
  reader->Read("limits.max_message_bytes", &config.max_message_bytes);
  reader->Read("limits.max_concurrent_streams", &config.max_concurrent_streams);
  reader->Read("limits.transport_memory_bytes", &config.transport_memory_bytes);
  reader->Read("limits.concurrent_uploads", &config.concurrent_uploads);
  reader->Read("limits.poll_max_wait", &config.poll_max_wait);
  reader->Read("limits.parked_polls", &config.parked_polls);
  reader->Read("limits.deferred_polls_per_second", &config.deferred_polls_per_second);
  reader->Read("limits.max_connections", &config.max_connections);
  reader->Read("limits.max_connections_per_peer", &config.max_connections_per_peer);
  reader->Read("limits.enrollment_connections_per_second",
               &config.enrollment_connections_per_second);
  reader->Read("limits.enrollment_bytes_per_connection", &config.enrollment_bytes_per_connection);
  reader->Read("limits.handshake_timeout", &config.handshake_timeout);
  reader->Read("limits.polls_per_client", &config.polls_per_client);
  reader->Read("limits.renewals_per_hour", &config.renewals_per_hour);
  reader->Read("limits.enrollment_failures_per_minute", &config.enrollment_failures_per_minute);
  reader->Read("keepalive.time", &config.keepalive_time);
  reader->Read("keepalive.timeout", &config.keepalive_timeout);
  reader->Read("log_level", &config.log_level);
  reader->Read("metrics.listen", &config.metrics_listen);
  ReadRoundPolicy(*reader, &config.rounds);
  config.state_dir.root = state_dir;

  if (!config.federation.empty()) {
    if (absl::Status status = pki::ValidateName("federation", config.federation); !status.ok()) {
      reader->Invalid("federation", std::string(status.message()));
    }
  }
  for (const auto& [key, value] :
       {std::pair{"listen", &config.listen}, std::pair{"enroll_listen", &config.enroll_listen}}) {
    if (absl::StatusOr<config::HostPort> host = config::ParseHostPort(*value); !host.ok()) {
      reader->Invalid(key, std::string(host.status().message()));
    }
  }
  if (!config.advertise.empty()) {
    if (absl::StatusOr<config::HostPort> host = config::ParseHostPort(config.advertise);
        !host.ok()) {
      reader->Invalid("advertise", std::string(host.status().message()));
    }
  }
  for (const auto& [key, value] :
       {std::pair{"certificates.client_validity", config.client_certificate_validity},
        std::pair{"certificates.admin_validity", config.admin_certificate_validity},
        std::pair{"certificates.server_validity", config.server_certificate_validity}}) {
    if (value < absl::Hours(1) || value > pki::kMaxLeafValidity) {
      reader->Invalid(key, "must be between 1h and 9552h (398 days)");
    }
  }
  if (config.max_message_bytes < (1 << 20) + 4096 || config.max_message_bytes > (64 << 20)) {
    reader->Invalid("limits.max_message_bytes",
                    "must be between 1 MiB + 4 KiB (a full chunk) and 64 MiB");
  }
  if (config.max_concurrent_streams < 1 || config.max_concurrent_streams > 100000) {
    reader->Invalid("limits.max_concurrent_streams", "must be between 1 and 100000");
  }
  if (config.concurrent_uploads < 1 || config.concurrent_uploads > 1024) {
    reader->Invalid("limits.concurrent_uploads", "must be between 1 and 1024");
  }
  if (config.transport_memory_bytes < (16 << 20) ||
      config.transport_memory_bytes > (int64_t{64} << 30)) {
    reader->Invalid("limits.transport_memory_bytes", "must be between 16 MiB and 64 GiB");
  }
  if (config.poll_max_wait < absl::Seconds(1) || config.poll_max_wait > absl::Minutes(10)) {
    reader->Invalid("limits.poll_max_wait", "must be between 1s and 10m");
  }
  if (config.parked_polls < 1 || config.parked_polls > 1000000) {
    reader->Invalid("limits.parked_polls", "must be between 1 and 1000000");
  }
  if (!(config.deferred_polls_per_second >= 1 && config.deferred_polls_per_second <= 100000)) {
    reader->Invalid("limits.deferred_polls_per_second", "must be between 1 and 100000");
  }
  for (auto [key, value, max] :
       {std::tuple{"limits.max_connections", config.max_connections, int64_t{10000000}},
        {"limits.max_connections_per_peer", config.max_connections_per_peer, int64_t{10000000}}}) {
    if (value < 0 || value > max) reader->Invalid(key, "must be between 0 (no cap) and 10000000");
  }
  if (!(config.enrollment_connections_per_second >= 0 &&
        config.enrollment_connections_per_second <= 100000)) {
    reader->Invalid("limits.enrollment_connections_per_second",
                    "must be between 0 (no cap) and 100000");
  }
  if (config.enrollment_bytes_per_connection != 0 &&
      (config.enrollment_bytes_per_connection < 32768 ||
       config.enrollment_bytes_per_connection > (int64_t{1} << 30))) {
    reader->Invalid("limits.enrollment_bytes_per_connection",
                    "must be 0 (no budget) or between 32768 (one enrollment) and 1 GiB");
  }
  if (config.handshake_timeout < absl::Seconds(1) || config.handshake_timeout > absl::Minutes(5)) {
    reader->Invalid("limits.handshake_timeout", "must be between 1s and 5m");
  }
  for (auto [key, value] :
       {std::pair{"limits.polls_per_client", config.polls_per_client},
        {"limits.renewals_per_hour", config.renewals_per_hour},
        {"limits.enrollment_failures_per_minute", config.enrollment_failures_per_minute}}) {
    if (value < 1 || value > 1000000) reader->Invalid(key, "must be between 1 and 1000000");
  }
  if (config.keepalive_time < absl::Seconds(10) || config.keepalive_timeout < absl::Seconds(1)) {
    reader->Invalid("keepalive", "time must be at least 10s and timeout at least 1s");
  }
  if (absl::StatusOr<LogLevel> level = ParseLogLevel(config.log_level); !level.ok()) {
    reader->Invalid("log_level", std::string(level.status().message()));
  }
  if (absl::Status status = reader->Finish(); !status.ok()) return status;
  return config;
}

std::string CoordinatorConfig::ToYaml() const {
  return absl::StrCat(
      "# fedmoe coordinator configuration. `fedmoe-coordinator serve --config THIS_FILE`.\n"
      "# Unknown keys are errors, so a misspelt option never goes unnoticed.\n\n"
      "# The federation's name: the trust domain of every identity, spiffe://<federation>/...\n"
      "federation: ",
      federation,
      "\n"
      "# Holds the CA key, the server and admin keys, and the SQLite store. Keep it 0700 and\n"
      "# back it up (docs: operations).\n"
      "state_dir: ",
      state_dir.root.string(),
      "\n"
      "# host:port of the mTLS port (federation and admin services, TLS 1.3, client\n"
      "# certificates required).\n"
      "listen: ",
      listen,
      "\n"
      "# host:port of the enrollment port (server-authenticated TLS; clients have no\n"
      "# certificate yet).\n"
      "enroll_listen: ",
      enroll_listen,
      "\n"
      "# host:port that enrolled clients are told to dial for the mTLS port, when it differs\n"
      "# from listen (a load balancer, NAT, or a 0.0.0.0 bind). Empty: same as listen.\n"
      "advertise: \"",
      advertise,
      "\"\n\n"
      "certificates:\n"
      "  # Lifetime of client certificates; clients renew when a third is left. Max 9552h.\n"
      "  client_validity: ",
      ConfigDuration(client_certificate_validity),
      "\n"
      "  # Lifetime of the admin certificate issued by `init`.\n"
      "  admin_validity: ",
      ConfigDuration(admin_certificate_validity),
      "\n"
      "  # Lifetime of the coordinator's own TLS server certificate.\n"
      "  server_validity: ",
      ConfigDuration(server_certificate_validity),
      "\n\n"
      "limits:\n"
      "  # Largest gRPC message accepted, in bytes (model and update chunks are 1 MiB).\n"
      "  max_message_bytes: ",
      max_message_bytes,
      "\n"
      "  # Concurrent streams per connection.\n"
      "  max_concurrent_streams: ",
      max_concurrent_streams,
      "\n"
      "  # gRPC's memory for all connections' buffers together; a busy round slows down rather\n"
      "  # than growing past it.\n"
      "  transport_memory_bytes: ",
      transport_memory_bytes,
      "\n"
      "  # Masked inputs received at once; each is held whole (D·b/8 bytes) until complete.\n"
      "  concurrent_uploads: ",
      concurrent_uploads,
      "\n"
      "  # Longest a client's PollTask is held open before an Idle answer.\n"
      "  poll_max_wait: ",
      ConfigDuration(poll_max_wait),
      "\n"
      "  # Polls held open at once from clients waiting for a round; each holds a connection\n"
      "  # (about 100 KB). Polls beyond it are answered at once, and their clients wait,\n"
      "  # disconnected, until told to poll again. The open round's members are always held.\n"
      "  parked_polls: ",
      parked_polls,
      "\n"
      "  # The rate, in all, at which clients whose polls are not held come back.\n"
      "  deferred_polls_per_second: ",
      deferred_polls_per_second,
      "\n"
      "  # Connections open at once on each port, and from one peer address; 0: no cap.\n"
      "  max_connections: ",
      max_connections,
      "\n"
      "  max_connections_per_peer: ",
      max_connections_per_peer,
      "\n"
      "  # New connections per second from one peer to the enrollment port (0: no cap), and the\n"
      "  # bytes one enrollment connection may send before it is cut (0: no budget).\n"
      "  enrollment_connections_per_second: ",
      enrollment_connections_per_second,
      "\n"
      "  enrollment_bytes_per_connection: ",
      enrollment_bytes_per_connection,
      "\n"
      "  # A TLS handshake not finished within this is dropped.\n"
      "  handshake_timeout: ",
      ConfigDuration(handshake_timeout),
      "\n"
      "  # Fair shares: polls open at once per client, renewals per client per hour, and failed\n"
      "  # enrollments per peer address per minute.\n"
      "  polls_per_client: ",
      polls_per_client,
      "\n"
      "  renewals_per_hour: ",
      renewals_per_hour,
      "\n"
      "  enrollment_failures_per_minute: ",
      enrollment_failures_per_minute,
      "\n\n"
      "keepalive:\n"
      "  # HTTP/2 pings on idle connections, so dead peers and dropped NAT entries are noticed.\n"
      "  time: ",
      ConfigDuration(keepalive_time),
      "\n"
      "  timeout: ",
      ConfigDuration(keepalive_timeout),
      "\n\n"
      "# debug, info, warning or error. Logs are JSON lines on stderr.\n"
      "log_level: ",
      log_level,
      "\n\n"
      "metrics:\n"
      "  # Prometheus /metrics endpoint, host:port; empty turns it off.\n"
      "  listen: \"",
      metrics_listen, "\"\n\n", RoundPolicyYaml(rounds));
}

absl::StatusOr<InitResult> InitStateDir(const InitOptions& options) {
  if (absl::Status status = pki::ValidateName("federation", options.federation); !status.ok()) {
    return status;
  }
  for (const std::string* address : {&options.listen, &options.enroll_listen}) {
    if (absl::StatusOr<config::HostPort> host = config::ParseHostPort(*address); !host.ok()) {
      return host.status();
    }
  }
  const StateDir dir{std::filesystem::absolute(options.state_dir)};
  std::error_code error;
  std::filesystem::create_directories(dir.root, error);
  if (error) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create state directory ", dir.root.string(), ": ", error.message()));
  }
  if (storage::PathExists(dir.ca_key()) || storage::PathExists(dir.store())) {
    return absl::FailedPreconditionError(absl::StrCat(
        "state directory ", dir.root.string(),
        " already holds a federation; choose an empty directory or remove it deliberately"));
  }
  ::chmod(dir.root.c_str(), 0700);

  absl::StatusOr<pki::CertificateAuthority> ca =
      NewOrGivenCa(options.federation, options.ca_certificate, options.ca_key, options.ca_validity);
  if (!ca.ok()) return ca.status();
  CoordinatorConfig config;
  config.federation = options.federation;
  config.state_dir = dir;
  config.listen = options.listen;
  config.enroll_listen = options.enroll_listen;
  config.advertise = options.advertise;

  absl::StatusOr<CoordinatorPairs> pairs = IssueCoordinatorPairs(*ca, options.server_hosts, config);
  if (!pairs.ok()) return pairs.status();

  // The store is created first and the CA key last, so a crash part-way leaves a directory
  // that the "already holds a federation" check refuses rather than a half-made CA.
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(dir.store());
  if (!store.ok()) return store.status();
  if (absl::Status status = (*store)->RecordFederation(options.federation); !status.ok()) {
    return status;
  }
  for (absl::Status status :
       {pairs->server.WriteFile(dir.server_certificate()),
        pairs->server_key.WriteFile(dir.server_key()),
        pairs->admin.WriteFile(dir.admin_certificate()),
        pairs->admin_key.WriteFile(dir.admin_key()),
        ca->certificate().WriteFile(dir.ca_certificate()), ca->key().WriteFile(dir.ca_key()),
        storage::WriteFileAtomically(
            dir.config(), config.ToYaml(),
            std::filesystem::perms::owner_read | std::filesystem::perms::owner_write)}) {
    if (!status.ok()) return status;
  }
  return InitResult{config, ca->certificate().Sha256Fingerprint()};
}

absl::StatusOr<pki::CertificateAuthority> LoadCaFiles(const std::filesystem::path& certificate_path,
                                                      const std::filesystem::path& key_path,
                                                      const std::string& federation) {
  absl::StatusOr<pki::Certificate> certificate = pki::Certificate::ReadFile(certificate_path);
  if (!certificate.ok()) return certificate.status();
  absl::StatusOr<pki::PrivateKey> key = pki::PrivateKey::ReadFile(key_path);
  if (!key.ok()) return key.status();
  absl::StatusOr<pki::CertificateAuthority> ca =
      pki::CertificateAuthority::Load(*std::move(certificate), *std::move(key));
  if (!ca.ok()) return ca.status();
  if (ca->federation() != federation) {
    return absl::InvalidArgumentError(absl::StrCat("the CA in ", certificate_path.string(),
                                                   " is for federation '", ca->federation(),
                                                   "', not '", federation, "'"));
  }
  return ca;
}

absl::StatusOr<pki::CertificateAuthority> NewOrGivenCa(const std::string& federation,
                                                       const std::filesystem::path& certificate,
                                                       const std::filesystem::path& key,
                                                       absl::Duration validity) {
  if (certificate.empty() && key.empty()) {
    return pki::CertificateAuthority::Create(federation, validity);
  }
  if (certificate.empty() || key.empty()) {
    return absl::InvalidArgumentError("--ca-cert and --ca-key go together");
  }
  return LoadCaFiles(certificate, key, federation);
}

absl::StatusOr<pki::CertificateAuthority> LoadFederationCa(const CoordinatorConfig& config) {
  absl::StatusOr<pki::CertificateAuthority> ca =
      LoadCaFiles(config.state_dir.ca_certificate(), config.state_dir.ca_key(), config.federation);
  // The state directory and its config disagree: nothing the caller passed is wrong.
  if (ca.status().code() == absl::StatusCode::kInvalidArgument) {
    return absl::FailedPreconditionError(ca.status().message());
  }
  return ca;
}

absl::Status CompleteCoordinatorKeySwaps(const StateDir& dir) {
  for (const auto& [key, certificate] : {std::pair{dir.server_key(), dir.server_certificate()},
                                         std::pair{dir.admin_key(), dir.admin_certificate()}}) {
    if (absl::Status status = pki::CompleteKeyPairSwap(key, certificate); !status.ok()) {
      return status;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<RenewedCertificates> RenewCoordinatorCertificates(
    const CoordinatorConfig& config, std::vector<std::string> server_hosts) {
  if (absl::Status status = CompleteCoordinatorKeySwaps(config.state_dir); !status.ok()) {
    return status;
  }
  absl::StatusOr<pki::CertificateAuthority> ca = LoadFederationCa(config);
  if (!ca.ok()) return ca.status();
  return ReissueCoordinatorCertificates(config, *ca, std::move(server_hosts));
}

absl::StatusOr<RenewedCertificates> ReissueCoordinatorCertificates(
    const CoordinatorConfig& config, const pki::CertificateAuthority& ca,
    std::vector<std::string> server_hosts) {
  const StateDir& dir = config.state_dir;
  if (server_hosts.empty()) {
    absl::StatusOr<pki::Certificate> old = pki::Certificate::ReadFile(dir.server_certificate());
    if (!old.ok()) return old.status();
    server_hosts = old->ServerHosts();
  }
  absl::StatusOr<CoordinatorPairs> pairs = IssueCoordinatorPairs(ca, server_hosts, config);
  if (!pairs.ok()) return pairs.status();
  if (absl::Status status = pki::ReplaceKeyPair(pairs->server_key, pairs->server, dir.server_key(),
                                                dir.server_certificate());
      !status.ok()) {
    return status;
  }
  if (absl::Status status = pki::ReplaceKeyPair(pairs->admin_key, pairs->admin, dir.admin_key(),
                                                dir.admin_certificate());
      !status.ok()) {
    return status;
  }
  return RenewedCertificates{pairs->server, pairs->admin};
}

}  // namespace fedmoe::coordinator
