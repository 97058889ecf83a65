#include "coordinator/service/rate_limiter.h"

#include <algorithm>
#include <cmath>

namespace fedmoe::coordinator {

KeyedRateLimiter::KeyedRateLimiter(double per_second, double burst, size_t max_keys)
    : per_second_(per_second), burst_(std::max(1.0, burst)), max_keys_(max_keys) {}

double KeyedRateLimiter::TokensAt(const Bucket& bucket, absl::Time now) const {
  if (now <= bucket.updated) return bucket.tokens;
  return std::min(burst_,
                  bucket.tokens + absl::ToDoubleSeconds(now - bucket.updated) * per_second_);
}

KeyedRateLimiter::Bucket* KeyedRateLimiter::Refilled(const std::string& key, absl::Time now) {
  auto found = buckets_.find(key);
  if (found == buckets_.end()) {
    if (buckets_.size() >= max_keys_) {
      // A full bucket says nothing a fresh one would not: forget those.
      absl::erase_if(buckets_, [&](const auto& entry) {
        const Bucket& bucket = entry.second;
        return TokensAt(bucket, now) >= burst_;
      });
      if (buckets_.size() >= max_keys_) return nullptr;
    }
    found = buckets_.emplace(key, Bucket{burst_, now}).first;
  }
  Bucket& bucket = found->second;
  bucket.tokens = TokensAt(bucket, now);
  bucket.updated = std::max(bucket.updated, now);
  return &bucket;
}

bool KeyedRateLimiter::TryTake(const std::string& key, absl::Time now) {
  absl::MutexLock lock(&mutex_);
  Bucket* bucket = Refilled(key, now);
  if (bucket == nullptr || bucket->tokens < 1) return false;
  bucket->tokens -= 1;
  return true;
}

bool KeyedRateLimiter::HasToken(const std::string& key, absl::Time now) {
  absl::MutexLock lock(&mutex_);
  Bucket* bucket = Refilled(key, now);
  return bucket != nullptr && bucket->tokens >= 1;
}

void KeyedRateLimiter::Take(const std::string& key, absl::Time now) {
  absl::MutexLock lock(&mutex_);
  if (Bucket* bucket = Refilled(key, now); bucket != nullptr) {
    bucket->tokens = std::max(0.0, bucket->tokens - 1);
  }
}

absl::Duration KeyedRateLimiter::RetryAfter(const std::string& key, absl::Time now) {
  absl::MutexLock lock(&mutex_);
  Bucket* bucket = Refilled(key, now);
  if (bucket == nullptr) return absl::Seconds(1.0 / per_second_);
  if (bucket->tokens >= 1) return absl::ZeroDuration();
  return absl::Seconds(std::ceil((1 - bucket->tokens) / per_second_ * 1000) / 1000);
}

}  // namespace fedmoe::coordinator
