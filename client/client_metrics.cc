#include "client/client_metrics.h"

#include "metrics/metrics_server.h"

namespace fedmoe::client {

std::vector<prometheus::MetricFamily> ClientMetrics::Collect() const {
  ClientProgress progress;
  {
    absl::MutexLock lock(&mutex_);
    progress = progress_;
  }
  using metrics::Gauge;
  std::vector<prometheus::MetricFamily> families;
  families.push_back(Gauge("fedmoe_client_connected",
                           "1 while the mTLS channel to the coordinator is up",
                           progress.connected ? 1 : 0));
  families.push_back(metrics::Labelled(
      prometheus::MetricType::Counter, "fedmoe_client_rounds_total",
      "Rounds this client was selected for (joined) and that committed with it (committed)",
      "outcome",
      {{"joined", static_cast<double>(progress.rounds_joined)},
       {"committed", static_cast<double>(progress.rounds_committed)}}));
  families.push_back(
      metrics::Labelled(prometheus::MetricType::Counter, "fedmoe_client_polls_total",
                        "PollTask calls the coordinator answered", "result",
                        {{"answered", static_cast<double>(progress.polls_answered)}}));
  families.push_back(Gauge("fedmoe_client_model_version", "The newest model version held locally",
                           static_cast<double>(progress.model_version)));
  families.push_back(Gauge("fedmoe_client_last_round", "The last round this client took part in",
                           static_cast<double>(progress.last_round)));
  families.push_back(Gauge("fedmoe_client_tokens_per_second",
                           "Training tokens per second in the last local training",
                           progress.train_seconds > 0
                               ? static_cast<double>(progress.train_tokens) / progress.train_seconds
                               : 0));
  families.push_back(Gauge("fedmoe_client_train_steps", "Steps of the last local training",
                           static_cast<double>(progress.train_steps)));
  families.push_back(Gauge("fedmoe_client_last_sync_timestamp_seconds",
                           "Unix time of the last model sync with the coordinator (0: none yet)",
                           progress.last_sync == absl::InfinitePast()
                               ? 0
                               : absl::ToDoubleSeconds(progress.last_sync - absl::UnixEpoch())));
  families.push_back(Gauge("fedmoe_client_bytes_sent_last_round",
                           "Request bytes this client sent in its last round",
                           static_cast<double>(progress.bytes_sent_last_round)));
  return families;
}

}  // namespace fedmoe::client
