#include "client/serve_host.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "client/model_flags.h"
#include "logging/log.h"
#include "model/compute.h"
#include "storage/file_status.h"

namespace fedmoe::client {

void ServeSettings::Read(config::YamlConfigReader& reader, ServeSettings* settings) {
  reader.Read("serve.listen", &settings->listen);
  std::string token_file;
  reader.Read("serve.token_file", &token_file);
  settings->token_file = token_file;
  reader.Read("serve.model_name", &settings->model_name);
  std::string format;
  reader.Read("serve.format", &format);
  if (!format.empty()) {
    absl::StatusOr<model::WeightFormat> parsed = model::ParseWeightFormat(format);
    if (parsed.ok()) {
      settings->held.weights = *parsed;
    } else {
      reader.Invalid("serve.format", absl::StrCat(std::string(parsed.status().message()),
                                                  " (or empty: as stored)"));
    }
  }
  reader.Read("serve.int8_activations", &settings->held.int8_activations);
  if (settings->held.int8_activations && settings->held.weights.has_value() &&
      *settings->held.weights != model::WeightFormat::kInt8) {
    reader.Invalid(
        "serve.int8_activations",
        absl::StrCat("needs an INT8 model (serve.format int8), not format '", format, "'"));
  }
  reader.Read("serve.device", &settings->device);
  // Resolved as training.device is, so that a device this host lacks is named at load too.
  if (const absl::StatusOr<model::Device> device = model::ResolveDevice(settings->device);
      !device.ok()) {
    reader.Invalid("serve.device", std::string(device.status().message()));
  }
  std::string adapter;
  reader.Read("serve.adapter", &adapter);
  settings->adapter = adapter;
  reader.Read("serve.max_batch", &settings->engine.max_batch);
  reader.Read("serve.max_queue", &settings->engine.max_queue);
  reader.Read("serve.prefill_chunk", &settings->engine.prefill_chunk);
  reader.Read("serve.max_prompt_tokens", &settings->engine.max_prompt_tokens);
  reader.Read("serve.max_tokens_limit", &settings->engine.max_tokens_limit);
  int64_t prefix_cache_mb = static_cast<int64_t>(settings->engine.prefix_cache_bytes >> 20);
  reader.Read("serve.prefix_cache_mb", &prefix_cache_mb);
  if (prefix_cache_mb < 0 || prefix_cache_mb > (int64_t{1} << 20)) {
    reader.Invalid("serve.prefix_cache_mb", "must be between 0 (off) and 1048576");
  } else {
    settings->engine.prefix_cache_bytes = static_cast<size_t>(prefix_cache_mb) << 20;
  }
  if (absl::Status status = settings->engine.Validate(); !status.ok()) {
    reader.Invalid("serve", std::string(status.message()));
  }
  if (!settings->adapter.empty() && !storage::IsDirectory(settings->adapter)) {
    reader.Invalid("serve.adapter",
                   absl::StrCat(settings->adapter.string(), " is not a directory"));
  }
  if (!settings->enabled()) return;
  serve::ServerOptions server;
  server.listen = settings->listen;
  if (!settings->token_file.empty()) {
    absl::StatusOr<std::string> token = serve::ReadTokenFile(settings->token_file.string());
    if (!token.ok()) {
      reader.Invalid("serve.token_file", std::string(token.status().message()));
      return;
    }
    server.bearer_token = *std::move(token);
  }
  if (absl::Status status = serve::CheckExposure(server); !status.ok()) {
    reader.Invalid("serve.listen", std::string(status.message()));
  }
}

std::string ServeSettings::ToYaml() const {
  return absl::StrCat(
      "# The OpenAI-compatible server over the newest global model this site holds; it switches\n"
      "# to each new version between requests. See docs/operations.md, \"Serve the model inside\n"
      "# the site\".\n"
      "serve:\n"
      "  # host:port; empty serves nothing. An address other hosts reach needs token_file.\n"
      "  listen: \"",
      listen,
      "\"\n"
      "  # A file (0600) with the bearer token every request but /health must send.\n"
      "  token_file: \"",
      token_file.string(),
      "\"\n"
      "  # The name requests give as \"model\"; empty: the federation's name.\n"
      "  model_name: \"",
      model_name,
      "\"\n"
      "  # Hold the model as fp32, bf16 or int8 to serve it; empty: as stored.\n"
      "  format: \"",
      held.weights.has_value() ? std::string(model::WeightFormatName(*held.weights)) : "",
      "\"\n"
      "  # With format int8 (or an INT8 model): quantize each product's input to int8 per token\n"
      "  # too, for faster decoding on the CPU.\n"
      "  int8_activations: ",
      held.int8_activations ? "true" : "false",
      "\n"
      "  # Where decoding runs: auto (the GPU when one answers; it shares the GPU with local\n"
      "  # training), cpu or cuda.\n"
      "  device: \"",
      device,
      "\"\n"
      "  # A PEFT adapter directory of this site's own over the global model; empty: none.\n"
      "  adapter: \"",
      adapter.string(),
      "\"\n"
      "  # Sequences generated at once, and requests waiting beyond them (then 429).\n"
      "  max_batch: ",
      engine.max_batch, "\n  max_queue: ", engine.max_queue,
      "\n"
      "  # Prompt tokens prefilled per step; prompts and max_tokens beyond these limits get 400\n"
      "  # (0: the model's context).\n"
      "  prefill_chunk: ",
      engine.prefill_chunk, "\n  max_prompt_tokens: ", engine.max_prompt_tokens,
      "\n  max_tokens_limit: ", engine.max_tokens_limit,
      "\n"
      "  # Keys and values of recent prompts kept for prompts that share their prefix; 0: off.\n"
      "  prefix_cache_mb: ",
      engine.prefix_cache_bytes >> 20, "\n");
}

ServeHost::~ServeHost() {
  if (engine_ != nullptr) engine_->Shutdown();
  server_.reset();
}

absl::Status ServeHost::Offer(uint64_t version, const std::filesystem::path& directory,
                              const std::optional<std::filesystem::path>& base) {
  if (!settings_.enabled() || version <= version_) return absl::OkStatus();
  const bool adapter_version = storage::PathExists(directory / "adapter_config.json");
  if (adapter_version && !base.has_value()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "global version ", version, " is an adapter and this site holds no base for it yet"));
  }
  std::optional<std::filesystem::path> adapter;
  if (adapter_version) {
    adapter = directory;
  } else if (!settings_.adapter.empty()) {
    adapter = settings_.adapter;
  }
  const std::string id = settings_.model_name.empty() ? federation_ : settings_.model_name;
  absl::StatusOr<std::shared_ptr<const serve::ServedModel>> served =
      serve::ServedModel::Load(adapter_version ? *base : directory, adapter, settings_.held, id);
  if (!served.ok()) return served.status();
  if (engine_ == nullptr) {
    absl::StatusOr<model::Device> device = model::ResolveDevice(settings_.device);
    if (!device.ok()) return device.status();
    settings_.engine.make_decoder = DecoderOn(*device);
    absl::StatusOr<std::unique_ptr<serve::Engine>> engine =
        serve::Engine::Start(*served, settings_.engine);
    if (!engine.ok()) return engine.status();
    serve::ServerOptions options;
    options.listen = settings_.listen;
    if (!settings_.token_file.empty()) {
      absl::StatusOr<std::string> token = serve::ReadTokenFile(settings_.token_file.string());
      if (!token.ok()) return token.status();
      options.bearer_token = *std::move(token);
    }
    absl::StatusOr<std::unique_ptr<serve::Server>> server =
        serve::Server::Start(**engine, settings_.engine, options);
    if (!server.ok()) return server.status();
    engine_ = *std::move(engine);
    server_ = *std::move(server);
  } else if (absl::Status status = engine_->Publish(*served); !status.ok()) {
    return status;
  }
  version_ = version;
  LogEvent(LogLevel::kInfo, "serving")
      .Field("address", server_->address())
      .Field("model", id)
      .Field("version", static_cast<int64_t>(version))
      .Field("format", model::HeldFormatName((*served)->base));
  return absl::OkStatus();
}

}  // namespace fedmoe::client
