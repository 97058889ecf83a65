// Parks clients' long polls without holding a thread per client: a parked poll is a callback
// to run at its deadline (or at shutdown), kept in a deadline-ordered queue that one thread
// serves.
//
// The hub holds a bounded number of polls from clients waiting for a round. A parked poll
// keeps its client's mTLS connection open, and an open connection costs the coordinator about
// 100 KB of TLS and HTTP/2 buffers that no gRPC option shrinks. A waiting client's poll that
// finds no room is answered at once and its client told when to come back
// (DeferredPollInterval); the client closes its connection while it waits. So the connections
// held are the capacity, the open round's cohort, and a rate-bounded trickle of returning
// clients, however many clients are enrolled.
#ifndef FEDMOE_COORDINATOR_ROUND_POLL_HUB_H_
#define FEDMOE_COORDINATOR_ROUND_POLL_HUB_H_

#include <functional>
#include <map>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace fedmoe::coordinator {

// Which polls keep their place when the hub is full: a client with a stake in the open round
// learns each stage the moment it opens; one waiting for a round can hear of it later at
// little cost.
enum class PollPriority { kAwaitingRound = 0, kInRound = 1 };

class PollHub {
 public:
  // Why a parked poll's callback runs.
  enum class Reason {
    // The round moved on: finish the call if the client now has a task (return true), or
    // stay parked (return false).
    kWoken,
    // The poll's deadline passed, or the hub is shutting down: finish the call.
    kExpired,
    // No room: the hub was full, or the poll gave its place to one of higher priority.
    // Finish the call, telling the client to come back later.
    kNoRoom,
  };
  // Its return value counts only for kWoken.
  using Callback = std::function<bool(Reason)>;
  // Whether the client has gone (its call was cancelled): such a poll gives up its place.
  using Abandoned = std::function<bool()>;

  explicit PollHub(size_t capacity);
  PollHub(const PollHub&) = delete;
  PollHub& operator=(const PollHub&) = delete;
  // Runs every parked callback, then stops the thread.
  ~PollHub();

  // Parks a poll until its deadline. When the hub is full, abandoned polls are finished
  // (kExpired) first; if that frees no place, a poll in the round takes the place of the
  // waiting poll nearest its deadline, whose callback runs with kNoRoom, or, with none left to
  // displace, parks beyond the capacity: the cohort is bounded on its own (rounds.max_clients).
  // A waiting poll that finds the hub full has its own callback run with kNoRoom. These
  // callbacks run on the calling thread.
  void Park(
      absl::Time deadline, PollPriority priority, Callback callback,
      Abandoned abandoned = [] { return false; });
  // Finishes (kExpired) the parked polls whose clients have gone, on the calling thread.
  void FinishAbandoned();
  // Offers every parked poll a chance to finish: the round moved on, so some may have a task.
  void WakeAll();
  // Runs every parked callback now and refuses new ones (they run at once).
  void Shutdown();
  size_t parked() const;
  size_t capacity() const { return capacity_; }

 private:
  struct ParkedPoll {
    PollPriority priority;
    Callback callback;
    Abandoned abandoned;
  };
  using Queue = std::multimap<absl::Time, ParkedPoll>;

  void Serve();
  std::vector<Callback> TakeAbandoned() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const size_t capacity_;
  mutable absl::Mutex mutex_;
  Queue parked_ ABSL_GUARDED_BY(mutex_);
  // Polls taken out of parked_ while their kWoken callbacks run; they still hold their place.
  size_t being_woken_ ABSL_GUARDED_BY(mutex_) = 0;
  bool shutting_down_ ABSL_GUARDED_BY(mutex_) = false;
  bool wake_requested_ ABSL_GUARDED_BY(mutex_) = false;
  std::thread thread_;
};

// How long a client whose poll found no room should wait before it polls again: long enough
// that the clients the hub cannot hold come back at about `deferred_polls_per_second` in all,
// and each such poll (often a fresh TLS handshake) stays affordable. Never under a second, and
// never over `longest`, so that a deferred client still counts as online.
absl::Duration DeferredPollInterval(int online_clients, size_t capacity,
                                    double deferred_polls_per_second, absl::Duration longest);

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_ROUND_POLL_HUB_H_
