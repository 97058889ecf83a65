// What fedmoe-coordinator exposes on /metrics (docs/operations.md says what each means). The
// federation's state (clients, rounds, versions, ε) is read from the store and the round
// engine at each scrape; stage latencies and traffic are recorded as they happen. Nothing
// about one client's data or training (no per-client loss) is ever exposed.
#ifndef FEDMOE_COORDINATOR_SERVICE_METRICS_H_
#define FEDMOE_COORDINATOR_SERVICE_METRICS_H_

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coordinator/round/round_observer.h"
#include "coordinator/service/listener.h"
#include "fedmoe/v1/admin.pb.h"
#include "fedmoe/v1/federation.pb.h"

namespace fedmoe::coordinator {

class CoordinatorMetrics : public RoundObserver {
 public:
  explicit CoordinatorMetrics(prometheus::Registry& registry);

  void StageClosed(v1::RoundStage stage, absl::Duration took) override;
  void RoundEnded(v1::RoundStage outcome, absl::Duration took) override;
  // Serialized message bytes on the mTLS port's federation service.
  void BytesReceived(uint64_t bytes) { bytes_in_->Increment(static_cast<double>(bytes)); }
  void BytesSent(uint64_t bytes) { bytes_out_->Increment(static_cast<double>(bytes)); }
  // A poll was answered at once: the poll hub was full (coordinator/round/poll_hub.h).
  void PollDeferred() { polls_deferred_->Increment(); }

 private:
  prometheus::Family<prometheus::Histogram>* stage_seconds_;
  prometheus::Family<prometheus::Histogram>* round_seconds_;
  prometheus::Counter* bytes_in_;
  prometheus::Counter* bytes_out_;
  prometheus::Counter* polls_deferred_;
};

// The status numbers `fedmoe-coordinator status` shows, as gauges and counters, read at each
// scrape through `status` (the admin GetStatus answer).
class StatusCollectable : public prometheus::Collectable {
 public:
  StatusCollectable(std::function<absl::StatusOr<v1::GetStatusResponse>()> status,
                    std::function<std::vector<PortHealth>()> ports)
      : status_(std::move(status)), ports_(std::move(ports)) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  std::function<absl::StatusOr<v1::GetStatusResponse>()> status_;
  std::function<std::vector<PortHealth>()> ports_;
};

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_SERVICE_METRICS_H_
