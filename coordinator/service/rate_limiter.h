// Fair shares between callers: token buckets per key (a client identity, a peer address), and
// a log throttle that turns a flood of refusals into one line per key and interval.
//
// Both remember a bounded number of keys, so that an attacker who rotates addresses cannot grow
// the coordinator: past the bound, keys whose state no longer matters (a full bucket, an
// interval that has passed) are forgotten first, and a new key is treated as the most limited
// one when none can be.
#ifndef FEDMOE_COORDINATOR_SERVICE_RATE_LIMITER_H_
#define FEDMOE_COORDINATOR_SERVICE_RATE_LIMITER_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace fedmoe::coordinator {

class KeyedRateLimiter {
 public:
  // Each key's bucket holds up to `burst` tokens and refills at `per_second`.
  KeyedRateLimiter(double per_second, double burst, size_t max_keys = 65536);

  // Takes one token of `key`'s bucket if it has one.
  bool TryTake(const std::string& key, absl::Time now);
  // Whether `key` has a token, without taking it: for limits that charge only failures.
  bool HasToken(const std::string& key, absl::Time now);
  // Takes a token whether or not there is one (the bucket may go to zero, never below).
  void Take(const std::string& key, absl::Time now);
  // When `key`'s bucket will next hold a token.
  absl::Duration RetryAfter(const std::string& key, absl::Time now);

 private:
  struct Bucket {
    double tokens = 0;
    absl::Time updated;
  };
  // The key's bucket, refilled to `now`; null when the map is full of keys that matter.
  Bucket* Refilled(const std::string& key, absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const double per_second_;
  const double burst_;
  const size_t max_keys_;
  absl::Mutex mutex_;
  absl::flat_hash_map<std::string, Bucket> buckets_ ABSL_GUARDED_BY(mutex_);
};

class LogThrottle {
 public:
  explicit LogThrottle(absl::Duration interval, size_t max_keys = 65536)
      : interval_(interval), max_keys_(max_keys) {}

  // Whether an event of `key` is logged now: the first of each interval is, with the number of
  // its key's events that were not logged since the last line; the others only count.
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

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_SERVICE_RATE_LIMITER_H_
