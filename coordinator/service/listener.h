// The coordinator's own accept loop for each of its two ports. gRPC 1.51's listener gives up on
// a port for good after one failed accept (a full descriptor table kills it, and nothing
// reports it), and it cannot cap connections. So the coordinator binds and accepts itself and
// hands each accepted socket to its gRPC server (ServerBuilder's external connection
// acceptor, with the port's TLS credentials), after:
//   - caps on connections open per port and per peer address, and on new connections per
//     second per peer;
//   - when accept fails for lack of descriptors: a spare descriptor is given up to accept and
//     close the waiting connection (its client sees a close, not a hang), the port reports
//     itself not accepting, and it accepts again as soon as descriptors are free;
//   - on the enrollment port, a budget of bytes per connection: enrolling takes a few KiB,
//     so a connection that sends far more (an HTTP/2 rapid reset sends about 70 bytes per
//     cancelled stream) is shut down; with the per-peer rate this bounds the streams a peer
//     can open, which gRPC 1.51 cannot (docs/operations.md, "Hardening the coordinator").
// Connections are tracked by descriptor and socket inode, swept every 100 ms, so that one gRPC
// has closed (and whose number may be reused) is never counted or touched again.
#ifndef FEDMOE_COORDINATOR_SERVICE_LISTENER_H_
#define FEDMOE_COORDINATOR_SERVICE_LISTENER_H_

#include <grpcpp/server_builder.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "coordinator/service/rate_limiter.h"

namespace fedmoe::coordinator {

struct ListenerLimits {
  // Connections open at once on the port; 0: no cap.
  int64_t max_connections = 0;
  // Connections open at once from one peer address; 0: no cap.
  int64_t max_connections_per_peer = 0;
  // New connections per second from one peer address, with a burst of 4 seconds' worth;
  // 0: no cap.
  double connections_per_second_per_peer = 0;
  // Bytes a connection may send in all before it is shut down; 0: no budget.
  int64_t bytes_per_connection = 0;
};

struct ListenerStats {
  int64_t open_connections = 0;
  bool accepting = true;
  // Connections refused or cut, by reason: "max_connections", "max_connections_per_peer",
  // "connection_rate", "descriptors_exhausted", "byte_budget".
  std::map<std::string, int64_t> refused;
};

class Listener {
 public:
  // Binds every address `address` (host:port) resolves to; port 0 takes a free one, the same
  // for all. `name` ("federation", "enrollment") names the port in logs and metrics.
  static absl::StatusOr<std::unique_ptr<Listener>> Bind(std::string name,
                                                        const std::string& address,
                                                        ListenerLimits limits);
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;
  ~Listener();

  int port() const { return port_; }
  const std::string& name() const { return name_; }

  // Starts accepting into `acceptor`, whose server must be started. `on_accepting_changed` is
  // called (on the accept thread) whenever accepting() changes.
  void Start(std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> acceptor,
             std::function<void(bool)> on_accepting_changed);
  // Stops accepting and closes the listening sockets; connections already handed over are
  // the gRPC server's to end.
  void Stop();

  // False while accepting fails for lack of file descriptors.
  bool accepting() const { return accepting_.load(); }
  ListenerStats stats();

 private:
  struct Connection {
    int fd = -1;
    ino_t inode = 0;
    std::string peer;
    bool cut = false;
  };

  Listener(std::string name, std::vector<int> fds, int port, ListenerLimits limits);
  void AcceptLoop();
  // Accepts what is waiting on `listen_fd`; false when accept failed for lack of descriptors.
  bool AcceptAll(int listen_fd);
  void Handle(int fd, const std::string& peer);
  // The cap a new connection from `peer` would break, or null.
  const char* CapReached(const std::string& peer) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Forgets closed connections and cuts those over the byte budget.
  void Sweep();
  void Refuse(const std::string& reason, const std::string& peer, int fd);
  void SetAccepting(bool accepting);

  const std::string name_;
  const std::vector<int> listen_fds_;
  const int port_;
  const ListenerLimits limits_;
  // Kept open to be given up when the descriptor table is full (see the file comment).
  int spare_fd_ = -1;
  int wake_fd_ = -1;
  std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> acceptor_;
  std::function<void(bool)> on_accepting_changed_;
  std::thread thread_;
  std::atomic<bool> stopping_ = false;
  std::atomic<bool> accepting_ = true;
  // Only the accept thread sweeps.
  absl::Time last_sweep_;
  KeyedRateLimiter connection_rate_;
  LogThrottle refusal_log_;
  absl::Mutex mutex_;
  std::vector<Connection> connections_ ABSL_GUARDED_BY(mutex_);
  std::map<std::string, int64_t> per_peer_ ABSL_GUARDED_BY(mutex_);
  std::map<std::string, int64_t> refused_ ABSL_GUARDED_BY(mutex_);
};

// What a port reports on /metrics and to the health services.
struct PortHealth {
  std::string name;
  ListenerStats stats;
};

// Raises this process's soft limit on open files to its hard limit and returns the limit in
// force: a coordinator serving thousands of clients needs more than the usual 1,024.
int64_t RaiseOpenFileLimit();

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_SERVICE_LISTENER_H_
