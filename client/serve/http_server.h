// The HTTP face of `fedmoe-client serve` (issue [serve]): the OpenAI-compatible API over the
// serving engine, served by civetweb (Debian's libcivetweb, which the metrics endpoint already
// uses; no HTTP parsing of ours).
//
//   POST /v1/completions, /v1/chat/completions   (stream: true answers server-sent events)
//   GET  /v1/models, /health, /metrics           (Prometheus text, as the daemon's)
//
// Every route but /health asks for `Authorization: Bearer <token>` when a token is set, compared
// in constant time. Each request holds one worker thread; there are enough for a full batch, a
// full queue and a few more, so a request beyond the queue is answered 429 at once rather than
// left waiting for a worker. A streaming client that goes away cancels its request at the next
// write; while a request waits for its first token, a comment line every second finds out.
#ifndef FEDMOE_CLIENT_SERVE_HTTP_SERVER_H_
#define FEDMOE_CLIENT_SERVE_HTTP_SERVER_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "client/serve/engine.h"
#include "client/serve/openai_api.h"

struct mg_context;
struct mg_connection;

namespace fedmoe::client::serve {

struct ServerOptions {
  // host:port; port 0 takes a free one (see Server::port()).
  std::string listen = "127.0.0.1:8080";
  // The bearer token every request but /health must carry; none when empty.
  std::string bearer_token;
  // Request bodies larger than this are refused with 413.
  size_t max_body_bytes = size_t{1} << 20;
};

// True for 127.0.0.0/8, ::1 and "localhost": an address only this host reaches.
bool IsLoopbackListen(const std::string& listen);

// OK, or InvalidArgument when `options` would serve an address other hosts reach without a
// bearer token.
absl::Status CheckExposure(const ServerOptions& options);

// Reads a bearer token file: one line, owner-only (0600 or 0400). NotFound when it cannot be
// read, PermissionDenied when group or others may read it, InvalidArgument when it is empty.
absl::StatusOr<std::string> ReadTokenFile(const std::string& path);

class Server {
 public:
  // Serves `engine` (which must outlive the server). InvalidArgument for a malformed address or
  // a non-loopback one without a bearer token; Unavailable when it cannot be bound.
  static absl::StatusOr<std::unique_ptr<Server>> Start(Engine& engine,
                                                       const EngineOptions& engine_options,
                                                       const ServerOptions& options);
  // Stops accepting and waits for the workers.
  ~Server();

  int port() const { return port_; }
  // host:port as bound: the listen address with port 0 replaced by the port taken.
  std::string address() const;

  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

 private:
  Server(Engine& engine, ServerOptions options) : engine_(engine), options_(std::move(options)) {}

  static int Handle(mg_connection* connection, void* server);
  int Route(mg_connection* connection);
  int Complete(mg_connection* connection, Endpoint endpoint);
  int Stream(mg_connection* connection, const CompletionCall& call,
             const std::shared_ptr<Completion>& completion, const ResponseHeader& header);
  int Answer(mg_connection* connection, int status, const std::string& content_type,
             const std::string& body, const std::string& extra_headers = "");
  int Refuse(mg_connection* connection, const ApiError& error);
  bool Authorized(mg_connection* connection) const;
  std::string Metrics() const;
  std::string NextId(Endpoint endpoint);

  Engine& engine_;
  const ServerOptions options_;
  mg_context* context_ = nullptr;
  int port_ = 0;
  std::atomic<uint64_t> next_id_{1};
  mutable absl::Mutex mutex_;
  // Responses by HTTP status, for /metrics.
  std::map<int, int64_t> responses_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace fedmoe::client::serve

#endif  // FEDMOE_CLIENT_SERVE_HTTP_SERVER_H_
