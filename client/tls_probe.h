// Direct TLS connections to the coordinator with OpenSSL, outside gRPC: to read the chain a
// server presents before trusting it (enrollment), and to say why the coordinator refuses a
// connection when gRPC only reports "unavailable" (the TLS alert names the reason).
#ifndef FEDMOE_CLIENT_TLS_PROBE_H_
#define FEDMOE_CLIENT_TLS_PROBE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "pki/certificate.h"
#include "pki/private_key.h"

namespace fedmoe::client {

// Connects with TLS 1.3 and returns the certificate chain the server presents, leaf first.
// Nothing is verified here: the caller decides what to trust.
absl::StatusOr<std::vector<pki::Certificate>> FetchServerChain(const std::string& address,
                                                               absl::Duration timeout);

// Opens a mutual-TLS 1.3 connection as the gRPC channel would, and waits briefly for the
// server's verdict on the client certificate (TLS 1.3 sends it after the handshake). OK when
// the server keeps the connection; otherwise an error carrying the server's alert, such as
// "certificate required" or "unknown ca". `certificate` and `key` may both be null to probe
// without a client certificate.
absl::Status ProbeMutualTls(const std::string& address, const pki::Certificate* certificate,
                            const pki::PrivateKey* key, absl::Duration timeout);

}  // namespace fedmoe::client

#endif  // FEDMOE_CLIENT_TLS_PROBE_H_
