// The coordinator's configuration (coordinator.yaml) and the layout of its state directory.
// Every option is documented in deploy/examples/coordinator.yaml and in the file `init` writes.
#ifndef FEDMOE_COORDINATOR_CONFIG_H_
#define FEDMOE_COORDINATOR_CONFIG_H_

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coordinator/round/round_policy.h"
#include "pki/certificate.h"
#include "pki/certificate_authority.h"

namespace fedmoe::coordinator {

// Where the coordinator keeps its state. The directory is 0700; keys inside are 0600.
struct StateDir {
  std::filesystem::path root;

  std::filesystem::path ca_certificate() const { return root / "ca.pem"; }
  std::filesystem::path ca_key() const { return root / "ca.key"; }
  // A CA rotation (coordinator/identity/ca_rotation.h): the incoming CA while the old one still
  // issues, the outgoing CA's certificate once the new one issues, and the marker of a switch
  // between the two that a crash may have interrupted.
  std::filesystem::path next_ca_certificate() const { return root / "ca-next.pem"; }
  std::filesystem::path next_ca_key() const { return root / "ca-next.key"; }
  std::filesystem::path previous_ca_certificate() const { return root / "ca-previous.pem"; }
  std::filesystem::path ca_switch_marker() const { return root / "ca-switch.pending"; }
  std::filesystem::path server_certificate() const { return root / "server.pem"; }
  std::filesystem::path server_key() const { return root / "server.key"; }
  std::filesystem::path admin_certificate() const { return root / "admin.pem"; }
  std::filesystem::path admin_key() const { return root / "admin.key"; }
  std::filesystem::path store() const { return root / "state.db"; }
  std::filesystem::path config() const { return root / "coordinator.yaml"; }
  // Published model versions, one directory each (v1, v2, ...).
  std::filesystem::path models() const { return root / "models"; }
};

struct CoordinatorConfig {
  std::string federation;
  StateDir state_dir;
  // The mTLS port: federation and admin services.
  std::string listen = "127.0.0.1:7443";
  // The server-TLS enrollment port.
  std::string enroll_listen = "127.0.0.1:7444";
  // host:port that enrolled clients are told to dial for the mTLS port; defaults to listen.
  std::string advertise;
  absl::Duration client_certificate_validity = absl::Hours(24 * 30);
  absl::Duration admin_certificate_validity = absl::Hours(24 * 90);
  absl::Duration server_certificate_validity = absl::Hours(24 * 365);
  int64_t max_message_bytes = 4 << 20;
  int64_t max_concurrent_streams = 256;
  // gRPC's memory quota for the mTLS port: read buffers and flow-control windows of every
  // connection together. Under pressure gRPC shrinks windows and reads less, so a thousand
  // clients uploading at once slow down instead of growing the coordinator.
  int64_t transport_memory_bytes = 64 << 20;
  // Masked inputs staged at once; each holds D·b/8 bytes until it is complete.
  int64_t concurrent_uploads = 4;
  absl::Duration poll_max_wait = absl::Seconds(30);
  // Polls held open at once from clients waiting for a round (coordinator/round/poll_hub.h). Each
  // holds a connection, about 100 KB; beyond this many, polls are answered at once and their
  // clients, told when to come back, close their connections while they wait. Members of the
  // open round are always held.
  int64_t parked_polls = 256;
  // How often, in all, the clients whose polls cannot be held may poll.
  double deferred_polls_per_second = 100;
  // Connections open at once on each port, and from one peer address on each port
  // (coordinator/service/listener.h); 0: no cap.
  int64_t max_connections = 4096;
  int64_t max_connections_per_peer = 64;
  // New connections per second from one peer address on the enrollment port (bursts of four
  // seconds' worth), and the bytes one enrollment connection may send in all: enrolling takes
  // a few KiB; an HTTP/2 rapid reset sends far more.
  double enrollment_connections_per_second = 5;
  int64_t enrollment_bytes_per_connection = 65536;
  // A TLS handshake not finished within this is dropped (half-open connections).
  absl::Duration handshake_timeout = absl::Seconds(10);
  // Polls one client identity may have open at once; more are refused.
  int64_t polls_per_client = 2;
  // Certificate renewals one client identity may make per hour (a daemon renews a few times a
  // month, and once per CA rotation).
  int64_t renewals_per_hour = 10;
  // Failed enrollments per minute from one peer address before its attempts are refused
  // unchecked until the minute's budget refills.
  int64_t enrollment_failures_per_minute = 10;
  absl::Duration keepalive_time = absl::Seconds(60);
  absl::Duration keepalive_timeout = absl::Seconds(20);
  std::string log_level = "info";
  // host:port of the Prometheus /metrics endpoint; empty turns it off. Loopback by default:
  // the numbers describe the federation, and the scraper usually runs beside the process.
  std::string metrics_listen = "127.0.0.1:9464";
  RoundPolicy rounds;

  // A client that polled within this window counts as online.
  absl::Duration online_window() const { return 2 * poll_max_wait; }
  std::string advertised_endpoint() const { return advertise.empty() ? listen : advertise; }

  // Reads and validates a config file; every problem is reported with its line.
  static absl::StatusOr<CoordinatorConfig> Load(const std::filesystem::path& path);
  // The file `init` writes: every option, with a comment saying what it does.
  std::string ToYaml() const;
};

struct InitOptions {
  std::string federation;
  std::filesystem::path state_dir;
  // DNS names and IP addresses the server certificate is valid for.
  std::vector<std::string> server_hosts = {"localhost", "127.0.0.1", "::1"};
  std::string listen = "127.0.0.1:7443";
  std::string enroll_listen = "127.0.0.1:7444";
  std::string advertise;
  absl::Duration ca_validity = absl::Hours(24 * 3650);
  // An existing federation CA to use instead of making one (for example from a Kubernetes
  // Secret, or an offline CA ceremony): PEM files, the key 0600. Both or neither.
  std::filesystem::path ca_certificate;
  std::filesystem::path ca_key;
};

struct InitResult {
  CoordinatorConfig config;
  std::string ca_fingerprint;
};

// Creates a new federation's state directory: the CA, the server and admin certificates, the
// store and a commented coordinator.yaml. Refuses a directory that already holds a CA.
absl::StatusOr<InitResult> InitStateDir(const InitOptions& options);

// A CA from two PEM files (the key 0600). InvalidArgument when the key does not match the
// certificate or the CA is not `federation`'s.
absl::StatusOr<pki::CertificateAuthority> LoadCaFiles(const std::filesystem::path& certificate_path,
                                                      const std::filesystem::path& key_path,
                                                      const std::string& federation);

// The CA given as --ca-cert and --ca-key (an offline ceremony, a Kubernetes Secret), or a new
// one valid for `validity` when neither is given. InvalidArgument for one without the other.
absl::StatusOr<pki::CertificateAuthority> NewOrGivenCa(const std::string& federation,
                                                       const std::filesystem::path& certificate,
                                                       const std::filesystem::path& key,
                                                       absl::Duration validity);

// The federation CA in the state directory; FailedPrecondition when it is another
// federation's than the config's.
absl::StatusOr<pki::CertificateAuthority> LoadFederationCa(const CoordinatorConfig& config);

// Finishes (or discards) a replacement of the server or admin key pair that a crash
// interrupted (pki/key_pair_files.h). Run before either pair is read.
absl::Status CompleteCoordinatorKeySwaps(const StateDir& dir);

struct RenewedCertificates {
  pki::Certificate server;
  pki::Certificate admin;
};

// Issues the coordinator's server and admin certificates again, each with a new key, from the
// federation CA in `config`'s state directory, valid for server_validity and admin_validity
// from now. The server certificate names `server_hosts`, or the old one's names when empty.
// Each pair is replaced crash-safely (pki/key_pair_files.h). The admin pair works at once; a
// running coordinator serves the new server certificate from its next start.
absl::StatusOr<RenewedCertificates> RenewCoordinatorCertificates(
    const CoordinatorConfig& config, std::vector<std::string> server_hosts);
// The same from a given CA: the CA rotation's switch issues both pairs from the new CA.
absl::StatusOr<RenewedCertificates> ReissueCoordinatorCertificates(
    const CoordinatorConfig& config, const pki::CertificateAuthority& ca,
    std::vector<std::string> server_hosts);

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_CONFIG_H_
