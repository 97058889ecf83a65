#include "client/tls_probe.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "config/address.h"

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

absl::StatusOr<int> Connect(const config::HostPort& address, absl::Duration timeout) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* addresses = nullptr;
  if (const int error =
          ::getaddrinfo(address.host.c_str(), address.port.c_str(), &hints, &addresses);
      error != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot resolve ", address.host, ": ", ::gai_strerror(error)));
  }
  std::string last_error = "no address";
  int connected = -1;
  for (addrinfo* candidate = addresses; candidate != nullptr; candidate = candidate->ai_next) {
    const int fd = ::socket(candidate->ai_family, candidate->ai_socktype, candidate->ai_protocol);
    if (fd < 0) continue;
    timeval tv{};
    tv.tv_sec = std::max<int64_t>(1, absl::ToInt64Seconds(timeout));
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (::connect(fd, candidate->ai_addr, candidate->ai_addrlen) == 0) {
      connected = fd;
      break;
    }
    last_error = std::strerror(errno);
    ::close(fd);
  }
  ::freeaddrinfo(addresses);
  if (connected < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot connect to ", address.host, ":", address.port, ": ", last_error));
  }
  return connected;
}

std::string OpenSslErrorText() {
  const unsigned long error = ERR_get_error();
  ERR_clear_error();
  if (error == 0) return "the connection closed";
  char text[256];
  ERR_error_string_n(error, text, sizeof(text));
  // "error:0A00045C:SSL routines::tlsv13 alert certificate required" → the reason alone.
  std::string reason = text;
  if (const size_t colon = reason.rfind(':'); colon != std::string::npos) {
    reason = reason.substr(colon + 1);
  }
  return reason;
}

// A TLS 1.3 session over a fresh socket, as gRPC would open it (ALPN h2, SNI for names).
struct TlsSession {
  std::unique_ptr<Socket> socket;
  std::unique_ptr<SSL_CTX, SslCtxDeleter> context;
  std::unique_ptr<SSL, SslDeleter> ssl;
};

absl::StatusOr<TlsSession> OpenTls(const std::string& address, absl::Duration timeout,
                                   const pki::Certificate* certificate,
                                   const pki::PrivateKey* key) {
  absl::StatusOr<config::HostPort> parts = config::ParseHostPort(address);
  if (!parts.ok()) return parts.status();
  absl::StatusOr<int> fd = Connect(*parts, timeout);
  if (!fd.ok()) return fd.status();
  TlsSession session;
  session.socket = std::make_unique<Socket>(*fd);
  session.context.reset(SSL_CTX_new(TLS_client_method()));
  if (session.context == nullptr ||
      SSL_CTX_set_min_proto_version(session.context.get(), TLS1_3_VERSION) != 1) {
    return absl::InternalError(absl::StrCat("TLS setup: ", OpenSslErrorText()));
  }
  // Nothing is verified during the handshake; callers check what the server presented.
  SSL_CTX_set_verify(session.context.get(), SSL_VERIFY_NONE, nullptr);
  if (certificate != nullptr && key != nullptr &&
      (SSL_CTX_use_certificate(session.context.get(), certificate->get()) != 1 ||
       SSL_CTX_use_PrivateKey(session.context.get(), key->get()) != 1)) {
    return absl::InternalError(absl::StrCat("TLS client identity: ", OpenSslErrorText()));
  }
  session.ssl.reset(SSL_new(session.context.get()));
  static constexpr unsigned char kAlpnH2[] = {2, 'h', '2'};
  SSL_set_alpn_protos(session.ssl.get(), kAlpnH2, sizeof(kAlpnH2));
  // SNI carries names only, never IP literals (RFC 6066).
  unsigned char ip[16];
  const std::string& host = parts->host;
  if (inet_pton(AF_INET, host.c_str(), ip) != 1 && inet_pton(AF_INET6, host.c_str(), ip) != 1) {
    SSL_ctrl(session.ssl.get(), SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
             const_cast<char*>(host.c_str()));
  }
  SSL_set_fd(session.ssl.get(), session.socket->fd());
  if (SSL_connect(session.ssl.get()) != 1) {
    return absl::UnavailableError(
        absl::StrCat("TLS 1.3 handshake with ", address, " failed: ", OpenSslErrorText()));
  }
  return session;
}

}  // namespace

absl::StatusOr<std::vector<pki::Certificate>> FetchServerChain(const std::string& address,
                                                               absl::Duration timeout) {
  absl::StatusOr<TlsSession> session = OpenTls(address, timeout, nullptr, nullptr);
  if (!session.ok()) return session.status();
  STACK_OF(X509)* presented = SSL_get_peer_cert_chain(session->ssl.get());
  std::vector<pki::Certificate> chain;
  for (int i = 0; presented != nullptr && i < sk_X509_num(presented); ++i) {
    X509* certificate = sk_X509_value(presented, i);
    X509_up_ref(certificate);
    chain.push_back(pki::Certificate::Adopt(pki::internal::X509Ptr(certificate)));
  }
  SSL_shutdown(session->ssl.get());
  if (chain.empty()) {
    return absl::UnavailableError(absl::StrCat(address, " presented no certificate"));
  }
  return chain;
}

absl::Status ProbeMutualTls(const std::string& address, const pki::Certificate* certificate,
                            const pki::PrivateKey* key, absl::Duration timeout) {
  absl::StatusOr<TlsSession> session = OpenTls(address, timeout, certificate, key);
  if (!session.ok()) return session.status();
  // In TLS 1.3 the server judges the client certificate after the client's handshake ends; a
  // refusal arrives as an alert on the first read. A server that accepts us waits for the
  // HTTP/2 preface instead, so the read times out: that is the good outcome.
  timeval tv{};
  tv.tv_usec = 500'000;
  ::setsockopt(session->socket->fd(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  char byte;
  const int read = SSL_read(session->ssl.get(), &byte, 1);
  if (read > 0) return absl::OkStatus();
  const int error = SSL_get_error(session->ssl.get(), read);
  if (error == SSL_ERROR_WANT_READ ||
      (error == SSL_ERROR_SYSCALL && (errno == EAGAIN || errno == EWOULDBLOCK))) {
    ERR_clear_error();
    return absl::OkStatus();  // Still connected when the read timed out: accepted.
  }
  // An alert names the reason; a server that just hangs up (gRPC does) leaves only the fact.
  const std::string reason = OpenSslErrorText();
  const bool alert = reason.find("alert") != std::string::npos;
  return absl::PermissionDeniedError(
      absl::StrCat("the coordinator at ", address,
                   " closed the connection after the TLS handshake: it did not accept ",
                   certificate == nullptr ? "a connection without a client certificate"
                                          : "this client's certificate",
                   alert ? absl::StrCat(" (", reason, ")") : ""));
}

}  // namespace fedmoe::client
