// The Prometheus scrape endpoint of fedmoe-coordinator and fedmoe-client: GET /metrics on a
// host:port of the operator's choosing (loopback by default, since the numbers describe the
// federation's activity), in the text exposition format. Metrics live in the server's
// registry, or in collectables that compute them at scrape time from the process's state.
#ifndef FEDMOE_METRICS_METRICS_SERVER_H_
#define FEDMOE_METRICS_METRICS_SERVER_H_

#include <prometheus/collectable.h>
#include <prometheus/exposer.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace fedmoe::metrics {

class MetricsServer {
 public:
  // `listen` is host:port; port 0 takes a free one (see port()). InvalidArgument for a
  // malformed address, Unavailable when it cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& listen);

  prometheus::Registry& registry() { return *registry_; }
  // Collected at each scrape for as long as the caller keeps it alive.
  void Add(const std::shared_ptr<prometheus::Collectable>& collectable);
  int port() const { return port_; }

 private:
  MetricsServer() = default;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
};

// One unlabelled sample, for collectables that read their numbers at scrape time.
prometheus::MetricFamily Gauge(const std::string& name, const std::string& help, double value);
// A family of samples that differ by one label.
prometheus::MetricFamily Labelled(prometheus::MetricType type, const std::string& name,
                                  const std::string& help, const std::string& label,
                                  const std::vector<std::pair<std::string, double>>& samples);

}  // namespace fedmoe::metrics

#endif  // FEDMOE_METRICS_METRICS_SERVER_H_
