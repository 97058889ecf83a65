// fedmoe-client: enrollment, the client daemon, and its local status.
//
// Exit status: 0 success, 1 the operation failed (the message says why), 2 bad usage,
// 3 (run) the coordinator refused this client, e.g. after revocation: do not restart.
#include <algorithm>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "client/client_config.h"
#include "client/daemon.h"
#include "client/enroll.h"
#include "client/explain_command.h"
#include "client/generate_command.h"
#include "client/model_commands.h"
#include "client/model_sync.h"
#include "client/peer_keys.h"
#include "client/privacy_commands.h"
#include "client/serve_command.h"
#include "client/train_command.h"
#include "config/command_line.h"
#include "logging/grpc_log.h"
#include "logging/log.h"
#include "model/compute.h"
#include "pki/certificate.h"
#include "pki/tls_policy.h"

namespace fedmoe::client {
namespace {

using config::CommandLine;

constexpr char kUsage[] = R"(usage: fedmoe-client COMMAND [FLAGS]

  enroll --coordinator HOST:PORT --token TOKEN --ca-fingerprint SHA256 --state-dir DIR
      Join a federation once: HOST:PORT is the coordinator's enrollment port. The key pair is
      made here and never leaves DIR; the coordinator is trusted only if its CA has the given
      fingerprint. Writes DIR/client.yaml.
  run --config FILE
      Run the daemon until SIGTERM or SIGINT.
  status (--state-dir DIR | --config FILE) [--json]
      What this client is enrolled as, the global and personal models it holds, and what its
      daemon last reported.
  personal show (--state-dir DIR | --config FILE) [--json]
  personal reset (--state-dir DIR | --config FILE)
      The site's personal model (personalization: in client.yaml): what it holds, or remove
      it, private experts included, so that the next round starts fresh ones. Stop the daemon
      before a reset.
  peers list (--state-dir DIR | --config FILE)
  peers forget CLIENT_ID (--state-dir DIR | --config FILE)
      The key this site pinned for each SecAgg+ peer on first sight. A round in which a peer
      shows another key, without a change signed by the pinned one, is refused. forget drops
      a pin, once the peer's operator confirmed out of band that it lost its key.
  --check-config FILE
      Validate a client.yaml without starting anything: prints "FILE: ok", or each problem
      as FILE:LINE: KEY: what is wrong, and exits 1.
)";

int Fail(const absl::Status& status) { return config::ReportFailure("fedmoe-client", status); }

int EnrollCommand(const std::vector<std::string>& args) {
  auto flags =
      CommandLine::Parse(args, {"coordinator", "token", "ca-fingerprint", "state-dir", "data"}, {});
  if (!flags.ok()) return Fail(flags.status());
  EnrollOptions options;
  for (auto [flag, out] :
       {std::pair{"coordinator", &options.coordinator}, std::pair{"token", &options.token},
        std::pair{"ca-fingerprint", &options.ca_fingerprint}}) {
    auto value = flags->Require(flag);
    if (!value.ok()) return Fail(value.status());
    *out = *value;
  }
  auto state_dir = flags->Require("state-dir");
  if (!state_dir.ok()) return Fail(state_dir.status());
  options.state_dir = *state_dir;
  options.data = flags->Get("data").value_or("");
  absl::StatusOr<ClientConfig> config = Enroll(options);
  if (!config.ok()) return Fail(config.status());
  std::printf(
      "enrolled as '%s' in federation '%s'\n"
      "  coordinator: %s\n"
      "  state:       %s (key is 0600 and never leaves it)\n"
      "start the daemon with: fedmoe-client run --config %s\n",
      config->client_id.c_str(), config->federation.c_str(), config->coordinator.c_str(),
      config->state_dir.root.c_str(), config->state_dir.config().c_str());
  return 0;
}

int RunCommand(const std::vector<std::string>& args) {
  auto flags = CommandLine::Parse(args, {"config"}, {});
  if (!flags.ok()) return Fail(flags.status());
  if (!flags->Has("config")) return Fail(absl::InvalidArgumentError("--config is required"));
  absl::StatusOr<ClientConfig> config = LoadClientConfig(*flags);
  if (!config.ok()) return Fail(config.status());
  if (auto level = ParseLogLevel(config->log_level); level.ok()) SetMinLogLevel(*level);

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  // SIGUSR1 only wakes the waiter when the daemon ends on its own.
  sigaddset(&signals, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  ClientDaemon daemon(*config);
  std::thread signal_waiter([&daemon, signals] {
    int signal = 0;
    sigwait(&signals, &signal);
    if (signal == SIGTERM || signal == SIGINT) {
      LogEvent(LogLevel::kInfo, "shutdown_requested").Field("signal", signal);
    }
    daemon.Stop();
  });
  const absl::Status status = daemon.Run();
  // Wakes the waiter if the daemon ended on its own.
  pthread_kill(signal_waiter.native_handle(), SIGUSR1);
  signal_waiter.join();
  if (status.code() == absl::StatusCode::kPermissionDenied) {
    Fail(status);
    return kExitRevoked;
  }
  return status.ok() ? 0 : Fail(status);
}

// The personal model's personal.json as one JSON value (null when there is none).
absl::StatusOr<std::string> PersonalJson(const ClientConfig& config) {
  const PersonalModelStore store(config.state_dir.personal());
  if (!store.Exists()) return std::string("null");
  absl::StatusOr<PersonalModelInfo> info = store.Info();
  if (!info.ok()) return info.status();
  std::string json = info->ToJson();
  json.erase(std::remove(json.begin(), json.end(), '\n'), json.end());
  return json;
}

std::string PersonalLine(const ClientConfig& config) {
  const PersonalModelStore store(config.state_dir.personal());
  const std::string configured =
      absl::StrCat("configured: ", std::string(PersonalModeName(config.personalization.mode)));
  if (!store.Exists()) return absl::StrCat("none yet (", configured, ")");
  absl::StatusOr<PersonalModelInfo> info = store.Info();
  if (!info.ok()) return std::string(info.status().message());
  const std::string what =
      info->mode == PersonalMode::kPrivateExperts
          ? absl::StrCat("global model v", info->global_version, " plus ", info->private_experts,
                         " private experts per layer")
          : absl::StrCat("a Ditto copy pulled toward global model v", info->global_version);
  return absl::StrCat(what, ", trained locally in ", info->rounds_trained, " rounds (",
                      info->local_steps, " steps), in ", store.directory().string(), "; ",
                      configured);
}

int StatusCommand(const std::vector<std::string>& args) {
  auto flags = CommandLine::Parse(args, {"config", "state-dir"}, {"json"});
  if (!flags.ok()) return Fail(flags.status());
  absl::StatusOr<ClientConfig> config = LoadClientConfig(*flags);
  if (!config.ok()) return Fail(config.status());
  absl::StatusOr<pki::Certificate> certificate =
      pki::Certificate::ReadFile(config->state_dir.certificate());
  if (!certificate.ok()) return Fail(certificate.status());
  std::string daemon = "{}";
  if (std::ifstream in(config->state_dir.status()); in) {
    std::ostringstream text;
    text << in.rdbuf();
    daemon = text.str();
    while (!daemon.empty() && (daemon.back() == '\n' || daemon.back() == ' ')) daemon.pop_back();
  }
  const std::string not_after =
      absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", certificate->NotAfter(), absl::UTCTimeZone());
  const uint64_t global_version = NewestLocalVersion(config->state_dir.models());
  absl::StatusOr<std::string> personal = PersonalJson(*config);
  if (!personal.ok()) return Fail(personal.status());
  if (flags->Has("json")) {
    std::string out = "{\"client_id\":\"";
    AppendJsonEscaped(config->client_id, out);
    out += "\",\"federation\":\"";
    AppendJsonEscaped(config->federation, out);
    out += "\",\"coordinator\":\"";
    AppendJsonEscaped(config->coordinator, out);
    out += "\",\"certificate_serial\":\"" + certificate->SerialHex() +
           "\",\"certificate_not_after\":\"" + not_after +
           "\",\"global_model_version\":" + std::to_string(global_version) +
           ",\"personal_model\":" + *personal + ",\"daemon\":" + daemon + "}";
    std::printf("%s\n", out.c_str());
    return 0;
  }
  std::printf(
      "client:       %s\n"
      "federation:   %s\n"
      "coordinator:  %s\n"
      "certificate:  serial %s, expires %s\n"
      "global model: %s\n"
      "personal:     %s\n"
      "daemon:       %s\n",
      config->client_id.c_str(), config->federation.c_str(), config->coordinator.c_str(),
      certificate->SerialHex().c_str(), not_after.c_str(),
      global_version > 0 ? absl::StrCat("v", global_version).c_str() : "none yet",
      PersonalLine(*config).c_str(), daemon.c_str());
  return 0;
}

int PersonalCommand(const std::vector<std::string>& args) {
  if (args.empty()) return Fail(absl::InvalidArgumentError("personal needs show or reset"));
  const std::string& verb = args[0];
  auto flags =
      CommandLine::Parse({args.begin() + 1, args.end()}, {"config", "state-dir"}, {"json"});
  if (!flags.ok()) return Fail(flags.status());
  absl::StatusOr<ClientConfig> config = LoadClientConfig(*flags);
  if (!config.ok()) return Fail(config.status());
  if (verb == "show") {
    if (flags->Has("json")) {
      absl::StatusOr<std::string> personal = PersonalJson(*config);
      if (!personal.ok()) return Fail(personal.status());
      std::printf("%s\n", personal->c_str());
    } else {
      std::printf("%s\n", PersonalLine(*config).c_str());
    }
    return 0;
  }
  if (verb == "reset") {
    const PersonalModelStore store(config->state_dir.personal());
    const bool held = store.Exists();
    if (absl::Status status = store.Reset(); !status.ok()) return Fail(status);
    std::printf(held ? "removed the personal model in %s; the next round starts fresh private "
                       "experts\n"
                     : "no personal model in %s; nothing to remove\n",
                store.directory().c_str());
    return 0;
  }
  return Fail(absl::InvalidArgumentError(absl::StrCat("unknown personal command '", verb, "'")));
}

int PeersCommand(const std::vector<std::string>& args) {
  if (args.empty()) return Fail(absl::InvalidArgumentError("peers needs list or forget"));
  const std::string& verb = args[0];
  auto flags = CommandLine::Parse({args.begin() + 1, args.end()}, {"config", "state-dir"}, {});
  if (!flags.ok()) return Fail(flags.status());
  absl::StatusOr<ClientConfig> config = LoadClientConfig(*flags);
  if (!config.ok()) return Fail(config.status());
  absl::StatusOr<PeerKeyPins> pins = PeerKeyPins::Load(config->state_dir.peer_keys());
  if (!pins.ok()) return Fail(pins.status());
  if (verb == "list") {
    std::printf("%-24s  %s\n", "PEER", "PUBLIC KEY SHA-256");
    for (const auto& [peer, fingerprint] : pins->pins()) {
      std::printf("%-24s  %s\n", peer.c_str(), fingerprint.c_str());
    }
    std::printf("%zu peer(s)\n", pins->pins().size());
    return 0;
  }
  if (verb == "forget") {
    if (flags->positional().size() != 1) {
      return Fail(absl::InvalidArgumentError("peers forget needs exactly one CLIENT_ID"));
    }
    const std::string& peer = flags->positional()[0];
    if (absl::Status status = pins->Forget(peer); !status.ok()) return Fail(status);
    if (absl::Status status = pins->Save(); !status.ok()) return Fail(status);
    std::printf("forgot the key of peer '%s'; the next key it shows is trusted on first use\n",
                peer.c_str());
    return 0;
  }
  return Fail(absl::InvalidArgumentError(absl::StrCat("unknown peers command '", verb, "'")));
}

int Main(int argc, char** argv) {
  pki::LeaveOpenSslCleanupToProcessExit();
  pki::RequireTls13ForGrpc();
  RouteGrpcLogsToJson();
  model::RetainFreedMemory();
  const std::string usage = absl::StrCat(kUsage, kTrainUsage, kModelUsage, kExplainUsage,
                                         kGenerateUsage, kServeUsage, kPrivacyUsage);
  return config::RunSubcommands("fedmoe-client", usage.c_str(), argc, argv,
                                {{"enroll", EnrollCommand},
                                 {"run", RunCommand},
                                 {"--check-config",
                                  [](const std::vector<std::string>& args) {
                                    return config::CheckConfigFile(
                                        "fedmoe-client", args, [](const std::string& path) {
                                          return ClientConfig::Load(path).status();
                                        });
                                  }},
                                 {"status", StatusCommand},
                                 {"peers", PeersCommand},
                                 {"personal", PersonalCommand},
                                 {"train", TrainCommand},
                                 {"model", ModelCommand},
                                 {"serve", ServeCommand},
                                 {"privacy", PrivacyCommand}});
}

}  // namespace
}  // namespace fedmoe::client

int main(int argc, char** argv) { return fedmoe::client::Main(argc, argv); }
