// What fedmoe-client exposes on /metrics: the same local progress that status.json shows
// (docs/operations.md says what each number means). Training loss and data stay out: the
// endpoint describes activity, not what was learned.
#ifndef FEDMOE_CLIENT_CLIENT_METRICS_H_
#define FEDMOE_CLIENT_CLIENT_METRICS_H_

#include <prometheus/collectable.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace fedmoe::client {

// The daemon's local progress, as status.json and /metrics report it.
struct ClientProgress {
  // The newest model version held locally (the /metrics gauge).
  uint64_t model_version = 0;
  // The version the last local training started from, and the newest version this client
  // knows the federation committed (from a round it finished, or its newest download).
  uint64_t trained_from_version = 0;
  uint64_t latest_committed_version = 0;
  uint64_t last_round = 0;
  std::string last_outcome;
  uint64_t rounds_joined = 0;
  uint64_t rounds_committed = 0;
  int64_t train_steps = 0;
  int64_t train_tokens = 0;
  double train_loss = 0;
  double train_seconds = 0;
  uint64_t bytes_sent_last_round = 0;
  uint64_t polls_answered = 0;
  // When the last model sync with the coordinator finished; InfinitePast before the first.
  absl::Time last_sync = absl::InfinitePast();
  bool connected = false;
};

// Holds the latest progress the daemon published and renders it at each scrape.
class ClientMetrics : public prometheus::Collectable {
 public:
  void Publish(const ClientProgress& progress) {
    absl::MutexLock lock(&mutex_);
    progress_ = progress;
  }
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  mutable absl::Mutex mutex_;
  ClientProgress progress_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace fedmoe::client

#endif  // FEDMOE_CLIENT_CLIENT_METRICS_H_
