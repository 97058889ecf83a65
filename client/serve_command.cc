#include "client/serve_command.h"

#include <csignal>
#include <filesystem>
#include <optional>

#include "absl/strings/str_cat.h"
#include "client/model_flags.h"
#include "client/serve/engine.h"
#include "client/serve/http_server.h"
#include "config/command_line.h"
#include "logging/log.h"

namespace fedmoe::client {
namespace {

using config::CommandLine;

int Fail(const absl::Status& status) { return config::ReportFailure("fedmoe-client", status); }

constexpr int64_t kMaxBatch = 1024;
constexpr int64_t kMaxQueue = 1 << 16;
constexpr int64_t kMaxPrefixCacheMb = int64_t{1} << 20;

// The engine's settings from the flags, with their defaults.
absl::StatusOr<serve::EngineOptions> EngineOptionsOf(const CommandLine& flags) {
  serve::EngineOptions options;
  struct IntSetting {
    const char* flag;
    int64_t* out;
    int64_t min;
    int64_t max;
  };
  int64_t prefix_cache_mb = static_cast<int64_t>(options.prefix_cache_bytes >> 20);
  for (const IntSetting& setting :
       {IntSetting{"max-batch", &options.max_batch, 1, kMaxBatch},
        IntSetting{"max-queue", &options.max_queue, 0, kMaxQueue},
        IntSetting{"prefill-chunk", &options.prefill_chunk, 1, int64_t{1} << 20},
        IntSetting{"max-prompt-tokens", &options.max_prompt_tokens, 1, int64_t{1} << 30},
        IntSetting{"max-tokens-limit", &options.max_tokens_limit, 1, int64_t{1} << 30},
        IntSetting{"prefix-cache-mb", &prefix_cache_mb, 0, kMaxPrefixCacheMb}}) {
    absl::StatusOr<int64_t> value =
        flags.IntOr(setting.flag, *setting.out, setting.min, setting.max);
    if (!value.ok()) return value.status();
    *setting.out = *value;
  }
  options.prefix_cache_bytes = static_cast<size_t>(prefix_cache_mb) << 20;
  return options;
}

}  // namespace

const char kServeUsage[] =
    R"(  serve --model DIR [--adapter DIR] [--int8 [--int8-activations] | --bf16]
        [--listen HOST:PORT] [--model-name NAME] [--token-file FILE] [--max-batch N]
        [--max-queue N] [--prefill-chunk N] [--max-prompt-tokens N] [--max-tokens-limit N]
        [--prefix-cache-mb MB] [--device auto|cpu|cuda] [--threads T]
      Serves DIR's model (with a PEFT adapter directory over it; --int8 or --bf16 holds the
      base in that format, and --int8-activations quantizes an INT8 base's inputs too) over
      an OpenAI-compatible HTTP API until SIGTERM or SIGINT:
      POST /v1/completions and /v1/chat/completions (stream: true for server-sent events),
      GET /v1/models, /health and /metrics. Listens on 127.0.0.1:8080 unless told otherwise;
      another address needs --token-file, a 0600 file whose token every request but /health
      must send as "Authorization: Bearer TOKEN". Requests are batched continuously, up to N
      at once (default 16); up to --max-queue more wait (default 64) and beyond that get 429.
      Prompts are prefilled --prefill-chunk tokens a step (default 256), and repeated prompt
      prefixes come from a cache of --prefix-cache-mb (default 256; 0 turns it off). Prompts
      over --max-prompt-tokens and max_tokens over --max-tokens-limit (default: the model's
      context) get 400. Requests name the model as NAME (default: DIR's last component).
      Decodes on the GPU when one answers (--device auto, the default) or where --device says.
      Logs one JSON line {"event":"serving","address":...} once it listens.
)";

int ServeCommand(const std::vector<std::string>& args) {
  auto flags = CommandLine::Parse(args,
                                  {"model", "adapter", "listen", "model-name", "token-file",
                                   "max-batch", "max-queue", "prefill-chunk", "max-prompt-tokens",
                                   "max-tokens-limit", "prefix-cache-mb", "device", "threads"},
                                  {"int8", "bf16", "int8-activations"});
  if (!flags.ok()) return Fail(flags.status());
  absl::StatusOr<std::string> model_dir = flags->Require("model");
  if (!model_dir.ok()) return Fail(model_dir.status());
  absl::StatusOr<serve::EngineOptions> engine_options = EngineOptionsOf(*flags);
  if (!engine_options.ok()) return Fail(engine_options.status());
  serve::ServerOptions server_options;
  server_options.listen = flags->Get("listen").value_or(server_options.listen);
  if (const std::optional<std::string> token_file = flags->Get("token-file")) {
    absl::StatusOr<std::string> token = serve::ReadTokenFile(*token_file);
    if (!token.ok()) return Fail(token.status());
    server_options.bearer_token = *std::move(token);
  }
  // Before the model loads, which takes a while for a large one.
  if (absl::Status status = serve::CheckExposure(server_options); !status.ok()) {
    return Fail(status);
  }
  if (absl::Status status = ApplyThreads(*flags); !status.ok()) return Fail(status);
  absl::StatusOr<model::Device> device = DeviceFlag(*flags);
  if (!device.ok()) return Fail(device.status());
  engine_options->make_decoder = DecoderOn(*device);
  absl::StatusOr<model::HeldFormat> held = HeldFormatFlags(*flags);
  if (!held.ok()) return Fail(held.status());
  const std::filesystem::path directory(*model_dir);
  std::string name =
      flags->Get("model-name")
          .value_or(directory.filename().empty() ? directory.parent_path().filename().string()
                                                 : directory.filename().string());
  std::optional<std::filesystem::path> adapter;
  if (const std::optional<std::string> adapter_dir = flags->Get("adapter")) adapter = *adapter_dir;

  absl::StatusOr<std::shared_ptr<const serve::ServedModel>> served =
      serve::ServedModel::Load(directory, adapter, *held, name);
  if (!served.ok()) return Fail(served.status());
  absl::StatusOr<std::unique_ptr<serve::Engine>> engine =
      serve::Engine::Start(*served, *engine_options);
  if (!engine.ok()) return Fail(engine.status());

  // A client that goes away mid-stream is noticed through failed writes, not a signal.
  std::signal(SIGPIPE, SIG_IGN);
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  // Blocked before the server's threads start, so that they inherit the mask and sigwait below
  // receives the signal.
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  absl::StatusOr<std::unique_ptr<serve::Server>> server =
      serve::Server::Start(**engine, *engine_options, server_options);
  if (!server.ok()) return Fail(server.status());
  LogEvent(LogLevel::kInfo, "serving")
      .Field("address", (*server)->address())
      .Field("model", (*served)->id)
      .Field("format", model::HeldFormatName((*served)->base))
      .Field("device", std::string(model::DeviceName(*device)))
      .Field("adapter", adapter.has_value() ? adapter->string() : std::string("none"))
      .Field("max_batch", (*engine_options).max_batch)
      .Field("auth", server_options.bearer_token.empty() ? "none" : "bearer");
  int signal = 0;
  sigwait(&signals, &signal);
  LogEvent(LogLevel::kInfo, "shutdown_requested").Field("signal", signal);
  // Requests still running end with 503 before the workers are waited for.
  (*engine)->Shutdown();
  server->reset();
  engine->reset();
  return 0;
}

}  // namespace fedmoe::client
