#include "coordinator/poll_hub.h"

#include <vector>

namespace fedmoe::coordinator {

PollHub::PollHub() : thread_([this] { Serve(); }) {}

PollHub::~PollHub() {
  Shutdown();
  thread_.join();
}

void PollHub::Park(absl::Time deadline, Callback callback) {
  {
    absl::MutexLock lock(&mutex_);
    if (!shutting_down_) {
      parked_.emplace(deadline, std::move(callback));
      return;
    }
  }
  callback(true);
}

void PollHub::WakeAll() {
  absl::MutexLock lock(&mutex_);
  wake_requested_ = true;
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
    std::vector<Callback> due;
    std::vector<std::pair<absl::Time, Callback>> woken;
    bool stop = false;
    {
      absl::MutexLock lock(&mutex_);
      const absl::Time wake =
          parked_.empty() ? absl::Now() + absl::Seconds(1) : parked_.begin()->first;
      auto ready = [this, wake]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
        return shutting_down_ || wake_requested_ ||
               (!parked_.empty() && parked_.begin()->first < wake) || absl::Now() >= wake;
      };
      mutex_.AwaitWithDeadline(absl::Condition(&ready), wake);
      const absl::Time now = absl::Now();
      while (!parked_.empty() && (shutting_down_ || parked_.begin()->first <= now)) {
        due.push_back(std::move(parked_.begin()->second));
        parked_.erase(parked_.begin());
      }
      if (wake_requested_ && !shutting_down_) {
        wake_requested_ = false;
        for (auto& [deadline, callback] : parked_)
          woken.emplace_back(deadline, std::move(callback));
        parked_.clear();
      }
      stop = shutting_down_;
    }
    // Callbacks run outside the lock: they finish gRPC calls, which may take locks of their own.
    for (Callback& callback : due) callback(true);
    std::vector<std::pair<absl::Time, Callback>> still_waiting;
    for (auto& [deadline, callback] : woken) {
      if (!callback(false)) still_waiting.emplace_back(deadline, std::move(callback));
    }
    if (!still_waiting.empty()) {
      absl::MutexLock lock(&mutex_);
      for (auto& [deadline, callback] : still_waiting) {
        if (shutting_down_) {
          due.push_back(std::move(callback));
        } else {
          parked_.emplace(deadline, std::move(callback));
        }
      }
    }
    if (stop) return;
  }
}

}  // namespace fedmoe::coordinator
