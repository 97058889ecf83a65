// The attacks of issue [resilience], as an unauthenticated or enrolled peer would make them, for
// bench/abuse and the hardening tests. Each runs on loopback against a real coordinator
// process and reports what it managed to do; the caller measures what it cost the coordinator.
//
// The HTTP/2 rapid reset is written frame by frame over OpenSSL's TLS (no HTTP/2 library would
// send a stream's RST_STREAM before the server has answered it, which is the point).
#ifndef FEDMOE_SIMULATION_ABUSE_ATTACKS_H_
#define FEDMOE_SIMULATION_ABUSE_ATTACKS_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace fedmoe::simulation {

struct RapidResetReport {
  // HEADERS + RST_STREAM pairs written.
  int64_t pairs = 0;
  // TLS connections opened (the first per worker, and one per reconnection after the
  // coordinator closed one).
  int64_t connections = 0;
  // Connections the coordinator ended with GOAWAY, or closed.
  int64_t goaways = 0;
  int64_t closed = 0;
  // Connections that could not be opened (refused, or no TLS handshake).
  int64_t failed_connects = 0;
  double seconds = 0;
};

// Opens `connections` TLS connections (ALPN h2, no client certificate) to 127.0.0.1:`port` and
// on each sends HEADERS for a POST to `path` followed at once by RST_STREAM(CANCEL), as fast as
// the connection takes them (at most `pairs_per_second` in all; 0: no pacing), for `duration`
// or until `stop` is set. A connection the server closes is reopened. The connections come
// from 127.0.0.2, the legitimate clients of the bench from 127.0.0.1.
RapidResetReport RapidReset(int port, const std::string& path, int connections,
                            double pairs_per_second, absl::Duration duration,
                            const std::atomic<bool>* stop = nullptr);

// Plain TCP connections to 127.0.0.1:`port` that send nothing: half-open TLS handshakes, and
// the file descriptors of a flood. The destructor closes them.
class ConnectionFlood {
 public:
  ConnectionFlood() = default;
  ConnectionFlood(const ConnectionFlood&) = delete;
  ConnectionFlood& operator=(const ConnectionFlood&) = delete;
  ~ConnectionFlood() { CloseAll(); }

  // Connects up to `count` more; returns how many connected. Connects that the kernel accepts
  // into the backlog count too: whether the coordinator took them shows in its FDs.
  int Open(int port, int count);
  // How many of the held connections the coordinator has closed (read returns 0 or an error).
  int ClosedByPeer();
  void CloseAll();
  int held() const { return static_cast<int>(fds_.size()); }

 private:
  std::vector<int> fds_;
};

// Whether a TLS handshake with 127.0.0.1:`port` gets the server's first flight within
// `timeout`: the port is accepting and serving, whatever the handshake's end.
bool TlsPortAnswers(int port, absl::Duration timeout);

}  // namespace fedmoe::simulation

#endif  // FEDMOE_SIMULATION_ABUSE_ATTACKS_H_
