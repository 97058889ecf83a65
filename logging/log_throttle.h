// One log line per key and interval for events that a peer can repeat at will (a refused
// connection, a wrong token, a failed TLS handshake): the first of each interval is logged with
// the number of its key's events not logged since, the others only count. A bounded number of
// keys is remembered, so that a flood from ever-new keys cannot grow the process.
#ifndef FEDMOE_LOGGING_LOG_THROTTLE_H_
#define FEDMOE_LOGGING_LOG_THROTTLE_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace fedmoe {

class LogThrottle {
 public:
  explicit LogThrottle(absl::Duration interval, size_t max_keys = 65536)
      : interval_(interval), max_keys_(max_keys) {}

  // Whether an event of `key` is logged now, and if so how many of its events were not logged
  // since its last line. Past the bound on keys, a new key is not logged.
  std::optional<int64_t> ShouldLog(const std::string& key, absl::Time now);

 private:
  struct State {
    absl::Time logged_at;
    int64_t suppressed = 0;
  };
  const absl::Duration interval_;
  const size_t max_keys_;
  absl::Mutex mutex_;
  absl::flat_hash_map<std::string, State> keys_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace fedmoe

#endif  // FEDMOE_LOGGING_LOG_THROTTLE_H_
