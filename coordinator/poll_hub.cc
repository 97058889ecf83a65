#include "coordinator/poll_hub.h"

#include <vector>

namespace fedmoe::coordinator {

PollHub::PollHub() : thread_([this] { Serve(); }) {}

PollHub::~PollHub() {
  Shutdown();
  thread_.join();
}

void PollHub::Park(absl::Time deadline, std::function<void()> expire) {
  {
    absl::MutexLock lock(&mutex_);
    if (!shutting_down_) {
      parked_.emplace(deadline, std::move(expire));
      return;
    }
  }
  expire();
}

void PollHub::Shutdown() {
  absl::MutexLock lock(&mutex_);
  shutting_down_ = true;
}

size_t PollHub::parked() const {
  absl::MutexLock lock(&mutex_);
  return parked_.size();
}

void PollHub::Serve() {
  while (true) {
    std::vector<std::function<void()>> due;
    bool stop = false;
    {
      absl::MutexLock lock(&mutex_);
      const absl::Time wake =
          parked_.empty() ? absl::Now() + absl::Seconds(1) : parked_.begin()->first;
      auto ready = [this, wake]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
        return shutting_down_ || (!parked_.empty() && parked_.begin()->first < wake) ||
               absl::Now() >= wake;
      };
      mutex_.AwaitWithDeadline(absl::Condition(&ready), wake);
      const absl::Time now = absl::Now();
      while (!parked_.empty() && (shutting_down_ || parked_.begin()->first <= now)) {
        due.push_back(std::move(parked_.begin()->second));
        parked_.erase(parked_.begin());
      }
      stop = shutting_down_;
    }
    // Callbacks run outside the lock: they finish gRPC calls, which may take locks of their own.
    for (auto& expire : due) expire();
    if (stop) return;
  }
}

}  // namespace fedmoe::coordinator
