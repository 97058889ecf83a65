// The client daemon's configuration (client.yaml, written by `enroll`) and the layout of its
// state directory.
#ifndef FEDMOE_CLIENT_CLIENT_CONFIG_H_
#define FEDMOE_CLIENT_CLIENT_CONFIG_H_

#include <filesystem>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/personal_model.h"
#include "client/privacy_policy.h"
#include "client/serve_host.h"
#include "client/train_options.h"
#include "config/command_line.h"
#include "model/forward.h"

namespace fedmoe::client {

// The directory is 0700; the key inside is 0600 and never leaves it.
struct ClientStateDir {
  std::filesystem::path root;

  std::filesystem::path key() const { return root / "client.key"; }
  std::filesystem::path certificate() const { return root / "client.pem"; }
  std::filesystem::path ca_certificate() const { return root / "ca.pem"; }
  std::filesystem::path config() const { return root / "client.yaml"; }
  // Written by the daemon after each poll, read by `fedmoe-client status`.
  std::filesystem::path status() const { return root / "status.json"; }
  // SecAgg+ peers' keys, trusted on first use (client/peer_keys.h).
  std::filesystem::path peer_keys() const { return root / "peer-keys"; }
  // The global models this client downloaded: v<N>/, the newest two.
  std::filesystem::path models() const { return root / "models"; }
  // The site's record-level privacy ledger (client/record_ledger.h).
  std::filesystem::path record_ledger() const { return root / "record-privacy.json"; }
  // The site's personal model (client/personal_model.h).
  std::filesystem::path personal() const { return root / "personal"; }
  // Frozen bases downloaded for adapter federations, one directory per content hash.
  std::filesystem::path bases() const { return root / "bases"; }
};

struct ClientConfig {
  std::string client_id;
  std::string federation;
  // host:port of the coordinator's mTLS port.
  std::string coordinator;
  ClientStateDir state_dir;
  // How long one PollTask may be held open by the coordinator.
  absl::Duration poll_max_wait = absl::Seconds(30);
  // Reconnect backoff: doubles from initial up to max, with full jitter.
  absl::Duration backoff_initial = absl::Seconds(1);
  absl::Duration backoff_max = absl::Seconds(60);
  std::string log_level = "info";
  // The organisation's private training data: a directory of .txt, .md and .jsonl files. It
  // never leaves this machine. Empty: the daemon polls but withdraws from rounds.
  std::filesystem::path data;
  // A federation of adapters' frozen base (issue [peft]), provisioned at this site once: a model
  // directory holding the weights the round spec names by content hash, in its format
  // (`fedmoe-client model hash` prints a base's). Opened once per daemon, memory-mapped. Empty:
  // the daemon downloads the base from the coordinator once and keeps it under bases().
  std::filesystem::path base;
  // CPU threads for local training; 0: all cores.
  int64_t threads = 0;
  // Where local training runs and the precision of its weight products (training.device: auto,
  // cpu or cuda; training.matmul_precision: auto, fp32 or bf16), resolved for this machine.
  ComputeSettings compute;
  // host:port of the Prometheus /metrics endpoint; empty turns it off. Loopback by default.
  std::string metrics_listen = "127.0.0.1:9465";
  // The site's privacy floor and record-level budget (privacy_policy.h).
  PrivacyPolicy privacy_policy;
  // The site's personal model: private experts, a Ditto copy, or none (personal_model.h).
  PersonalizationSettings personalization;
  // The OpenAI-compatible server over the newest global model (serve_host.h); off by default.
  ServeSettings serve;

  static absl::StatusOr<ClientConfig> Load(const std::filesystem::path& path);
  std::string ToYaml() const;
};

// The config that --config FILE names, or the one in --state-dir DIR.
absl::StatusOr<ClientConfig> LoadClientConfig(const config::CommandLine& flags);

}  // namespace fedmoe::client

#endif  // FEDMOE_CLIENT_CLIENT_CONFIG_H_
