// The time the round engine runs by: the system's in the coordinator, a test's own in unit
// tests, which step it past each stage's deadline without waiting.
#ifndef FEDMOE_COORDINATOR_ROUND_CLOCK_H_
#define FEDMOE_COORDINATOR_ROUND_CLOCK_H_

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace fedmoe::coordinator {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;

  // absl::Now(). Never destroyed.
  static const Clock& System();
};

class SystemClock final : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
};

inline const Clock& Clock::System() {
  static const SystemClock* const kSystem = new SystemClock();
  return *kSystem;
}

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_ROUND_CLOCK_H_
