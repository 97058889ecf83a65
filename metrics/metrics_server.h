// The Prometheus scrape endpoint of fedmoe-coordinator and fedmoe-client: GET /metrics on a
// host:port of the operator's choosing (loopback by default, since the numbers describe the
// federation's activity), in the text exposition format, and GET /health (200 "ok", or 503
// with the reason). Metrics live in the server's registry, or in collectables that compute
// them at scrape time from the process's state.
//
// Served by civetweb (Debian's libcivetweb) with a few worker threads and short read and write
// timeouts, so that a client that connects and sends nothing, or reads slowly, holds one worker
// for at most a few seconds and never blocks the other scrapes.
#ifndef FEDMOE_METRICS_METRICS_SERVER_H_
#define FEDMOE_METRICS_METRICS_SERVER_H_

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

struct mg_context;
struct mg_connection;

namespace fedmoe::metrics {

class MetricsServer {
 public:
  // `listen` is host:port; port 0 takes a free one (see port()). InvalidArgument for a
  // malformed address, Unavailable when it cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& listen);

  prometheus::Registry& registry() { return *registry_; }
  // Collected at each scrape for as long as the caller keeps it alive.
  void Add(const std::shared_ptr<prometheus::Collectable>& collectable);
  // What /health asks: nullopt when healthy, else why not (one line). Without it, /health
  // answers ok while the process serves.
  void SetHealth(std::function<std::optional<std::string>()> problem);
  int port() const { return port_; }

  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;
  ~MetricsServer();

 private:
  MetricsServer() = default;
  static int ServeMetrics(mg_connection* connection, void* server);
  static int ServeHealth(mg_connection* connection, void* server);
  std::string Scrape();

  std::shared_ptr<prometheus::Registry> registry_;
  absl::Mutex mutex_;
  std::vector<std::weak_ptr<prometheus::Collectable>> collectables_ ABSL_GUARDED_BY(mutex_);
  std::function<std::optional<std::string>()> health_ ABSL_GUARDED_BY(mutex_);
  mg_context* context_ = nullptr;
  int port_ = 0;
};

// One unlabelled sample, for collectables that read their numbers at scrape time.
prometheus::MetricFamily Gauge(const std::string& name, const std::string& help, double value);
// One unlabelled counter, read at scrape time.
prometheus::MetricFamily Counter(const std::string& name, const std::string& help, double value);
// A family of samples that differ by one label.
prometheus::MetricFamily Labelled(prometheus::MetricType type, const std::string& name,
                                  const std::string& help, const std::string& label,
                                  const std::vector<std::pair<std::string, double>>& samples);

}  // namespace fedmoe::metrics

#endif  // FEDMOE_METRICS_METRICS_SERVER_H_
