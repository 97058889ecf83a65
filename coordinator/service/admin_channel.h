// The operator's mutual-TLS channel to a running coordinator, authenticated with the admin
// certificate that `init` wrote into the state directory, or with one that `admins add` wrote
// for another operator. Used by the admin commands and by bench/federation, which enrolls its
// simulated fleet through it.
#ifndef FEDMOE_COORDINATOR_SERVICE_ADMIN_CHANNEL_H_
#define FEDMOE_COORDINATOR_SERVICE_ADMIN_CHANNEL_H_

#include <filesystem>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "coordinator/config.h"
#include "fedmoe/v1/admin.grpc.pb.h"
#include "pki/certificate.h"
#include "pki/private_key.h"
#include "pki/trust_bundle.h"

namespace fedmoe::coordinator {

// The directory `admins add --out DIR` fills for another operator.
struct AdminCredentials {
  std::filesystem::path dir;

  std::filesystem::path certificate() const { return dir / "admin.pem"; }
  // 0600.
  std::filesystem::path key() const { return dir / "admin.key"; }
  // Every CA the coordinator's server certificate may come from.
  std::filesystem::path trusted_cas() const { return dir / "trusted-cas.pem"; }
  // One line, HOST:PORT of the mTLS port.
  std::filesystem::path address() const { return dir / "coordinator-address"; }
};

// The coordinator address written into the credentials directory.
absl::StatusOr<std::string> ReadAdminAddress(const AdminCredentials& credentials);

// Writes `credentials`' files: the key first (0600), the address last.
absl::Status WriteAdminCredentials(const AdminCredentials& credentials, const pki::PrivateKey& key,
                                   const pki::Certificate& certificate,
                                   const pki::TrustBundle& trusted, const std::string& address);

// `address` defaults to the one in the credentials directory.
absl::StatusOr<std::unique_ptr<v1::Admin::Stub>> DialAdmin(const AdminCredentials& credentials,
                                                           std::string address = "");

// `address` defaults to config.listen; a wildcard bind is reached through loopback.
absl::StatusOr<std::unique_ptr<v1::Admin::Stub>> DialAdmin(const CoordinatorConfig& config,
                                                           std::string address = "");

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_SERVICE_ADMIN_CHANNEL_H_
