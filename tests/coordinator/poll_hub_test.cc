#include "coordinator/round/poll_hub.h"

#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace fedmoe::coordinator {
namespace {

using Reason = PollHub::Reason;

// Records, for each named poll, the reasons its callback ran with, and answers kWoken with
// whether the poll has a task by then. Tests declare it before the hub, which runs the parked
// callbacks as it is destroyed.
class Recorder {
 public:
  PollHub::Callback Poll(const std::string& name) {
    return [this, name](Reason reason) {
      absl::MutexLock lock(&mutex_);
      reasons_[name].push_back(reason);
      return reason != Reason::kWoken || has_task_.contains(name);
    };
  }
  void GiveTask(const std::string& name) {
    absl::MutexLock lock(&mutex_);
    has_task_[name] = true;
  }
  std::vector<Reason> Reasons(const std::string& name) {
    absl::MutexLock lock(&mutex_);
    return reasons_[name];
  }
  // Waits until `name`'s callback has run `count` times.
  bool AwaitCalls(const std::string& name, size_t count) {
    absl::MutexLock lock(&mutex_);
    auto enough = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
      return reasons_[name].size() >= count;
    };
    return mutex_.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(10));
  }

 private:
  absl::Mutex mutex_;
  std::map<std::string, std::vector<Reason>> reasons_ ABSL_GUARDED_BY(mutex_);
  std::map<std::string, bool> has_task_ ABSL_GUARDED_BY(mutex_);
};

const absl::Time kFarAway = absl::Now() + absl::Hours(1);

TEST(PollHubTest, AFullHubAnswersANewPollAtOnceWithNoRoom) {
  Recorder recorder;
  PollHub hub(2);
  hub.Park(kFarAway, PollPriority::kAwaitingRound, recorder.Poll("a"));
  hub.Park(kFarAway, PollPriority::kAwaitingRound, recorder.Poll("b"));
  hub.Park(kFarAway, PollPriority::kAwaitingRound, recorder.Poll("c"));
  EXPECT_EQ(recorder.Reasons("c"), std::vector<Reason>{Reason::kNoRoom});
  EXPECT_TRUE(recorder.Reasons("a").empty());
  EXPECT_TRUE(recorder.Reasons("b").empty());
  EXPECT_EQ(hub.parked(), 2u);
}

TEST(PollHubTest, APollInTheRoundTakesThePlaceOfTheWaitingPollNearestItsDeadline) {
  Recorder recorder;
  PollHub hub(2);
  const absl::Time now = absl::Now();
  hub.Park(now + absl::Minutes(20), PollPriority::kAwaitingRound, recorder.Poll("late"));
  hub.Park(now + absl::Minutes(10), PollPriority::kAwaitingRound, recorder.Poll("early"));
  hub.Park(kFarAway, PollPriority::kInRound, recorder.Poll("member"));
  EXPECT_EQ(recorder.Reasons("early"), std::vector<Reason>{Reason::kNoRoom});
  EXPECT_TRUE(recorder.Reasons("late").empty());
  EXPECT_TRUE(recorder.Reasons("member").empty());
  EXPECT_EQ(hub.parked(), 2u);

  // The next member displaces the last waiting poll; once only members are parked, a further
  // member parks beyond the capacity, and a waiting poll finds no room.
  hub.Park(kFarAway, PollPriority::kInRound, recorder.Poll("member2"));
  EXPECT_TRUE(recorder.Reasons("member2").empty());
  EXPECT_EQ(recorder.Reasons("late"), std::vector<Reason>{Reason::kNoRoom});
  hub.Park(kFarAway, PollPriority::kInRound, recorder.Poll("member3"));
  EXPECT_TRUE(recorder.Reasons("member3").empty());
  EXPECT_EQ(hub.parked(), 3u);
  hub.Park(kFarAway, PollPriority::kAwaitingRound, recorder.Poll("waiting"));
  EXPECT_EQ(recorder.Reasons("waiting"), std::vector<Reason>{Reason::kNoRoom});
}

TEST(PollHubTest, AWaitingPollNeverDisplacesAnother) {
  Recorder recorder;
  PollHub hub(1);
  hub.Park(kFarAway, PollPriority::kInRound, recorder.Poll("member"));
  hub.Park(kFarAway, PollPriority::kAwaitingRound, recorder.Poll("waiting"));
  EXPECT_EQ(recorder.Reasons("waiting"), std::vector<Reason>{Reason::kNoRoom});
  EXPECT_TRUE(recorder.Reasons("member").empty());
}

TEST(PollHubTest, AnAbandonedPollGivesUpItsPlaceWhenTheHubIsFull) {
  Recorder recorder;
  PollHub hub(2);
  std::atomic<bool> gone = false;
  hub.Park(kFarAway, PollPriority::kInRound, recorder.Poll("gone"), [&] { return gone.load(); });
  hub.Park(kFarAway, PollPriority::kInRound, recorder.Poll("here"), [] { return false; });
  gone = true;
  // Even a poll of lower priority gets the place: the abandoned one has no client to answer.
  hub.Park(kFarAway, PollPriority::kAwaitingRound, recorder.Poll("new"));
  EXPECT_EQ(recorder.Reasons("gone"), std::vector<Reason>{Reason::kExpired});
  EXPECT_TRUE(recorder.Reasons("here").empty());
  EXPECT_TRUE(recorder.Reasons("new").empty());
  EXPECT_EQ(hub.parked(), 2u);
}

TEST(PollHubTest, FinishingTheAbandonedPollsLeavesTheOthersParked) {
  Recorder recorder;
  PollHub hub(8);
  std::atomic<bool> gone = false;
  hub.Park(kFarAway, PollPriority::kAwaitingRound, recorder.Poll("gone"),
           [&] { return gone.load(); });
  hub.Park(kFarAway, PollPriority::kAwaitingRound, recorder.Poll("here"), [] { return false; });
  hub.FinishAbandoned();
  EXPECT_EQ(hub.parked(), 2u);
  gone = true;
  hub.FinishAbandoned();
  EXPECT_EQ(recorder.Reasons("gone"), std::vector<Reason>{Reason::kExpired});
  EXPECT_TRUE(recorder.Reasons("here").empty());
  EXPECT_EQ(hub.parked(), 1u);
}

TEST(PollHubTest, ADeadlineExpiresThePollAndFreesItsPlace) {
  Recorder recorder;
  PollHub hub(1);
  hub.Park(absl::Now() + absl::Milliseconds(50), PollPriority::kAwaitingRound,
           recorder.Poll("short"));
  ASSERT_TRUE(recorder.AwaitCalls("short", 1));
  EXPECT_EQ(recorder.Reasons("short"), std::vector<Reason>{Reason::kExpired});
  hub.Park(kFarAway, PollPriority::kAwaitingRound, recorder.Poll("next"));
  EXPECT_TRUE(recorder.Reasons("next").empty());
  EXPECT_EQ(hub.parked(), 1u);
}

TEST(PollHubTest, WakingFinishesThePollsWithATaskAndKeepsTheOthersInTheirPlaces) {
  Recorder recorder;
  PollHub hub(2);
  hub.Park(kFarAway, PollPriority::kAwaitingRound, recorder.Poll("with_task"));
  hub.Park(kFarAway, PollPriority::kAwaitingRound, recorder.Poll("without"));
  recorder.GiveTask("with_task");
  hub.WakeAll();
  ASSERT_TRUE(recorder.AwaitCalls("with_task", 1));
  ASSERT_TRUE(recorder.AwaitCalls("without", 1));
  EXPECT_EQ(recorder.Reasons("with_task"), std::vector<Reason>{Reason::kWoken});
  // The poll without a task stays parked, and still holds its place.
  hub.Park(kFarAway, PollPriority::kAwaitingRound, recorder.Poll("third"));
  EXPECT_TRUE(recorder.Reasons("third").empty());
  hub.Park(kFarAway, PollPriority::kAwaitingRound, recorder.Poll("fourth"));
  EXPECT_EQ(recorder.Reasons("fourth"), std::vector<Reason>{Reason::kNoRoom});
  EXPECT_EQ(recorder.Reasons("without"), std::vector<Reason>{Reason::kWoken});
}

TEST(PollHubTest, ShutdownExpiresEveryParkedPollAndEveryLaterOne) {
  Recorder recorder;
  {
    PollHub hub(4);
    hub.Park(kFarAway, PollPriority::kAwaitingRound, recorder.Poll("a"));
    hub.Park(kFarAway, PollPriority::kInRound, recorder.Poll("b"));
    hub.Shutdown();
    ASSERT_TRUE(recorder.AwaitCalls("a", 1));
    ASSERT_TRUE(recorder.AwaitCalls("b", 1));
    hub.Park(kFarAway, PollPriority::kInRound, recorder.Poll("late"));
    // A client told "no room" would wait; after shutdown it should find out at once.
    EXPECT_EQ(recorder.Reasons("late"), std::vector<Reason>{Reason::kExpired});
  }
  EXPECT_EQ(recorder.Reasons("a"), std::vector<Reason>{Reason::kExpired});
  EXPECT_EQ(recorder.Reasons("b"), std::vector<Reason>{Reason::kExpired});
}

TEST(PollHubTest, ManyThreadsNeverParkMoreWaitingPollsThanTheCapacity) {
  constexpr size_t kCapacity = 8;
  std::atomic<int> refused = 0;
  PollHub hub(kCapacity);
  constexpr int kThreads = 4;
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        hub.Park(kFarAway, PollPriority::kAwaitingRound, [&](Reason reason) {
          if (reason == Reason::kNoRoom) ++refused;
          return reason != Reason::kWoken;
        });
        EXPECT_LE(hub.parked(), kCapacity);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(hub.parked(), kCapacity);
  EXPECT_EQ(refused.load(), kThreads * 50 - static_cast<int>(kCapacity));
}

TEST(DeferredPollIntervalTest, SpreadsTheClientsBeyondTheCapacityOverTheRate) {
  // 1000 online, 256 held: 744 come back at 100 per second.
  EXPECT_EQ(DeferredPollInterval(1000, 256, 100, absl::Seconds(30)), absl::Seconds(7.44));
  // Never under a second, however few are deferred.
  EXPECT_EQ(DeferredPollInterval(260, 256, 100, absl::Seconds(30)), absl::Seconds(1));
  EXPECT_EQ(DeferredPollInterval(10, 256, 100, absl::Seconds(30)), absl::Seconds(1));
  // Never past the longest wait that keeps a client online.
  EXPECT_EQ(DeferredPollInterval(100000, 256, 100, absl::Seconds(30)), absl::Seconds(30));
}

}  // namespace
}  // namespace fedmoe::coordinator
