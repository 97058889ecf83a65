// Parks clients' long polls without holding a thread per client: a parked poll is a callback
// to run at its deadline (or at shutdown), kept in a deadline-ordered queue that one thread
// serves. This is what lets one coordinator hold thousands of idle clients.
#ifndef FEDMOE_COORDINATOR_POLL_HUB_H_
#define FEDMOE_COORDINATOR_POLL_HUB_H_

#include <functional>
#include <map>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace fedmoe::coordinator {

class PollHub {
 public:
  PollHub();
  PollHub(const PollHub&) = delete;
  PollHub& operator=(const PollHub&) = delete;
  // Runs every parked callback, then stops the thread.
  ~PollHub();

  // Called on the hub's thread with expired = true at the deadline (or shutdown), when it must
  // finish the call; and with expired = false after WakeAll(), when it may finish it (returning
  // true) or stay parked (false).
  using Callback = std::function<bool(bool expired)>;
  void Park(absl::Time deadline, Callback callback);
  // Offers every parked poll a chance to finish: the round moved on, so some may have a task.
  void WakeAll();
  // Runs every parked callback now and refuses new ones (they run at once).
  void Shutdown();
  size_t parked() const;

 private:
  void Serve();

  mutable absl::Mutex mutex_;
  std::multimap<absl::Time, Callback> parked_ ABSL_GUARDED_BY(mutex_);
  bool shutting_down_ ABSL_GUARDED_BY(mutex_) = false;
  bool wake_requested_ ABSL_GUARDED_BY(mutex_) = false;
  std::thread thread_;
};

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_POLL_HUB_H_
