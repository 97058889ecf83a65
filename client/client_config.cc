#include "client/client_config.h"

#include "absl/strings/str_cat.h"
#include "client/train_options.h"
#include "config/yaml_config.h"
#include "logging/log.h"
#include "pki/spiffe_id.h"
#include "storage/file_status.h"

namespace fedmoe::client {

absl::StatusOr<ClientConfig> ClientConfig::Load(const std::filesystem::path& path) {
  absl::StatusOr<config::YamlConfigReader> reader = config::YamlConfigReader::FromFile(path);
  if (!reader.ok()) return reader.status();
  ClientConfig config;
  std::string state_dir;
  for (const char* key : {"client_id", "federation", "coordinator", "state_dir"}) {
    reader->Require(key);
  }
  reader->Read("client_id", &config.client_id);
  reader->Read("federation", &config.federation);
  reader->Read("coordinator", &config.coordinator);
  reader->Read("state_dir", &state_dir);
  reader->Read("poll.max_wait", &config.poll_max_wait);
  reader->Read("poll.backoff_initial", &config.backoff_initial);
  reader->Read("poll.backoff_max", &config.backoff_max);
  reader->Read("log_level", &config.log_level);
  std::string data;
  reader->Read("training.data", &data);
  config.data = data;
  std::string base;
  reader->Read("training.base", &base);
  config.base = base;
  reader->Read("training.threads", &config.threads);
  ReadComputeSettings(*reader, "training.", &config.compute);
  reader->Read("metrics.listen", &config.metrics_listen);
  PrivacyPolicy::Read(*reader, &config.privacy_policy);
  PersonalizationSettings::Read(*reader, &config.personalization);
  ServeSettings::Read(*reader, &config.serve);
  if (config.threads < 0 || config.threads > 1024) {
    reader->Invalid("training.threads", "must be between 0 (all cores) and 1024");
  }
  if (!config.data.empty() && !storage::IsDirectory(config.data)) {
    reader->Invalid("training.data", absl::StrCat(config.data.string(), " is not a directory"));
  }
  if (!config.base.empty() && !storage::IsDirectory(config.base)) {
    reader->Invalid("training.base", absl::StrCat(config.base.string(), " is not a directory"));
  }
  config.state_dir.root = state_dir;
  if (!config.client_id.empty()) {
    if (absl::Status status = pki::ValidateName("client id", config.client_id); !status.ok()) {
      reader->Invalid("client_id", std::string(status.message()));
    }
  }
  if (config.poll_max_wait < absl::Seconds(1) || config.poll_max_wait > absl::Minutes(10)) {
    reader->Invalid("poll.max_wait", "must be between 1s and 10m");
  }
  if (config.backoff_initial < absl::Milliseconds(10) ||
      config.backoff_max < config.backoff_initial) {
    reader->Invalid("poll.backoff_initial",
                    "must be at least 10ms and no more than poll.backoff_max");
  }
  if (absl::StatusOr<LogLevel> level = ParseLogLevel(config.log_level); !level.ok()) {
    reader->Invalid("log_level", std::string(level.status().message()));
  }
  if (absl::Status status = reader->Finish(); !status.ok()) return status;
  return config;
}

absl::StatusOr<ClientConfig> LoadClientConfig(const config::CommandLine& flags) {
  if (auto path = flags.Get("config")) return ClientConfig::Load(*path);
  if (auto dir = flags.Get("state-dir")) return ClientConfig::Load(ClientStateDir{*dir}.config());
  return absl::InvalidArgumentError("--config FILE or --state-dir DIR is required");
}

std::string ClientConfig::ToYaml() const {
  return absl::StrCat(
      "# fedmoe client daemon configuration, written by `fedmoe-client enroll`.\n"
      "# Run with: fedmoe-client run --config THIS_FILE. Unknown keys are errors.\n\n"
      "# The identity this daemon enrolled as; it must match its certificate.\n"
      "client_id: ",
      client_id, "\nfederation: ", federation,
      "\n"
      "# host:port of the coordinator's mTLS port. The daemon only dials out.\n"
      "coordinator: ",
      coordinator,
      "\n"
      "# Holds client.key (0600), client.pem, ca.pem and status.json.\n"
      "state_dir: ",
      state_dir.root.string(),
      "\n\n"
      "poll:\n"
      "  # Longest the coordinator may hold a poll open (it may cap it lower).\n"
      "  max_wait: ",
      absl::FormatDuration(poll_max_wait),
      "\n"
      "  # Reconnect backoff after an error: doubles from backoff_initial to backoff_max,\n"
      "  # with full jitter so that many clients do not reconnect in step.\n"
      "  backoff_initial: ",
      absl::FormatDuration(backoff_initial), "\n  backoff_max: ", absl::FormatDuration(backoff_max),
      "\n\n# debug, info, warning or error. Logs are JSON lines on stderr.\nlog_level: ", log_level,
      "\n\n"
      "training:\n"
      "  # The private data this client fine-tunes on (.txt, .md, .jsonl); it never leaves this\n"
      "  # machine. Empty: the daemon takes part in no round.\n"
      "  data: \"",
      data.string(),
      "\"\n"
      "  # A federation that trains adapters names its frozen base by content hash; this is\n"
      "  # where this site holds it (a model directory; `fedmoe-client model hash` shows its\n"
      "  # hash). Empty: the daemon downloads the coordinator's copy once, checks its hash and\n"
      "  # keeps it in the state directory (bases/).\n"
      "  base: \"",
      base.string(),
      "\"\n"
      "  # CPU threads for local training; 0 uses every core.\n"
      "  threads: ",
      threads,
      "\n"
      "  # Where training runs: cpu, cuda, or auto (the GPU when one answers).\n"
      "  device: ",
      compute.device_name,
      "\n"
      "  # Weight products in bf16 (mixed precision) or fp32; auto: bf16 on a GPU, and on a CPU\n"
      "  # with AMX or AVX-512 BF16.\n"
      "  matmul_precision: ",
      compute.matmul_precision_name,
      "\n\n"
      "metrics:\n"
      "  # Prometheus /metrics endpoint, host:port; empty turns it off.\n"
      "  listen: \"",
      metrics_listen, "\"\n\n", privacy_policy.ToYaml(), "\n", personalization.ToYaml(), "\n",
      serve.ToYaml());
}

}  // namespace fedmoe::client
