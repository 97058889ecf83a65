// Fair shares between callers: token buckets per key (a client identity, a peer address). The
// refusals they cause are logged through logging/log_throttle.h.
//
// Both remember a bounded number of keys, so that an attacker who rotates addresses cannot grow
// the coordinator: past the bound, keys whose state no longer matters (a full bucket, an
// interval that has passed) are forgotten first, and a new key is treated as the most limited
// one when none can be.
#ifndef FEDMOE_COORDINATOR_SERVICE_RATE_LIMITER_H_
#define FEDMOE_COORDINATOR_SERVICE_RATE_LIMITER_H_

#include <cstdint>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "logging/log_throttle.h"

namespace fedmoe::coordinator {

using fedmoe::LogThrottle;  // logging/log_throttle.h, shared with gRPC's own lines

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
  // The bucket's tokens at `now`, refilled at the rate up to the burst.
  double TokensAt(const Bucket& bucket, absl::Time now) const;
  // The key's bucket, refilled to `now`; null when the map is full of keys that matter.
  Bucket* Refilled(const std::string& key, absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const double per_second_;
  const double burst_;
  const size_t max_keys_;
  absl::Mutex mutex_;
  absl::flat_hash_map<std::string, Bucket> buckets_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_SERVICE_RATE_LIMITER_H_
