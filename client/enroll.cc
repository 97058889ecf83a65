#include "client/enroll.h"

#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "config/address.h"
#include "fedmoe/v1/enrollment.grpc.pb.h"
#include "logging/log.h"
#include "pki/certificate_authority.h"
#include "pki/private_key.h"

namespace fedmoe::client {
namespace {

struct SslCtxDeleter {
  void operator()(SSL_CTX* context) const { SSL_CTX_free(context); }
};
struct SslDeleter {
  void operator()(SSL* ssl) const { SSL_free(ssl); }
};

// A connected TCP socket, closed on destruction.
class Socket {
 public:
  explicit Socket(int fd) : fd_(fd) {}
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  ~Socket() {
    if (fd_ >= 0) ::close(fd_);
  }
  int fd() const { return fd_; }

 private:
  int fd_;
};

absl::StatusOr<int> Connect(const std::string& host, const std::string& port,
                            absl::Duration timeout) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* addresses = nullptr;
  if (const int error = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &addresses); error != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot resolve ", host, ": ", ::gai_strerror(error)));
  }
  std::string last_error = "no address";
  int connected = -1;
  for (addrinfo* address = addresses; address != nullptr; address = address->ai_next) {
    const int fd = ::socket(address->ai_family, address->ai_socktype, address->ai_protocol);
    if (fd < 0) continue;
    timeval tv{};
    tv.tv_sec = absl::ToInt64Seconds(timeout);
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (::connect(fd, address->ai_addr, address->ai_addrlen) == 0) {
      connected = fd;
      break;
    }
    last_error = std::strerror(errno);
    ::close(fd);
  }
  ::freeaddrinfo(addresses);
  if (connected < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot connect to ", host, ":", port, ": ", last_error));
  }
  return connected;
}

std::string OpenSslErrorText() {
  const unsigned long error = ERR_get_error();
  ERR_clear_error();
  if (error == 0) return "connection closed during the handshake";
  char text[256];
  ERR_error_string_n(error, text, sizeof(text));
  return text;
}

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

absl::StatusOr<std::vector<pki::Certificate>> FetchServerChain(const std::string& address,
                                                               absl::Duration timeout) {
  absl::StatusOr<config::HostPort> parts = config::ParseHostPort(address);
  if (!parts.ok()) return parts.status();
  const auto& [host, port] = *parts;
  absl::StatusOr<int> fd = Connect(host, port, timeout);
  if (!fd.ok()) return fd.status();
  Socket socket(*fd);

  std::unique_ptr<SSL_CTX, SslCtxDeleter> context(SSL_CTX_new(TLS_client_method()));
  if (context == nullptr || SSL_CTX_set_min_proto_version(context.get(), TLS1_3_VERSION) != 1) {
    return absl::InternalError(absl::StrCat("TLS setup: ", OpenSslErrorText()));
  }
  // Verification happens against the pinned fingerprint once the chain is in hand.
  SSL_CTX_set_verify(context.get(), SSL_VERIFY_NONE, nullptr);
  std::unique_ptr<SSL, SslDeleter> ssl(SSL_new(context.get()));
  static constexpr unsigned char kAlpnH2[] = {2, 'h', '2'};
  SSL_set_alpn_protos(ssl.get(), kAlpnH2, sizeof(kAlpnH2));
  // SNI carries names only, never IP literals (RFC 6066).
  unsigned char ip[16];
  if (inet_pton(AF_INET, host.c_str(), ip) != 1 && inet_pton(AF_INET6, host.c_str(), ip) != 1) {
    SSL_ctrl(ssl.get(), SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
             const_cast<char*>(host.c_str()));
  }
  SSL_set_fd(ssl.get(), socket.fd());
  if (SSL_connect(ssl.get()) != 1) {
    return absl::UnavailableError(
        absl::StrCat("TLS 1.3 handshake with ", address, " failed: ", OpenSslErrorText()));
  }
  STACK_OF(X509)* presented = SSL_get_peer_cert_chain(ssl.get());
  std::vector<pki::Certificate> chain;
  for (int i = 0; presented != nullptr && i < sk_X509_num(presented); ++i) {
    X509* certificate = sk_X509_value(presented, i);
    X509_up_ref(certificate);
    chain.push_back(pki::Certificate::Adopt(pki::internal::X509Ptr(certificate)));
  }
  SSL_shutdown(ssl.get());
  if (chain.empty()) {
    return absl::UnavailableError(absl::StrCat(address, " presented no certificate"));
  }
  return chain;
}

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
  if (std::filesystem::exists(dir.key())) {
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
    return absl::Status(
        static_cast<absl::StatusCode>(status.error_code()),
        absl::StrCat("the coordinator refused enrollment: ", status.error_message()));
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

  using std::filesystem::perms;
  if (absl::Status status = MakeStateDir(dir.root); !status.ok()) return status;
  for (absl::Status status : {key->WriteFile(dir.key()), certificate->WriteFile(dir.certificate()),
                              ca->WriteFile(dir.ca_certificate()),
                              pki::WriteFileAtomically(dir.config(), config.ToYaml(),
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
