#include "logging/log_throttle.h"

namespace fedmoe {

std::optional<int64_t> LogThrottle::ShouldLog(const std::string& key, absl::Time now) {
  absl::MutexLock lock(&mutex_);
  auto found = keys_.find(key);
  if (found == keys_.end()) {
    if (keys_.size() >= max_keys_) {
      absl::erase_if(keys_, [&](const auto& entry) {
        return now - entry.second.logged_at >= interval_ && entry.second.suppressed == 0;
      });
      // Still full: the flood comes from more keys than are remembered. One line per
      // interval for all of them is what the log can take.
      if (keys_.size() >= max_keys_) return std::nullopt;
    }
    keys_.emplace(key, State{now, 0});
    return 0;
  }
  State& state = found->second;
  if (now - state.logged_at < interval_) {
    ++state.suppressed;
    return std::nullopt;
  }
  const int64_t suppressed = state.suppressed;
  state = State{now, 0};
  return suppressed;
}

}  // namespace fedmoe
