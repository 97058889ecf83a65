#include "coordinator/admin_channel.h"

#include <grpcpp/grpcpp.h>

#include "coordinator/ca_rotation.h"
#include "pki/certificate.h"
#include "pki/private_key.h"

namespace fedmoe::coordinator {

absl::StatusOr<std::unique_ptr<v1::Admin::Stub>> DialAdmin(const CoordinatorConfig& config,
                                                           std::string address) {
  const StateDir& dir = config.state_dir;
  // Every CA of a rotation: the server certificate may come from either.
  absl::StatusOr<pki::TrustBundle> trusted = LoadTrustedCas(config);
  if (!trusted.ok()) return trusted.status();
  absl::StatusOr<pki::Certificate> certificate =
      pki::Certificate::ReadFile(dir.admin_certificate());
  if (!certificate.ok()) return certificate.status();
  absl::StatusOr<pki::PrivateKey> key = pki::PrivateKey::ReadFile(dir.admin_key());
  if (!key.ok()) return key.status();
  absl::StatusOr<std::string> key_pem = key->ToPem();
  if (!key_pem.ok()) return key_pem.status();

  if (address.empty()) address = config.listen;
  for (const char* wildcard : {"0.0.0.0:", "[::]:"}) {
    if (address.rfind(wildcard, 0) == 0) {
      address = "127.0.0.1:" + address.substr(std::string(wildcard).size());
    }
  }
  grpc::SslCredentialsOptions tls;
  tls.pem_root_certs = trusted->ToPem();
  tls.pem_private_key = *key_pem;
  tls.pem_cert_chain = certificate->ToPem();
  return v1::Admin::NewStub(grpc::CreateChannel(address, grpc::SslCredentials(tls)));
}

}  // namespace fedmoe::coordinator
