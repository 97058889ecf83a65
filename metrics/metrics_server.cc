#include "metrics/metrics_server.h"

#include <civetweb.h>
#include <prometheus/text_serializer.h>

#include <cstring>
#include <mutex>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace fedmoe::metrics {
namespace {

// Scrapes are small and rare; four workers leave room for a few stalled connections.
constexpr char kWorkerThreads[] = "4";
// A connection that sends no complete request, or does not read its answer, within this is
// closed, freeing its worker.
constexpr char kRequestTimeoutMs[] = "3000";

void Answer(mg_connection* connection, int status, const char* content_type,
            const std::string& body) {
  mg_printf(connection,
            "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
            "Connection: close\r\n\r\n",
            status, status == 200 ? "OK" : (status == 503 ? "Service Unavailable" : "Error"),
            content_type, body.size());
  mg_write(connection, body.data(), body.size());
}

bool IsGet(mg_connection* connection) {
  const mg_request_info* request = mg_get_request_info(connection);
  return request != nullptr && request->request_method != nullptr &&
         (std::strcmp(request->request_method, "GET") == 0 ||
          std::strcmp(request->request_method, "HEAD") == 0);
}

// civetweb's own messages (a peer that vanished mid-request) are not the operator's concern.
int QuietLog(const mg_connection*, const char*) { return 1; }

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(listen.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("the metrics address \"", listen, "\" is not host:port"));
  }
  static std::once_flag initialized;
  std::call_once(initialized, [] { mg_init_library(0); });
  std::unique_ptr<MetricsServer> server(new MetricsServer());
  server->registry_ = std::make_shared<prometheus::Registry>();
  const char* options[] = {
      "listening_ports", listen.c_str(),      "num_threads", kWorkerThreads, "request_timeout_ms",
      kRequestTimeoutMs, "enable_keep_alive", "no",          nullptr};
  mg_callbacks callbacks{};
  callbacks.log_message = QuietLog;
  server->context_ = mg_start(&callbacks, nullptr, options);
  if (server->context_ == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", listen, " (address in use, or not of this host)"));
  }
  mg_set_request_handler(server->context_, "/metrics$", &MetricsServer::ServeMetrics, server.get());
  mg_set_request_handler(server->context_, "/health$", &MetricsServer::ServeHealth, server.get());
  mg_server_port ports[4] = {};
  const int count = mg_get_server_ports(server->context_, 4, ports);
  server->port_ = count > 0 ? ports[0].port : port;
  return server;
}

MetricsServer::~MetricsServer() {
  // Waits for the workers, so no scrape outlives the collectables it reads.
  if (context_ != nullptr) mg_stop(context_);
}

void MetricsServer::Add(const std::shared_ptr<prometheus::Collectable>& collectable) {
  absl::MutexLock lock(&mutex_);
  collectables_.push_back(collectable);
}

void MetricsServer::SetHealth(std::function<std::optional<std::string>()> problem) {
  absl::MutexLock lock(&mutex_);
  health_ = std::move(problem);
}

std::string MetricsServer::Scrape() {
  std::vector<std::shared_ptr<prometheus::Collectable>> alive = {registry_};
  {
    absl::MutexLock lock(&mutex_);
    std::erase_if(collectables_, [](const auto& weak) { return weak.expired(); });
    for (const auto& weak : collectables_) {
      if (auto collectable = weak.lock()) alive.push_back(std::move(collectable));
    }
  }
  std::vector<prometheus::MetricFamily> families;
  for (const auto& collectable : alive) {
    std::vector<prometheus::MetricFamily> collected = collectable->Collect();
    families.insert(families.end(), std::make_move_iterator(collected.begin()),
                    std::make_move_iterator(collected.end()));
  }
  std::ostringstream text;
  prometheus::TextSerializer().Serialize(text, families);
  return text.str();
}

int MetricsServer::ServeMetrics(mg_connection* connection, void* server) {
  if (!IsGet(connection)) {
    Answer(connection, 405, "text/plain", "only GET\n");
    return 405;
  }
  Answer(connection, 200, "text/plain; version=0.0.4",
         static_cast<MetricsServer*>(server)->Scrape());
  return 200;
}

int MetricsServer::ServeHealth(mg_connection* connection, void* server) {
  auto* self = static_cast<MetricsServer*>(server);
  std::function<std::optional<std::string>()> health;
  {
    absl::MutexLock lock(&self->mutex_);
    health = self->health_;
  }
  const std::optional<std::string> problem = health ? health() : std::nullopt;
  if (problem.has_value()) {
    Answer(connection, 503, "text/plain", absl::StrCat("not serving: ", *problem, "\n"));
    return 503;
  }
  Answer(connection, 200, "text/plain", "ok\n");
  return 200;
}

prometheus::MetricFamily Gauge(const std::string& name, const std::string& help, double value) {
  prometheus::MetricFamily family{name, help, prometheus::MetricType::Gauge, {}};
  family.metric.emplace_back();
  family.metric.back().gauge.value = value;
  return family;
}

prometheus::MetricFamily Counter(const std::string& name, const std::string& help, double value) {
  prometheus::MetricFamily family{name, help, prometheus::MetricType::Counter, {}};
  family.metric.emplace_back();
  family.metric.back().counter.value = value;
  return family;
}

prometheus::MetricFamily Labelled(prometheus::MetricType type, const std::string& name,
                                  const std::string& help, const std::string& label,
                                  const std::vector<std::pair<std::string, double>>& samples) {
  prometheus::MetricFamily family{name, help, type, {}};
  for (const auto& [label_value, value] : samples) {
    prometheus::ClientMetric& metric = family.metric.emplace_back();
    metric.label.push_back({label, label_value});
    if (type == prometheus::MetricType::Counter) {
      metric.counter.value = value;
    } else {
      metric.gauge.value = value;
    }
  }
  return family;
}

}  // namespace fedmoe::metrics
