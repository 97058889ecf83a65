#include "coordinator/service/listener.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/tcp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "logging/log.h"

namespace fedmoe::coordinator {
namespace {

constexpr absl::Duration kSweepInterval = absl::Milliseconds(100);
// Under a byte budget a connection is checked more often: what it sends between two checks is
// past the budget (an attacker writes about 1 MB/s per connection).
constexpr absl::Duration kBudgetSweepInterval = absl::Milliseconds(20);
// After a failed accept for lack of descriptors, how long the port waits before the next try:
// it sheds one waiting connection per try, and does not spin.
constexpr absl::Duration kExhaustedBackoff = absl::Milliseconds(50);
// A burst of this many seconds' worth of new connections is allowed from one peer.
constexpr double kConnectionBurstSeconds = 4;

std::string PeerAddress(const sockaddr_storage& address) {
  char text[INET6_ADDRSTRLEN] = {};
  if (address.ss_family == AF_INET) {
    const auto* v4 = reinterpret_cast<const sockaddr_in*>(&address);
    inet_ntop(AF_INET, &v4->sin_addr, text, sizeof(text));
  } else if (address.ss_family == AF_INET6) {
    const auto* v6 = reinterpret_cast<const sockaddr_in6*>(&address);
    if (IN6_IS_ADDR_V4MAPPED(&v6->sin6_addr)) {
      // An IPv4 peer on a dual-stack socket is the same peer as on an IPv4 socket.
      inet_ntop(AF_INET, &v6->sin6_addr.s6_addr[12], text, sizeof(text));
    } else {
      inet_ntop(AF_INET6, &v6->sin6_addr, text, sizeof(text));
    }
  } else {
    return "unknown";
  }
  return text;
}

ino_t SocketInode(int fd) {
  struct stat info {};
  if (fstat(fd, &info) != 0 || !S_ISSOCK(info.st_mode)) return 0;
  return info.st_ino;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Listener>> Listener::Bind(std::string name,
                                                         const std::string& address,
                                                         ListenerLimits limits) {
  const size_t colon = address.rfind(':');
  int port = -1;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("\"", address, "\" is not host:port"));
  }
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* resolved = nullptr;
  if (const int error = getaddrinfo(host.empty() ? nullptr : host.c_str(), "0", &hints, &resolved);
      error != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot resolve \"", host, "\": ", gai_strerror(error)));
  }
  bool has_ipv4 = false;
  for (const addrinfo* info = resolved; info != nullptr; info = info->ai_next) {
    has_ipv4 = has_ipv4 || info->ai_family == AF_INET;
  }
  std::vector<int> fds;
  std::string last_error;
  for (const addrinfo* info = resolved; info != nullptr; info = info->ai_next) {
    if (info->ai_family != AF_INET && info->ai_family != AF_INET6) continue;
    const int fd = socket(info->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      last_error = std::strerror(errno);
      continue;
    }
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (info->ai_family == AF_INET6) {
      // "::" alone serves IPv4 too; beside an IPv4 address of its own it must not.
      const int v6_only = has_ipv4 ? 1 : 0;
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6_only, sizeof(v6_only));
    }
    sockaddr_storage bound{};
    std::memcpy(&bound, info->ai_addr, info->ai_addrlen);
    // Every address gets the port the first one got when port 0 asked for a free one.
    if (bound.ss_family == AF_INET) {
      reinterpret_cast<sockaddr_in*>(&bound)->sin_port = htons(static_cast<uint16_t>(port));
    } else {
      reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port = htons(static_cast<uint16_t>(port));
    }
    if (bind(fd, reinterpret_cast<const sockaddr*>(&bound), info->ai_addrlen) != 0 ||
        listen(fd, SOMAXCONN) != 0) {
      last_error = std::strerror(errno);
      close(fd);
      continue;
    }
    if (port == 0) {
      sockaddr_storage local{};
      socklen_t length = sizeof(local);
      getsockname(fd, reinterpret_cast<sockaddr*>(&local), &length);
      port = ntohs(local.ss_family == AF_INET
                       ? reinterpret_cast<const sockaddr_in*>(&local)->sin_port
                       : reinterpret_cast<const sockaddr_in6*>(&local)->sin6_port);
    }
    fds.push_back(fd);
  }
  freeaddrinfo(resolved);
  if (fds.empty()) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", address, ": ",
                                               last_error.empty() ? "no address" : last_error));
  }
  return std::unique_ptr<Listener>(new Listener(std::move(name), std::move(fds), port, limits));
}

Listener::Listener(std::string name, std::vector<int> fds, int port, ListenerLimits limits)
    : name_(std::move(name)),
      listen_fds_(std::move(fds)),
      port_(port),
      limits_(limits),
      connection_rate_(limits.connections_per_second_per_peer,
                       limits.connections_per_second_per_peer * kConnectionBurstSeconds),
      refusal_log_(absl::Seconds(10)) {
  spare_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
}

Listener::~Listener() {
  Stop();
  if (spare_fd_ >= 0) close(spare_fd_);
  if (wake_fd_ >= 0) close(wake_fd_);
}

void Listener::Start(std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> acceptor,
                     std::function<void(bool)> on_accepting_changed) {
  acceptor_ = std::move(acceptor);
  on_accepting_changed_ = std::move(on_accepting_changed);
  thread_ = std::thread([this] { AcceptLoop(); });
}

void Listener::Stop() {
  if (stopping_.exchange(true)) return;
  if (thread_.joinable()) {
    const uint64_t one = 1;
    if (write(wake_fd_, &one, sizeof(one)) < 0) {
      // The loop still sees `stopping_` within one sweep interval.
    }
    thread_.join();
  }
  for (const int fd : listen_fds_) close(fd);
}

void Listener::AcceptLoop() {
  const absl::Duration sweep_interval =
      limits_.bytes_per_connection > 0 ? kBudgetSweepInterval : kSweepInterval;
  absl::Time next_sweep = absl::Now() + sweep_interval;
  absl::Time resume_at = absl::InfinitePast();
  std::vector<pollfd> polled;
  while (!stopping_.load()) {
    const absl::Time now = absl::Now();
    polled.clear();
    polled.push_back({wake_fd_, POLLIN, 0});
    const bool backing_off = now < resume_at;
    if (!backing_off) {
      for (const int fd : listen_fds_) polled.push_back({fd, POLLIN, 0});
    }
    const absl::Time wake_at = backing_off ? std::min(resume_at, next_sweep) : next_sweep;
    const int timeout_ms =
        static_cast<int>(std::max<int64_t>(1, absl::ToInt64Milliseconds(wake_at - now) + 1));
    poll(polled.data(), polled.size(), timeout_ms);
    if (stopping_.load()) break;
    for (size_t i = 1; i < polled.size(); ++i) {
      if ((polled[i].revents & POLLIN) == 0) continue;
      if (!AcceptAll(polled[i].fd)) {
        resume_at = absl::Now() + kExhaustedBackoff;
        break;
      }
    }
    if (absl::Now() >= next_sweep) {
      Sweep();
      next_sweep = absl::Now() + sweep_interval;
    }
  }
}

bool Listener::AcceptAll(int listen_fd) {
  for (;;) {
    sockaddr_storage address{};
    socklen_t length = sizeof(address);
    const int fd = accept4(listen_fd, reinterpret_cast<sockaddr*>(&address), &length,
                           SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      SetAccepting(true);
      Handle(fd, PeerAddress(address));
      continue;
    }
    switch (errno) {
      case EAGAIN:
        return true;
      case EMFILE:
      case ENFILE:
      case ENOBUFS:
      case ENOMEM: {
        SetAccepting(false);
        // The spare descriptor makes room to take the waiting connection and close it, so its
        // client is told at once instead of hanging in the backlog.
        if (spare_fd_ >= 0) {
          close(spare_fd_);
          const int shed =
              accept4(listen_fd, reinterpret_cast<sockaddr*>(&address), &length, SOCK_CLOEXEC);
          if (shed >= 0) {
            Refuse("descriptors_exhausted", PeerAddress(address), shed);
          }
          spare_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
        } else {
          Refuse("descriptors_exhausted", "unknown", -1);
          spare_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
        }
        return false;
      }
      default:
        // ECONNABORTED, EPROTO, EPERM (a firewall), EINTR: that connection only.
        if (stopping_.load()) return true;
        continue;
    }
  }
}

void Listener::Handle(int fd, const std::string& peer) {
  const absl::Time now = absl::Now();
  if (limits_.connections_per_second_per_peer > 0 && !connection_rate_.TryTake(peer, now)) {
    Refuse("connection_rate", peer, fd);
    return;
  }
  std::optional<std::string> refusal;
  for (int attempt = 0; attempt < 2; ++attempt) {
    {
      absl::MutexLock lock(&mutex_);
      const char* cap = CapReached(peer);
      if (cap == nullptr) {
        connections_.push_back(Connection{fd, SocketInode(fd), peer, false});
        ++per_peer_[peer];
        refusal.reset();
        break;
      }
      refusal = cap;
    }
    // The counts may include connections closed since the last sweep; a flood of refusals
    // sweeps at most every 10 ms.
    if (attempt > 0 || now - last_sweep_ < absl::Milliseconds(10)) break;
    Sweep();
  }
  if (refusal.has_value()) {
    Refuse(*refusal, peer, fd);
    return;
  }
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  grpc::experimental::ExternalConnectionAcceptor::NewConnectionParameters parameters;
  parameters.listener_fd = listen_fds_.front();
  parameters.fd = fd;
  acceptor_->HandleNewConnection(&parameters);
}

const char* Listener::CapReached(const std::string& peer) {
  if (limits_.max_connections > 0 &&
      static_cast<int64_t>(connections_.size()) >= limits_.max_connections) {
    return "max_connections";
  }
  if (limits_.max_connections_per_peer > 0) {
    auto found = per_peer_.find(peer);
    if (found != per_peer_.end() && found->second >= limits_.max_connections_per_peer) {
      return "max_connections_per_peer";
    }
  }
  return nullptr;
}

void Listener::Sweep() {
  last_sweep_ = absl::Now();
  std::vector<std::string> cut_peers;
  {
    absl::MutexLock lock(&mutex_);
    std::erase_if(connections_, [&](Connection& connection) {
      mutex_.AssertHeld();
      if (connection.inode == 0 || SocketInode(connection.fd) != connection.inode) {
        if (--per_peer_[connection.peer] <= 0) per_peer_.erase(connection.peer);
        return true;
      }
      if (limits_.bytes_per_connection > 0 && !connection.cut) {
        tcp_info info{};
        socklen_t length = sizeof(info);
        if (getsockopt(connection.fd, IPPROTO_TCP, TCP_INFO, &info, &length) == 0 &&
            static_cast<int64_t>(info.tcpi_bytes_received) > limits_.bytes_per_connection) {
          // gRPC sees the connection end and closes it; the sweep forgets it after that.
          shutdown(connection.fd, SHUT_RDWR);
          connection.cut = true;
          cut_peers.push_back(connection.peer);
        }
      }
      return false;
    });
  }
  for (const std::string& peer : cut_peers) Refuse("byte_budget", peer, -1);
  if (!accepting_.load() && spare_fd_ >= 0) {
    // Whether a descriptor is free now, without waiting for a client to find out.
    if (const int probe = dup(spare_fd_); probe >= 0) {
      close(probe);
      SetAccepting(true);
    }
  }
}

void Listener::Refuse(const std::string& reason, const std::string& peer, int fd) {
  if (fd >= 0) close(fd);
  {
    absl::MutexLock lock(&mutex_);
    ++refused_[reason];
  }
  const std::optional<int64_t> suppressed =
      refusal_log_.ShouldLog(absl::StrCat(reason, "/", peer), absl::Now());
  if (!suppressed.has_value()) return;
  LogEvent event(LogLevel::kWarning,
                 reason == "byte_budget" ? "connection_cut" : "connection_refused");
  event.Field("port", name_).Field("peer", peer).Field("reason", reason);
  if (reason == "max_connections") event.Field("limit", limits_.max_connections);
  if (reason == "max_connections_per_peer") event.Field("limit", limits_.max_connections_per_peer);
  if (reason == "connection_rate") {
    event.Field("limit_per_second", limits_.connections_per_second_per_peer);
  }
  if (reason == "byte_budget") event.Field("limit_bytes", limits_.bytes_per_connection);
  event.Field("not_logged_since_last", *suppressed);
}

void Listener::SetAccepting(bool accepting) {
  if (accepting_.exchange(accepting) == accepting) return;
  if (on_accepting_changed_) on_accepting_changed_(accepting);
  LogEvent(accepting ? LogLevel::kInfo : LogLevel::kError,
           accepting ? "listener_accepting" : "listener_not_accepting")
      .Field("port", name_)
      .Field("reason", accepting ? "file descriptors are free again"
                                 : "accept failed: no file descriptor free (raise LimitNOFILE, "
                                   "or lower limits.max_connections)");
}

ListenerStats Listener::stats() {
  absl::MutexLock lock(&mutex_);
  return ListenerStats{static_cast<int64_t>(connections_.size()), accepting_.load(), refused_};
}

int64_t RaiseOpenFileLimit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return -1;
  if (limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
    getrlimit(RLIMIT_NOFILE, &limit);
  }
  return limit.rlim_cur == RLIM_INFINITY ? -1 : static_cast<int64_t>(limit.rlim_cur);
}

}  // namespace fedmoe::coordinator
