// `fedmoe-client enroll`: join a federation with a one-time token.
//
// The client trusts nothing but the CA fingerprint its operator received out of band. Before it
// sends the token, it opens a TLS 1.3 connection to the enrollment port, takes the chain the
// server presents, and accepts the server only if that chain ends at a CA certificate with the
// pinned SHA-256 fingerprint and the server certificate is valid for the dialled host under
// it. Then it makes its key pair locally, sends a CSR with the token, checks that the
// certificate it gets back is for its own key and identity, and writes its state directory.
#ifndef FEDMOE_CLIENT_ENROLL_H_
#define FEDMOE_CLIENT_ENROLL_H_

#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/client_config.h"
#include "pki/certificate.h"

namespace fedmoe::client {

struct EnrollOptions {
  // host:port of the coordinator's enrollment port.
  std::string coordinator;
  std::string token;
  std::string ca_fingerprint;
  std::filesystem::path state_dir;
  // Written into client.yaml as training.data; may be empty.
  std::filesystem::path data;
  absl::Duration timeout = absl::Seconds(20);
};

absl::StatusOr<ClientConfig> Enroll(const EnrollOptions& options);

// Finds the CA with the pinned fingerprint in `chain` and checks that the leaf is a server
// certificate of that CA, valid for `host`. Returns the CA.
absl::StatusOr<pki::Certificate> SelectPinnedCa(const std::vector<pki::Certificate>& chain,
                                                const std::string& fingerprint,
                                                const std::string& host);

}  // namespace fedmoe::client

#endif  // FEDMOE_CLIENT_ENROLL_H_
