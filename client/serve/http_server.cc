#include "client/serve/http_server.h"

#include <civetweb.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <prometheus/text_serializer.h>
#include <sys/stat.h>

#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "metrics/metrics_server.h"

namespace fedmoe::client::serve {
namespace {

// A connection that sends no complete request, or stops reading its answer, within this is
// closed and its worker freed.
constexpr char kRequestTimeoutMs[] = "30000";
// Workers beyond a full batch and a full queue: for 429s, /health and /metrics.
constexpr int64_t kSpareWorkers = 8;
// How often a stream that has nothing to send yet checks that its client is still there.
constexpr absl::Duration kStreamProbe = absl::Seconds(1);

const char* Reason(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 411:
      return "Length Required";
    case 413:
      return "Payload Too Large";
    case 429:
      return "Too Many Requests";
    case 503:
      return "Service Unavailable";
    default:
      return "Internal Server Error";
  }
}

// civetweb's own messages (a peer that vanished mid-request) are not the operator's concern.
int QuietLog(const mg_connection*, const char*) { return 1; }

// SHA-256 of `text`, so that token comparison takes the same time whatever the lengths.
std::vector<unsigned char> Digest(std::string_view text) {
  std::vector<unsigned char> digest(EVP_MAX_MD_SIZE);
  unsigned int size = 0;
  if (EVP_Digest(text.data(), text.size(), digest.data(), &size, EVP_sha256(), nullptr) != 1) {
    return {};
  }
  digest.resize(size);
  return digest;
}

bool SendChunk(mg_connection* connection, std::string_view data) {
  return mg_send_chunk(connection, data.data(), static_cast<unsigned int>(data.size())) > 0;
}

bool SendEvent(mg_connection* connection, std::string_view data) {
  return SendChunk(connection, absl::StrCat("data: ", std::string(data), "\n\n"));
}

ApiError ErrorFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kResourceExhausted:
      return {.http_status = 429,
              .message = std::string(status.message()),
              .type = "rate_limit_error",
              .param = "",
              .code = "server_busy"};
    case absl::StatusCode::kUnavailable:
      return {.http_status = 503,
              .message = std::string(status.message()),
              .type = "server_error",
              .param = "",
              .code = "unavailable"};
    case absl::StatusCode::kInvalidArgument:
      return {.http_status = 400,
              .message = std::string(status.message()),
              .type = "invalid_request_error",
              .param = "",
              .code = ""};
    default:
      return {.http_status = 500,
              .message = std::string(status.message()),
              .type = "server_error",
              .param = "",
              .code = ""};
  }
}

}  // namespace

bool IsLoopbackListen(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  const std::string host = colon == std::string::npos ? listen : listen.substr(0, colon);
  return host.starts_with("127.") || host == "localhost" || host == "[::1]";
}

absl::Status CheckExposure(const ServerOptions& options) {
  if (IsLoopbackListen(options.listen) || !options.bearer_token.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("serving on ", options.listen,
                   " without a bearer token would let anyone who reaches it use the model; give "
                   "--token-file or listen on 127.0.0.1"));
}

absl::StatusOr<std::string> ReadTokenFile(const std::string& path) {
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0) {
    return absl::NotFoundError(absl::StrCat("--token-file ", path, ": cannot read it"));
  }
  if ((info.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
    return absl::PermissionDeniedError(
        absl::StrFormat("--token-file %s is mode %04o; a bearer token must be readable by its "
                        "owner only (chmod 600)",
                        path, info.st_mode & 07777));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("--token-file ", path, ": cannot read it"));
  std::ostringstream contents;
  contents << in.rdbuf();
  std::string token(absl::StripAsciiWhitespace(contents.str()));
  if (token.empty() || token.find_first_of(" \t\r\n") != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("--token-file ", path, " must hold one token with no spaces"));
  }
  return token;
}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(Engine& engine,
                                                      const EngineOptions& engine_options,
                                                      const ServerOptions& options) {
  const size_t colon = options.listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(options.listen.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("the listen address \"", options.listen, "\" is not host:port"));
  }
  if (absl::Status status = CheckExposure(options); !status.ok()) return status;
  static std::once_flag initialized;
  std::call_once(initialized, [] { mg_init_library(0); });
  std::unique_ptr<Server> server(new Server(engine, options));
  const std::string workers =
      std::to_string(engine_options.max_batch + engine_options.max_queue + kSpareWorkers);
  const char* civetweb_options[] = {"listening_ports",
                                    options.listen.c_str(),
                                    "num_threads",
                                    workers.c_str(),
                                    "request_timeout_ms",
                                    kRequestTimeoutMs,
                                    "enable_keep_alive",
                                    "no",
                                    nullptr};
  mg_callbacks callbacks{};
  callbacks.log_message = QuietLog;
  server->context_ = mg_start(&callbacks, nullptr, civetweb_options);
  if (server->context_ == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve on ", options.listen, " (address in use, or not of this host)"));
  }
  mg_set_request_handler(server->context_, "/", &Server::Handle, server.get());
  mg_server_port ports[4] = {};
  const int count = mg_get_server_ports(server->context_, 4, ports);
  server->port_ = count > 0 ? ports[0].port : port;
  return server;
}

std::string Server::address() const {
  return absl::StrCat(options_.listen.substr(0, options_.listen.rfind(':')), ":", port_);
}

Server::~Server() {
  if (context_ != nullptr) mg_stop(context_);
}

int Server::Handle(mg_connection* connection, void* server) {
  return static_cast<Server*>(server)->Route(connection);
}

int Server::Answer(mg_connection* connection, int status, const std::string& content_type,
                   const std::string& body, const std::string& extra_headers) {
  mg_printf(connection,
            "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s"
            "Connection: close\r\n\r\n",
            status, Reason(status), content_type.c_str(), body.size(), extra_headers.c_str());
  mg_write(connection, body.data(), body.size());
  absl::MutexLock lock(&mutex_);
  ++responses_[status];
  return status;
}

int Server::Refuse(mg_connection* connection, const ApiError& error) {
  std::string headers;
  if (error.http_status == 429) headers = "Retry-After: 1\r\n";
  if (error.http_status == 401) headers = "WWW-Authenticate: Bearer\r\n";
  return Answer(connection, error.http_status, "application/json", ErrorBody(error), headers);
}

bool Server::Authorized(mg_connection* connection) const {
  if (options_.bearer_token.empty()) return true;
  const char* header = mg_get_header(connection, "Authorization");
  constexpr std::string_view kScheme = "Bearer ";
  const std::string_view given = header == nullptr ? "" : header;
  const std::string_view token =
      given.size() > kScheme.size() &&
              absl::AsciiStrToLower(std::string(given.substr(0, kScheme.size()))) == "bearer "
          ? given.substr(kScheme.size())
          : std::string_view();
  const std::vector<unsigned char> expected = Digest(options_.bearer_token);
  const std::vector<unsigned char> presented = Digest(token);
  return !token.empty() && expected.size() == presented.size() && !expected.empty() &&
         CRYPTO_memcmp(expected.data(), presented.data(), expected.size()) == 0;
}

int Server::Route(mg_connection* connection) {
  const mg_request_info* request = mg_get_request_info(connection);
  const std::string_view method =
      request != nullptr && request->request_method != nullptr ? request->request_method : "";
  const std::string_view path =
      request != nullptr && request->local_uri != nullptr ? request->local_uri : "";
  const auto wrong_method = [&](std::string_view allowed) {
    return Answer(
        connection, 405, "application/json",
        ErrorBody({.http_status = 405,
                   .message = absl::StrCat(std::string(path), " takes ", std::string(allowed)),
                   .type = "invalid_request_error",
                   .param = "",
                   .code = ""}),
        absl::StrCat("Allow: ", std::string(allowed), "\r\n"));
  };
  if (path == "/health") {
    if (method != "GET" && method != "HEAD") return wrong_method("GET");
    return Answer(connection, 200, "application/json", "{\"status\":\"ok\"}");
  }
  if (!Authorized(connection)) {
    return Refuse(connection, {.http_status = 401,
                               .message = "a valid bearer token is required "
                                          "(Authorization: Bearer <token>)",
                               .type = "authentication_error",
                               .param = "",
                               .code = "invalid_api_key"});
  }
  if (path == "/metrics") {
    if (method != "GET") return wrong_method("GET");
    return Answer(connection, 200, "text/plain; version=0.0.4", Metrics());
  }
  if (path == "/v1/models") {
    if (method != "GET") return wrong_method("GET");
    const std::shared_ptr<const ServedModel> model = engine_.model();
    return Answer(connection, 200, "application/json",
                  ModelsBody(model->id, static_cast<int64_t>(std::time(nullptr))));
  }
  if (path == "/v1/completions" || path == "/v1/chat/completions") {
    if (method != "POST") return wrong_method("POST");
    return Complete(connection, path == "/v1/completions" ? Endpoint::kCompletions
                                                          : Endpoint::kChatCompletions);
  }
  return Refuse(connection,
                {.http_status = 404,
                 .message = absl::StrCat("no route ", std::string(method), " ", std::string(path)),
                 .type = "invalid_request_error",
                 .param = "",
                 .code = "not_found"});
}

int Server::Complete(mg_connection* connection, Endpoint endpoint) {
  const mg_request_info* request = mg_get_request_info(connection);
  if (request->content_length > static_cast<long long>(options_.max_body_bytes)) {
    return Refuse(connection, {.http_status = 413,
                               .message = absl::StrCat(
                                   "the request body is ", request->content_length,
                                   " bytes; this server takes at most ", options_.max_body_bytes),
                               .type = "invalid_request_error",
                               .param = "",
                               .code = ""});
  }
  std::string body;
  char buffer[16384];
  for (;;) {
    const int read = mg_read(connection, buffer, sizeof(buffer));
    if (read <= 0) break;
    body.append(buffer, static_cast<size_t>(read));
    if (body.size() > options_.max_body_bytes) {
      return Refuse(connection, {.http_status = 413,
                                 .message = absl::StrCat("the request body is over ",
                                                         options_.max_body_bytes, " bytes"),
                                 .type = "invalid_request_error",
                                 .param = "",
                                 .code = ""});
    }
  }
  CompletionCall call;
  if (std::optional<ApiError> error = ParseCompletionCall(body, endpoint, call)) {
    return Refuse(connection, *error);
  }
  const std::shared_ptr<const ServedModel> model = engine_.model();
  if (!call.model.empty() && call.model != model->id) {
    return Refuse(
        connection,
        {.http_status = 404,
         .message = absl::StrCat("the model \"", call.model,
                                 "\" is not served here; GET /v1/models lists \"", model->id, "\""),
         .type = "invalid_request_error",
         .param = "model",
         .code = "model_not_found"});
  }
  absl::StatusOr<std::shared_ptr<Completion>> completion =
      engine_.Submit(call.prompt, call.options, call.max_tokens_given);
  if (!completion.ok()) return Refuse(connection, ErrorFor(completion.status()));
  const ResponseHeader header{.id = NextId(endpoint),
                              .created = static_cast<int64_t>(std::time(nullptr)),
                              .model = (*completion)->model_id()};
  if (call.stream) return Stream(connection, call, *completion, header);

  std::string text;
  for (;;) {
    Completion::Update update = (*completion)->Wait(absl::Seconds(1));
    text += update.text;
    if (update.done) break;
  }
  if (absl::Status status = (*completion)->status(); !status.ok()) {
    return Refuse(connection, ErrorFor(status));
  }
  const Usage usage{.prompt_tokens = (*completion)->prompt_tokens(),
                    .completion_tokens = (*completion)->completion_tokens(),
                    .cached_tokens = (*completion)->cached_prompt_tokens()};
  return Answer(connection, 200, "application/json",
                CompletionBody(endpoint, header, text, (*completion)->finish_reason(), usage));
}

int Server::Stream(mg_connection* connection, const CompletionCall& call,
                   const std::shared_ptr<Completion>& completion, const ResponseHeader& header) {
  mg_printf(connection,
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
  {
    absl::MutexLock lock(&mutex_);
    ++responses_[200];
  }
  bool first = true;
  bool connected = true;
  for (;;) {
    Completion::Update update = completion->Wait(kStreamProbe);
    if (!update.text.empty()) {
      connected = SendEvent(connection,
                            StreamChunk(call.endpoint, header, update.text, std::nullopt, first));
      first = false;
    } else if (!update.done) {
      // An SSE comment, which clients ignore: a write is how a vanished client shows.
      connected = SendChunk(connection, ": waiting\n\n");
    }
    if (!connected) {
      completion->Cancel();
      return 200;
    }
    if (update.done) break;
  }
  if (absl::Status status = completion->status(); !status.ok()) {
    SendEvent(connection, ErrorBody(ErrorFor(status)));
  } else {
    SendEvent(connection,
              StreamChunk(call.endpoint, header, "", completion->finish_reason(), first));
    if (call.include_usage) {
      SendEvent(connection, UsageChunk(call.endpoint, header,
                                       {.prompt_tokens = completion->prompt_tokens(),
                                        .completion_tokens = completion->completion_tokens(),
                                        .cached_tokens = completion->cached_prompt_tokens()}));
    }
  }
  SendEvent(connection, "[DONE]");
  mg_send_chunk(connection, "", 0);
  return 200;
}

std::string Server::NextId(Endpoint endpoint) {
  // Unique across restarts without coordination: a random process prefix and a counter.
  static const std::string prefix = [] {
    unsigned char random[6] = {};
    RAND_bytes(random, sizeof(random));
    std::string hex;
    for (const unsigned char byte : random) absl::StrAppend(&hex, absl::Hex(byte, absl::kZeroPad2));
    return hex;
  }();
  return absl::StrCat(endpoint == Endpoint::kCompletions ? "cmpl-" : "chatcmpl-", prefix,
                      absl::Hex(next_id_.fetch_add(1), absl::kZeroPad8));
}

std::string Server::Metrics() const {
  const EngineStats stats = engine_.stats();
  std::vector<std::pair<std::string, double>> responses;
  {
    absl::MutexLock lock(&mutex_);
    for (const auto& [status, count] : responses_) {
      responses.emplace_back(std::to_string(status), static_cast<double>(count));
    }
  }
  const auto number = [](auto value) { return static_cast<double>(value); };
  std::vector<prometheus::MetricFamily> families = {
      metrics::Labelled(prometheus::MetricType::Counter, "fedmoe_serve_requests_total",
                        "Requests the engine took, by how they ended", "outcome",
                        {{"finished", number(stats.requests_finished)},
                         {"cancelled", number(stats.requests_cancelled)},
                         {"failed", number(stats.requests_failed)},
                         {"refused_busy", number(stats.requests_refused_busy)}}),
      metrics::Labelled(prometheus::MetricType::Counter, "fedmoe_serve_http_responses_total",
                        "HTTP responses by status", "code", responses),
      metrics::Gauge("fedmoe_serve_queued_requests", "Requests waiting to join the batch",
                     number(stats.queued)),
      metrics::Gauge("fedmoe_serve_active_sequences", "Sequences in the running batch",
                     number(stats.active)),
      metrics::Counter("fedmoe_serve_prompt_tokens_total", "Prompt tokens of admitted requests",
                       number(stats.prompt_tokens)),
      metrics::Counter("fedmoe_serve_prefix_cache_tokens_total",
                       "Prompt tokens whose keys and values came from the prefix cache",
                       number(stats.prefix_cache_tokens)),
      metrics::Gauge("fedmoe_serve_prefix_cache_bytes", "Bytes the prefix cache holds",
                     number(stats.prefix_cache_bytes)),
      metrics::Counter("fedmoe_serve_generated_tokens_total", "Tokens generated",
                       number(stats.generated_tokens)),
      metrics::Counter("fedmoe_serve_steps_total", "Batched decoding steps", number(stats.steps)),
      metrics::Counter("fedmoe_serve_time_to_first_token_seconds_sum",
                       "Seconds from submission to the first token, summed",
                       stats.time_to_first_token_seconds_sum),
      metrics::Counter("fedmoe_serve_time_to_first_token_seconds_count",
                       "Requests that reached their first token", number(stats.first_tokens)),
      metrics::Labelled(prometheus::MetricType::Gauge, "fedmoe_serve_model_info",
                        "The model served to new requests", "model", {{engine_.model()->id, 1}}),
  };
  std::ostringstream text;
  prometheus::TextSerializer().Serialize(text, families);
  return text.str();
}

}  // namespace fedmoe::client::serve
