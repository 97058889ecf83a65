#include "coordinator/round/poll_hub.h"

#include <algorithm>
#include <optional>
#include <vector>

namespace fedmoe::coordinator {

PollHub::PollHub(size_t capacity) : capacity_(capacity), thread_([this] { Serve(); }) {}

PollHub::~PollHub() {
  Shutdown();
  thread_.join();
}

void PollHub::Park(absl::Time deadline, PollPriority priority, Callback callback,
                   Abandoned abandoned) {
  std::vector<Callback> abandoned_polls;
  std::optional<Callback> displaced;
  std::optional<Callback> refused;
  bool park = false;
  // A poll refused because the hub shuts down should come back at once: the client will find
  // the coordinator gone, or back.
  Reason refusal = Reason::kNoRoom;
  {
    absl::MutexLock lock(&mutex_);
    auto full = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
      return parked_.size() + being_woken_ >= capacity_;
    };
    park = !shutting_down_;
    if (shutting_down_) refusal = Reason::kExpired;
    if (park && full()) {
      // A client that went away (cancelled, disconnected) would otherwise hold its place
      // until its deadline.
      abandoned_polls = TakeAbandoned();
    }
    if (park && full()) {
      // The queue is in deadline order: the first poll of lower priority is the one nearest
      // its deadline.
      auto lower = std::find_if(parked_.begin(), parked_.end(), [priority](const auto& entry) {
        return entry.second.priority < priority;
      });
      if (lower != parked_.end()) {
        displaced = std::move(lower->second.callback);
        parked_.erase(lower);
      } else {
        // Cohort members always keep a place: rounds.max_clients bounds them, and a member
        // that is told to come back slows every stage of the round by the wait.
        park = priority == PollPriority::kInRound;
      }
    }
    if (park) {
      parked_.emplace(deadline, ParkedPoll{priority, std::move(callback), std::move(abandoned)});
    } else {
      refused = std::move(callback);
    }
  }
  for (Callback& gone : abandoned_polls) gone(Reason::kExpired);
  if (displaced.has_value()) (*displaced)(Reason::kNoRoom);
  if (refused.has_value()) (*refused)(refusal);
}

std::vector<PollHub::Callback> PollHub::TakeAbandoned() {
  std::vector<Callback> taken;
  for (auto it = parked_.begin(); it != parked_.end();) {
    if (it->second.abandoned()) {
      taken.push_back(std::move(it->second.callback));
      it = parked_.erase(it);
    } else {
      ++it;
    }
  }
  return taken;
}

void PollHub::FinishAbandoned() {
  std::vector<Callback> abandoned_polls;
  {
    absl::MutexLock lock(&mutex_);
    abandoned_polls = TakeAbandoned();
  }
  for (Callback& gone : abandoned_polls) gone(Reason::kExpired);
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
  return parked_.size() + being_woken_;
}

void PollHub::Serve() {
  while (true) {
    std::vector<Callback> due;
    Queue woken;
    bool waking = false;
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
        due.push_back(std::move(parked_.begin()->second.callback));
        parked_.erase(parked_.begin());
      }
      if (wake_requested_ && !shutting_down_) {
        wake_requested_ = false;
        woken.swap(parked_);
        being_woken_ = woken.size();
        waking = true;
      }
      stop = shutting_down_;
    }
    // Callbacks run outside the lock: they finish gRPC calls, which may take locks of their own.
    for (Callback& callback : due) callback(Reason::kExpired);
    for (auto it = woken.begin(); it != woken.end();) {
      if (it->second.callback(Reason::kWoken)) {
        it = woken.erase(it);
        // Its place is free from now on, not only once every woken poll has had its turn.
        absl::MutexLock lock(&mutex_);
        --being_woken_;
      } else {
        ++it;
      }
    }
    if (waking) {
      std::vector<Callback> expired;
      {
        absl::MutexLock lock(&mutex_);
        being_woken_ = 0;
        if (shutting_down_) {
          for (auto& [deadline, poll] : woken) expired.push_back(std::move(poll.callback));
        } else {
          parked_.merge(woken);
        }
      }
      for (Callback& callback : expired) callback(Reason::kExpired);
    }
    if (stop) return;
  }
}

absl::Duration DeferredPollInterval(int online_clients, size_t capacity,
                                    double deferred_polls_per_second, absl::Duration longest) {
  const double deferred =
      std::max(0.0, static_cast<double>(online_clients) - static_cast<double>(capacity));
  const absl::Duration spread = absl::Seconds(deferred / deferred_polls_per_second);
  return std::clamp(spread, absl::Seconds(1), std::max(longest, absl::Seconds(1)));
}

}  // namespace fedmoe::coordinator
