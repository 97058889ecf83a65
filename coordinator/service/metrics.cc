#include "coordinator/service/metrics.h"

#include "coordinator/round/round_engine.h"
#include "metrics/metrics_server.h"

namespace fedmoe::coordinator {
namespace {

// Seconds: from a quick stage on loopback to a long local-training stage.
const prometheus::Histogram::BucketBoundaries& StageBuckets() {
  static const auto* const kBuckets = new prometheus::Histogram::BucketBoundaries{
      0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800};
  return *kBuckets;
}

}  // namespace

CoordinatorMetrics::CoordinatorMetrics(prometheus::Registry& registry)
    : stage_seconds_(&prometheus::BuildHistogram()
                          .Name("fedmoe_round_stage_seconds")
                          .Help("How long each round stage stayed open, by stage")
                          .Register(registry)),
      round_seconds_(&prometheus::BuildHistogram()
                          .Name("fedmoe_round_seconds")
                          .Help("Round duration from cohort selection to its end, by outcome")
                          .Register(registry)) {
  auto& bytes = prometheus::BuildCounter()
                    .Name("fedmoe_transport_bytes_total")
                    .Help("Serialized federation messages on the mTLS port, by direction")
                    .Register(registry);
  bytes_in_ = &bytes.Add({{"direction", "in"}});
  bytes_out_ = &bytes.Add({{"direction", "out"}});
  polls_deferred_ = &prometheus::BuildCounter()
                         .Name("fedmoe_polls_deferred_total")
                         .Help(
                             "Client polls answered at once because limits.parked_polls "
                             "were held; each client was told when to poll again")
                         .Register(registry)
                         .Add({});
}

void CoordinatorMetrics::StageClosed(v1::RoundStage stage, absl::Duration took) {
  stage_seconds_->Add({{"stage", StageName(stage)}}, StageBuckets())
      .Observe(absl::ToDoubleSeconds(took));
}

void CoordinatorMetrics::RoundEnded(v1::RoundStage outcome, absl::Duration took) {
  round_seconds_
      ->Add({{"outcome", outcome == v1::ROUND_STAGE_COMMITTED ? "committed" : "aborted"}},
            StageBuckets())
      .Observe(absl::ToDoubleSeconds(took));
}

std::vector<prometheus::MetricFamily> StatusCollectable::Collect() const {
  absl::StatusOr<v1::GetStatusResponse> status = status_();
  const std::vector<PortHealth> ports = ports_();
  std::vector<prometheus::MetricFamily> families;
  bool accepting = true;
  std::vector<std::pair<std::string, double>> accepting_samples;
  std::vector<std::pair<std::string, double>> connection_samples;
  prometheus::MetricFamily refused{"fedmoe_connections_refused_total",
                                   "Connections refused or cut by the listener, by port and reason",
                                   prometheus::MetricType::Counter,
                                   {}};
  for (const PortHealth& port : ports) {
    accepting = accepting && port.stats.accepting;
    accepting_samples.emplace_back(port.name, port.stats.accepting ? 1 : 0);
    connection_samples.emplace_back(port.name, static_cast<double>(port.stats.open_connections));
    for (const auto& [reason, count] : port.stats.refused) {
      prometheus::ClientMetric& metric = refused.metric.emplace_back();
      metric.label = {{"port", port.name}, {"reason", reason}};
      metric.counter.value = static_cast<double>(count);
    }
  }
  families.push_back(metrics::Gauge(
      "fedmoe_up", "1 when the coordinator could read its state and both ports accept connections",
      status.ok() && accepting ? 1 : 0));
  families.push_back(metrics::Labelled(prometheus::MetricType::Gauge, "fedmoe_port_accepting",
                                       "0 while a port cannot accept (no file descriptor free)",
                                       "port", accepting_samples));
  families.push_back(metrics::Labelled(prometheus::MetricType::Gauge, "fedmoe_port_connections",
                                       "Connections open on a port", "port", connection_samples));
  if (!refused.metric.empty()) families.push_back(std::move(refused));
  if (!status.ok()) return families;
  families.push_back(metrics::Labelled(prometheus::MetricType::Gauge, "fedmoe_clients",
                                       "Clients by state: enrolled (not revoked), online (polled "
                                       "within twice the poll wait), revoked",
                                       "state",
                                       {{"enrolled", status->clients_enrolled()},
                                        {"online", status->clients_online()},
                                        {"revoked", status->clients_revoked()}}));
  families.push_back(metrics::Labelled(
      prometheus::MetricType::Counter, "fedmoe_rounds_total", "Rounds ended, by outcome", "outcome",
      {{"committed", static_cast<double>(status->rounds_committed())},
       {"aborted", static_cast<double>(status->rounds_aborted())}}));
  families.push_back(metrics::Gauge("fedmoe_model_version", "The newest published model version",
                                    static_cast<double>(status->model_version())));
  families.push_back(metrics::Gauge(
      "fedmoe_round_open", "1 while a round is between selection and its end",
      status->current_round_id() != 0 && status->current_round_stage() < v1::ROUND_STAGE_COMMITTED
          ? 1
          : 0));
  families.push_back(metrics::Gauge("fedmoe_privacy_epsilon_spent",
                                    "ε spent over the federation's life, at fedmoe_privacy_delta",
                                    status->epsilon_spent()));
  families.push_back(metrics::Gauge("fedmoe_privacy_delta", "The δ at which ε is reported",
                                    status->privacy_delta()));
  families.push_back(metrics::Gauge(
      "fedmoe_privacy_target_epsilon",
      "The ε budget (0: none); rounds that could pass it do not start", status->target_epsilon()));
  families.push_back(metrics::Gauge("fedmoe_polls_parked",
                                    "Client polls held open now (at most limits.parked_polls)",
                                    status->polls_parked()));
  families.push_back(metrics::Gauge("fedmoe_rounds_paused",
                                    "1 when rounds are paused (budget, max_rounds)",
                                    status->rounds_paused_reason().empty() ? 0 : 1));
  return families;
}

}  // namespace fedmoe::coordinator
