// Which clients are online: those with a poll outstanding or that polled within the online
// window. Kept in memory, a few bytes per enrolled client; it is rebuilt within one poll
// interval after a restart, so it need not be durable.
#ifndef FEDMOE_COORDINATOR_ROUND_CLIENT_PRESENCE_H_
#define FEDMOE_COORDINATOR_ROUND_CLIENT_PRESENCE_H_

#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace fedmoe::coordinator {

class ClientPresence {
 public:
  explicit ClientPresence(absl::Duration online_window) : online_window_(online_window) {}

  void PollStarted(const std::string& client_id, absl::Time now);
  // PollStarted unless the client already has `max_outstanding` polls open; false then (it
  // still counts as seen).
  bool TryStartPoll(const std::string& client_id, absl::Time now, int max_outstanding);
  void PollFinished(const std::string& client_id, absl::Time now);
  void Forget(const std::string& client_id);

  bool IsOnline(const std::string& client_id, absl::Time now) const;
  int CountOnline(absl::Time now) const;
  // The online clients, in id order (so that cohort sampling does not depend on hash order).
  std::vector<std::string> OnlineClients(absl::Time now) const;

 private:
  struct Presence {
    int outstanding_polls = 0;
    absl::Time last_seen;
  };
  bool IsOnlineLocked(const Presence& presence, absl::Time now) const
      ABSL_SHARED_LOCKS_REQUIRED(mutex_);

  const absl::Duration online_window_;
  mutable absl::Mutex mutex_;
  absl::flat_hash_map<std::string, Presence> clients_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_ROUND_CLIENT_PRESENCE_H_
