#include "coordinator/service/admin_channel.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "coordinator/identity/ca_rotation.h"
#include "storage/atomic_file.h"
#include "storage/read_file.h"

namespace fedmoe::coordinator {
namespace {

absl::StatusOr<std::unique_ptr<v1::Admin::Stub>> Dial(const pki::TrustBundle& trusted,
                                                      const std::filesystem::path& certificate_path,
                                                      const std::filesystem::path& key_path,
                                                      std::string address) {
  absl::StatusOr<pki::Certificate> certificate = pki::Certificate::ReadFile(certificate_path);
  if (!certificate.ok()) return certificate.status();
  absl::StatusOr<pki::PrivateKey> key = pki::PrivateKey::ReadFile(key_path);
  if (!key.ok()) return key.status();
  absl::StatusOr<std::string> key_pem = key->ToPem();
  if (!key_pem.ok()) return key_pem.status();
  for (const char* wildcard : {"0.0.0.0:", "[::]:"}) {
    if (address.rfind(wildcard, 0) == 0) {
      address = "127.0.0.1:" + address.substr(std::string(wildcard).size());
    }
  }
  grpc::SslCredentialsOptions tls;
  tls.pem_root_certs = trusted.ToPem();
  tls.pem_private_key = *key_pem;
  tls.pem_cert_chain = certificate->ToPem();
  return v1::Admin::NewStub(grpc::CreateChannel(address, grpc::SslCredentials(tls)));
}

}  // namespace

absl::StatusOr<std::string> ReadAdminAddress(const AdminCredentials& credentials) {
  absl::StatusOr<std::string> written = storage::ReadSmallFile(credentials.address(), 1024);
  if (!written.ok()) return written.status();
  return std::string(absl::StripAsciiWhitespace(*written));
}

absl::Status WriteAdminCredentials(const AdminCredentials& credentials, const pki::PrivateKey& key,
                                   const pki::Certificate& certificate,
                                   const pki::TrustBundle& trusted, const std::string& address) {
  std::error_code error;
  std::filesystem::create_directories(credentials.dir, error);
  if (error) {
    return absl::InternalError(
        absl::StrCat("cannot create ", credentials.dir.string(), ": ", error.message()));
  }
  absl::StatusOr<std::string> key_pem = key.ToPem();
  if (!key_pem.ok()) return key_pem.status();
  using std::filesystem::perms;
  const perms readable =
      perms::owner_read | perms::owner_write | perms::group_read | perms::others_read;
  if (absl::Status status = storage::WriteFileAtomically(credentials.key(), *key_pem,
                                                         perms::owner_read | perms::owner_write);
      !status.ok()) {
    return status;
  }
  if (absl::Status status =
          storage::WriteFileAtomically(credentials.certificate(), certificate.ToPem(), readable);
      !status.ok()) {
    return status;
  }
  if (absl::Status status =
          storage::WriteFileAtomically(credentials.trusted_cas(), trusted.ToPem(), readable);
      !status.ok()) {
    return status;
  }
  return storage::WriteFileAtomically(credentials.address(), absl::StrCat(address, "\n"), readable);
}

absl::StatusOr<std::unique_ptr<v1::Admin::Stub>> DialAdmin(const AdminCredentials& credentials,
                                                           std::string address) {
  if (address.empty()) {
    absl::StatusOr<std::string> written = ReadAdminAddress(credentials);
    if (!written.ok()) return written.status();
    address = *std::move(written);
  }
  // The CAs are those of the admin certificate's own federation.
  absl::StatusOr<pki::Certificate> certificate =
      pki::Certificate::ReadFile(credentials.certificate());
  if (!certificate.ok()) return certificate.status();
  absl::StatusOr<pki::SpiffeId> id = certificate->Identity();
  if (!id.ok()) return id.status();
  absl::StatusOr<pki::TrustBundle> trusted =
      pki::TrustBundle::ReadFile(credentials.trusted_cas(), id->federation);
  if (!trusted.ok()) return trusted.status();
  return Dial(*trusted, credentials.certificate(), credentials.key(), std::move(address));
}

absl::StatusOr<std::unique_ptr<v1::Admin::Stub>> DialAdmin(const CoordinatorConfig& config,
                                                           std::string address) {
  // Every CA of a rotation: the server certificate may come from either.
  absl::StatusOr<pki::TrustBundle> trusted = LoadTrustedCas(config);
  if (!trusted.ok()) return trusted.status();
  if (address.empty()) address = config.listen;
  return Dial(*trusted, config.state_dir.admin_certificate(), config.state_dir.admin_key(),
              std::move(address));
}

}  // namespace fedmoe::coordinator
