// fedmoe-coordinator init, serve, --check-config, backup and restore: the state directory's
// life.
#include <malloc.h>
#include <sys/resource.h>

#include <cerrno>
#include <csignal>
#include <cstdio>

#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "config/command_line.h"
#include "coordinator/cli/commands.h"
#include "coordinator/config.h"
#include "coordinator/round/global_model.h"
#include "coordinator/round/privacy_plan.h"
#include "coordinator/service/server.h"
#include "coordinator/state/backup.h"
#include "logging/log.h"
#include "model/config.h"

namespace fedmoe::coordinator::cli {
namespace {

// Each client holds a connection, so a large federation needs more descriptors than the usual
// soft limit of 1024. And the coordinator's buffers are large and short-lived (update chunks,
// the round's sum, model files): glibc's sliding mmap threshold would move them into arenas
// that fragment and keep RSS high after every round, so they are always mapped and returned,
// and the arenas are few.
void PrepareProcessForManyClients() {
  rlimit files{};
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);
  }
  mallopt(M_MMAP_THRESHOLD, 256 << 10);
  mallopt(M_ARENA_MAX, 4);
}

// SIGHUP: re-reads the config. Only log_level applies to the running process; listeners,
// limits, certificates and the round policy are fixed at start, and the log says so. A bad
// file changes nothing.
void ReloadConfig(const std::string& path) {
  absl::StatusOr<CoordinatorConfig> config = CoordinatorConfig::Load(path);
  if (!config.ok()) {
    LogEvent(LogLevel::kError, "config_reload_failed").Error(config.status());
    return;
  }
  if (auto level = ParseLogLevel(config->log_level); level.ok()) SetMinLogLevel(*level);
  LogEvent(LogLevel::kWarning, "config_reloaded")
      .Field("path", path)
      .Field("log_level", config->log_level)
      .Field("note", "only log_level applies now; other settings take effect at the next restart");
}

}  // namespace

int Init(const std::vector<std::string>& args) {
  auto flags = CommandLine::Parse(args,
                                  {"federation", "state-dir", "san", "listen", "enroll-listen",
                                   "advertise", "ca-cert", "ca-key"},
                                  {});
  if (!flags.ok()) return Fail(flags.status());
  InitOptions options;
  auto federation = flags->Require("federation");
  auto state_dir = flags->Require("state-dir");
  if (!federation.ok()) return Fail(federation.status());
  if (!state_dir.ok()) return Fail(state_dir.status());
  options.federation = *federation;
  options.state_dir = *state_dir;
  if (flags->Has("san")) options.server_hosts = flags->GetAll("san");
  options.listen = flags->GetOr("listen", options.listen);
  options.enroll_listen = flags->GetOr("enroll-listen", options.enroll_listen);
  options.advertise = flags->GetOr("advertise", "");
  options.ca_certificate = flags->GetOr("ca-cert", "");
  options.ca_key = flags->GetOr("ca-key", "");
  absl::StatusOr<InitResult> result = InitStateDir(options);
  if (!result.ok()) return Fail(result.status());
  std::printf(
      "initialized federation '%s' in %s\n"
      "  config:          %s\n"
      "  mTLS port:       %s\n"
      "  enrollment port: %s\n"
      "  server names:    %s\n"
      "  CA fingerprint:  %s\n"
      "start it with: fedmoe-coordinator serve --config %s\n",
      result->config.federation.c_str(), result->config.state_dir.root.c_str(),
      result->config.state_dir.config().c_str(), result->config.listen.c_str(),
      result->config.enroll_listen.c_str(), absl::StrJoin(options.server_hosts, ", ").c_str(),
      result->ca_fingerprint.c_str(), result->config.state_dir.config().c_str());
  return 0;
}

int Serve(const std::vector<std::string>& args) {
  auto flags = CommandLine::Parse(args, {"config"}, {});
  if (!flags.ok()) return Fail(flags.status());
  auto path = flags->Require("config");
  if (!path.ok()) return Fail(path.status());
  absl::StatusOr<CoordinatorConfig> config = CoordinatorConfig::Load(*path);
  if (!config.ok()) return Fail(config.status());
  if (auto level = ParseLogLevel(config->log_level); level.ok()) SetMinLogLevel(*level);
  PrepareProcessForManyClients();

  // Signals are taken synchronously by this thread; every thread started after this inherits
  // the mask, so SIGTERM never lands in a gRPC thread.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::StatusOr<std::unique_ptr<CoordinatorServer>> server = CoordinatorServer::Start(*config);
  if (!server.ok()) return Fail(server.status());
  // Every 10 s without a signal, freed heap goes back to the system: a surge of connections
  // (a fleet reconnecting at once) would otherwise leave its buffers' pages resident for good.
  const timespec trim_interval{.tv_sec = 10, .tv_nsec = 0};
  int signal = 0;
  while (true) {
    const int received = sigtimedwait(&signals, nullptr, &trim_interval);
    if (received == SIGHUP) {
      ReloadConfig(*path);
    } else if (received > 0) {
      signal = received;
      break;
    } else if (errno == EAGAIN) {
      malloc_trim(0);
    }
  }
  LogEvent(LogLevel::kInfo, "shutdown_requested").Field("signal", signal);
  (*server)->Shutdown(absl::Seconds(5));
  return 0;
}

int Backup(const std::vector<std::string>& args) {
  auto flags = CommandLine::Parse(args, {"state-dir", "out"}, {});
  if (!flags.ok()) return Fail(flags.status());
  auto state_dir = flags->Require("state-dir");
  if (!state_dir.ok()) return Fail(state_dir.status());
  auto out = flags->Require("out");
  if (!out.ok()) return Fail(out.status());
  absl::StatusOr<BackupSummary> summary = BackupStateDir(StateDir{*state_dir}, *out);
  if (!summary.ok()) return Fail(summary.status());
  std::printf("backed up %s to %s: the store, keys, config and %lld model versions (%.1f MB)\n",
              state_dir->c_str(), out->c_str(), static_cast<long long>(summary->model_versions),
              static_cast<double>(summary->bytes) / 1e6);
  return 0;
}

int Restore(const std::vector<std::string>& args) {
  auto flags = CommandLine::Parse(args, {"backup", "state-dir"}, {});
  if (!flags.ok()) return Fail(flags.status());
  auto backup = flags->Require("backup");
  if (!backup.ok()) return Fail(backup.status());
  auto state_dir = flags->Require("state-dir");
  if (!state_dir.ok()) return Fail(state_dir.status());
  if (absl::Status status = RestoreStateDir(*backup, StateDir{*state_dir}); !status.ok()) {
    return Fail(status);
  }
  std::printf("restored %s into %s; start it with: fedmoe-coordinator serve --config %s\n",
              backup->c_str(), state_dir->c_str(), StateDir{*state_dir}.config().string().c_str());
  return 0;
}

int CheckConfig(const std::vector<std::string>& args) {
  return config::CheckConfigFile("fedmoe-coordinator", args, [](const std::string& path) {
    absl::StatusOr<CoordinatorConfig> config = CoordinatorConfig::Load(path);
    if (!config.ok()) return config.status();
    // The noise's share of a round, for the smallest cohort, when the initial model says how
    // many values a round trains.
    const RoundPolicy& policy = config->rounds;
    if (absl::StatusOr<int64_t> values = PlannedUpdateValues(policy); values.ok()) {
      if (const std::string warning = NoiseWarning(policy, policy.min_clients, *values);
          !warning.empty()) {
        std::fprintf(stderr, "%s: warning: %s\n", path.c_str(), warning.c_str());
      }
    }
    return absl::OkStatus();
  });
}

}  // namespace fedmoe::coordinator::cli
