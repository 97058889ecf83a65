// The daemon's `serve:` block (issue [serve]): the OpenAI-compatible server of `fedmoe-client
// serve`, run inside the daemon over the newest global model this site holds. When a round
// brings a newer version, the server switches to it at a request boundary: requests already
// running finish on the model they started with, and later ones get the new one.
#ifndef FEDMOE_CLIENT_SERVE_HOST_H_
#define FEDMOE_CLIENT_SERVE_HOST_H_

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "client/serve/engine.h"
#include "client/serve/http_server.h"
#include "config/yaml_config.h"
#include "model/frozen_base.h"

namespace fedmoe::client {

struct ServeSettings {
  // host:port; empty: the daemon serves nothing.
  std::string listen;
  // The bearer token file (0600); required for an address other hosts reach.
  std::filesystem::path token_file;
  // The name requests give as "model"; empty: the federation's name.
  std::string model_name;
  // How the model is held to serve: serve.format (absent: as stored) and serve.int8_activations
  // (an INT8 model's products quantize their input too, model::FrozenBase::QuantizeActivations).
  model::HeldFormat held;
  // A PEFT adapter of the site's own over the global model (whole-model federations).
  std::filesystem::path adapter;
  // Where decoding runs: "auto" (the GPU when one answers), "cpu" or "cuda".
  std::string device = "auto";
  serve::EngineOptions engine;

  bool enabled() const { return !listen.empty(); }
  static void Read(config::YamlConfigReader& reader, ServeSettings* settings);
  std::string ToYaml() const;
};

class ServeHost {
 public:
  ServeHost(ServeSettings settings, std::string federation)
      : settings_(std::move(settings)), federation_(std::move(federation)) {}
  // Requests still running end with 503 before the server's workers are waited for.
  ~ServeHost();
  ServeHost(const ServeHost&) = delete;
  ServeHost& operator=(const ServeHost&) = delete;

  // Serves global version `version` from `directory` if it is newer than the one served: the
  // first model starts the engine and the HTTP server, a later one is published to them.
  // `base` is the frozen base an adapter federation's version (a PEFT directory) goes over.
  // A model that cannot be loaded, or a server that cannot start, is an error the daemon
  // logs; it keeps serving what it served.
  absl::Status Offer(uint64_t version, const std::filesystem::path& directory,
                     const std::optional<std::filesystem::path>& base);

  // The version served; 0 before the first.
  uint64_t version() const { return version_; }
  int port() const { return server_ == nullptr ? 0 : server_->port(); }

 private:
  ServeSettings settings_;
  std::string federation_;
  uint64_t version_ = 0;
  std::unique_ptr<serve::Engine> engine_;
  std::unique_ptr<serve::Server> server_;
};

}  // namespace fedmoe::client

#endif  // FEDMOE_CLIENT_SERVE_HOST_H_
