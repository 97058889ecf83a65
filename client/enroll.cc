#include "client/enroll.h"

#include <grpcpp/grpcpp.h>
#include <sys/stat.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/coordinator_channel.h"
#include "client/grpc_status.h"
#include "client/tls_probe.h"
#include "config/address.h"
#include "fedmoe/v1/enrollment.grpc.pb.h"
#include "logging/log.h"
#include "pki/certificate_authority.h"
#include "pki/private_key.h"
#include "storage/atomic_file.h"
#include "storage/file_status.h"

namespace fedmoe::client {
namespace {

absl::Status MakeStateDir(const std::filesystem::path& dir) {
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create state directory ", dir.string(), ": ", error.message()));
  }
  ::chmod(dir.c_str(), 0700);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<pki::Certificate> SelectPinnedCa(const std::vector<pki::Certificate>& chain,
                                                const std::string& fingerprint,
                                                const std::string& host) {
  absl::StatusOr<std::string> pinned = pki::NormalizeFingerprint(fingerprint);
  if (!pinned.ok()) return pinned.status();
  std::vector<std::string> seen;
  for (const pki::Certificate& certificate : chain) {
    const std::string candidate = certificate.Sha256Fingerprint();
    if (!pki::FingerprintsEqual(candidate, *pinned)) {
      seen.push_back(candidate);
      continue;
    }
    absl::StatusOr<std::string> federation = pki::CaFederation(certificate);
    if (!federation.ok()) {
      return absl::PermissionDeniedError(absl::StrCat(
          "the certificate with the pinned fingerprint is not a fedmoe federation CA: ",
          federation.status().message()));
    }
    absl::StatusOr<pki::SpiffeId> server =
        pki::VerifyPeer(chain.front(), certificate, *federation, pki::Purpose::kServer);
    if (!server.ok()) {
      return absl::PermissionDeniedError(absl::StrCat(
          "the server certificate is not valid under the pinned CA: ", server.status().message()));
    }
    if (!pki::CertificateMatchesHost(chain.front(), host)) {
      return absl::PermissionDeniedError(
          absl::StrCat("the server certificate is not valid for '", host,
                       "'; dial a name or address given to `fedmoe-coordinator init --san`"));
    }
    return certificate;
  }
  return absl::PermissionDeniedError(absl::StrCat(
      "refusing the coordinator: its certificate chain does not include the CA with the pinned "
      "fingerprint ",
      *pinned, " (it presented ", absl::StrJoin(seen, ", "), ")"));
}

absl::StatusOr<ClientConfig> Enroll(const EnrollOptions& options) {
  const ClientStateDir dir{std::filesystem::absolute(options.state_dir)};
  if (storage::PathExists(dir.key())) {
    return absl::FailedPreconditionError(absl::StrCat(
        dir.root.string(), " already holds an enrolled client; use a fresh --state-dir"));
  }
  absl::StatusOr<config::HostPort> parts = config::ParseHostPort(options.coordinator);
  if (!parts.ok()) return parts.status();
  const std::string& host = parts->host;

  absl::StatusOr<std::vector<pki::Certificate>> chain =
      FetchServerChain(options.coordinator, options.timeout);
  if (!chain.ok()) return chain.status();
  absl::StatusOr<pki::Certificate> ca = SelectPinnedCa(*chain, options.ca_fingerprint, host);
  if (!ca.ok()) return ca.status();

  absl::StatusOr<pki::PrivateKey> key = pki::PrivateKey::GenerateP256();
  if (!key.ok()) return key.status();
  absl::StatusOr<std::string> csr = pki::MakeCsr(*key, "fedmoe-client");
  if (!csr.ok()) return csr.status();

  grpc::SslCredentialsOptions tls;
  tls.pem_root_certs = ca->ToPem();
  auto stub =
      v1::Enrollment::NewStub(grpc::CreateChannel(options.coordinator, grpc::SslCredentials(tls)));
  v1::EnrollRequest request;
  request.set_token(options.token);
  request.set_csr_der(*csr);
  request.set_client_version(FEDMOE_VERSION);
  v1::EnrollResponse response;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + absl::ToChronoSeconds(options.timeout));
  if (grpc::Status status = stub->Enroll(&context, request, &response); !status.ok()) {
    return FromGrpc(status, "the coordinator refused enrollment");
  }

  // The reply must be a certificate for this key, of this federation, under the pinned CA.
  absl::StatusOr<pki::Certificate> certificate =
      pki::Certificate::FromDer(response.certificate().certificate_der());
  if (!certificate.ok()) return certificate.status();
  if (response.certificate().ca_certificate_der() != ca->ToDer()) {
    return absl::PermissionDeniedError(
        "the coordinator returned a different CA than the pinned one");
  }
  if (certificate->PublicKeyDer() != *key->PublicKeyDer()) {
    return absl::PermissionDeniedError("the issued certificate is not for this client's key");
  }
  absl::StatusOr<pki::SpiffeId> identity =
      pki::VerifyPeer(*certificate, *ca, response.federation(), pki::Purpose::kClient);
  if (!identity.ok()) return identity.status();
  if (identity->kind != pki::IdentityKind::kClient || identity->name != response.client_id()) {
    return absl::PermissionDeniedError(absl::StrCat("the issued certificate names ",
                                                    identity->ToUri(), ", not client '",
                                                    response.client_id(), "'"));
  }

  absl::StatusOr<std::optional<pki::TrustBundle>> received = ReceivedTrustBundle(
      response.trusted_ca_certificates_der(), *certificate, response.federation());
  if (!received.ok()) return received.status();
  absl::StatusOr<pki::TrustBundle> trust =
      received->has_value() ? **std::move(received)
                            : pki::TrustBundle::Create({*ca}, response.federation());
  if (!trust.ok()) return trust.status();
  if (!trust->Contains(ca->Sha256Fingerprint())) {
    return absl::PermissionDeniedError(
        "the coordinator's trust bundle leaves out the pinned CA it presented");
  }

  ClientConfig config;
  config.client_id = response.client_id();
  config.federation = response.federation();
  config.coordinator = response.federation_endpoint();
  // A wildcard or empty advertised address is reached at the host the client enrolled with.
  absl::StatusOr<config::HostPort> advertised = config::ParseHostPort(config.coordinator);
  if (!advertised.ok()) {
    config.coordinator = host + ":7443";
  } else if (advertised->host == "0.0.0.0" || advertised->host == "::") {
    config.coordinator = absl::StrCat(host, ":", advertised->port);
  }
  config.state_dir = dir;
  if (!options.data.empty()) config.data = std::filesystem::absolute(options.data);

  using std::filesystem::perms;
  if (absl::Status status = MakeStateDir(dir.root); !status.ok()) return status;
  for (absl::Status status :
       {key->WriteFile(dir.key()), certificate->WriteFile(dir.certificate()),
        trust->WriteFile(dir.ca_certificate()),
        storage::WriteFileAtomically(dir.config(), config.ToYaml(),
                                     perms::owner_read | perms::owner_write)}) {
    if (!status.ok()) return status;
  }
  LogEvent(LogLevel::kInfo, "enrolled")
      .Field("client_id", config.client_id)
      .Field("federation", config.federation)
      .Field("coordinator", config.coordinator)
      .Field("serial", certificate->SerialHex())
      .Field("not_after", absl::FormatTime(certificate->NotAfter()));
  return config;
}

}  // namespace fedmoe::client
