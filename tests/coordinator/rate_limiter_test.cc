#include "coordinator/service/rate_limiter.h"

#include <gtest/gtest.h>

namespace fedmoe::coordinator {
namespace {

const absl::Time kStart = absl::FromUnixSeconds(1'800'000'000);

TEST(KeyedRateLimiterTest, ABurstIsAllowedThenTheRefillRate) {
  KeyedRateLimiter limiter(/*per_second=*/2, /*burst=*/3);
  EXPECT_TRUE(limiter.TryTake("a", kStart));
  EXPECT_TRUE(limiter.TryTake("a", kStart));
  EXPECT_TRUE(limiter.TryTake("a", kStart));
  EXPECT_FALSE(limiter.TryTake("a", kStart));
  EXPECT_EQ(limiter.RetryAfter("a", kStart), absl::Milliseconds(500));
  // Another key has a bucket of its own.
  EXPECT_TRUE(limiter.TryTake("b", kStart));
  EXPECT_FALSE(limiter.TryTake("a", kStart + absl::Milliseconds(499)));
  EXPECT_TRUE(limiter.TryTake("a", kStart + absl::Milliseconds(500)));
  // Never more than the burst, however long the wait.
  const absl::Time later = kStart + absl::Hours(1);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(limiter.TryTake("a", later)) << i;
  EXPECT_FALSE(limiter.TryTake("a", later));
}

TEST(KeyedRateLimiterTest, ChargingOnlyFailuresLeavesSuccessesFree) {
  KeyedRateLimiter failures(/*per_second=*/1.0 / 60, /*burst=*/2);
  EXPECT_TRUE(failures.HasToken("peer", kStart));
  EXPECT_TRUE(failures.HasToken("peer", kStart));  // asking takes nothing
  failures.Take("peer", kStart);
  failures.Take("peer", kStart);
  failures.Take("peer", kStart);  // never below zero
  EXPECT_FALSE(failures.HasToken("peer", kStart));
  EXPECT_EQ(failures.RetryAfter("peer", kStart), absl::Seconds(60));
  EXPECT_TRUE(failures.HasToken("peer", kStart + absl::Seconds(60)));
}

TEST(KeyedRateLimiterTest, RotatingKeysCannotGrowItPastItsBound) {
  KeyedRateLimiter limiter(/*per_second=*/1, /*burst=*/1, /*max_keys=*/4);
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(limiter.TryTake(std::to_string(i), kStart));
  // All four buckets are empty, so none can be forgotten: a new key is refused.
  EXPECT_FALSE(limiter.TryTake("new", kStart));
  // Once they have refilled they say nothing a fresh bucket would not, and make room.
  EXPECT_TRUE(limiter.TryTake("new", kStart + absl::Seconds(1)));
}

TEST(LogThrottleTest, OneLinePerKeyAndIntervalWithTheCountOfTheRest) {
  LogThrottle throttle(absl::Seconds(10));
  EXPECT_EQ(throttle.ShouldLog("peer", kStart), 0);
  for (int i = 1; i <= 5; ++i) {
    EXPECT_FALSE(throttle.ShouldLog("peer", kStart + absl::Seconds(i)).has_value());
  }
  EXPECT_EQ(throttle.ShouldLog("other", kStart + absl::Seconds(1)), 0);
  EXPECT_EQ(throttle.ShouldLog("peer", kStart + absl::Seconds(10)), 5);
  EXPECT_FALSE(throttle.ShouldLog("peer", kStart + absl::Seconds(11)).has_value());
}

}  // namespace
}  // namespace fedmoe::coordinator
