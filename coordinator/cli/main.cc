// fedmoe-coordinator: the federation's operator CLI and server.
//
// Exit status: 0 success, 1 the operation failed (the message says why), 2 bad usage.
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/time_util.h>
#include <grpcpp/grpcpp.h>
#include <malloc.h>
#include <sys/resource.h>

#include <bit>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "config/command_line.h"
#include "coordinator/config.h"
#include "coordinator/identity/ca_rotation.h"
#include "coordinator/round/privacy_plan.h"
#include "coordinator/service/admin_channel.h"
#include "coordinator/service/server.h"
#include "coordinator/state/backup.h"
#include "fedmoe/v1/admin.grpc.pb.h"
#include "logging/grpc_log.h"
#include "logging/log.h"
#include "model/config.h"
#include "model/parameters.h"
#include "pki/certificate.h"
#include "pki/private_key.h"
#include "pki/tls_policy.h"
#include "privacy/rdp_accountant.h"
#include "storage/file_status.h"

namespace fedmoe::coordinator {
namespace {

using config::CommandLine;
using google::protobuf::util::TimeUtil;

constexpr char kUsage[] = R"(usage: fedmoe-coordinator COMMAND [FLAGS]

  init --federation NAME --state-dir DIR [--san HOST ...] [--listen HOST:PORT]
       [--enroll-listen HOST:PORT] [--advertise HOST:PORT] [--ca-cert PEM --ca-key PEM]
      Create a federation: CA, server and admin certificates, store, coordinator.yaml. With
      --ca-cert and --ca-key, an existing federation CA is used instead of a new one.
  serve --config FILE
      Run the coordinator until SIGTERM or SIGINT; SIGHUP re-reads log_level.
  certificates renew --state-dir DIR [--san HOST ...]
      Issue the server and admin certificates again (new keys, full lifetimes) from the
      federation CA; the server's names stay unless --san is given. Restart to serve it.
  ca status --state-dir DIR [--json]
  ca begin --state-dir DIR [--ca-cert PEM --ca-key PEM] [--validity 87600h]
  ca switch --state-dir DIR [--force]
  ca retire --state-dir DIR [--force]
      Rotate the federation CA in three steps, each followed by a restart: begin trusts a new
      CA beside the old one; switch makes it issue once every client holds it; retire drops
      the old CA once every client uses a certificate from the new one. switch and retire
      name the clients that have not moved and refuse, unless --force cuts them off.
  backup --state-dir DIR --out NEW_DIR
      Copy the state directory (store snapshot, CA and keys, config, model versions) into
      NEW_DIR, consistently, while the coordinator runs or not.
  restore --backup DIR --state-dir NEW_DIR
      Restore a backup into NEW_DIR and point its coordinator.yaml there; then serve it.
  --check-config FILE
      Validate a coordinator.yaml without starting anything: prints "FILE: ok", or each
      problem as FILE:LINE: KEY: what is wrong, and exits 1.
  token create --client-id ID [--ttl 24h] [--json]
      Create a one-time enrollment token; prints it and the CA fingerprint to pin.
  token list [--json]
  token revoke TOKEN_ID
  clients list [--all] [--json]
  clients revoke CLIENT_ID [--reason TEXT]
  admins add NAME --out DIR
      Issue an admin certificate for another operator: a new key, the certificate, the CAs to
      trust and the coordinator's address go to DIR (the key 0600). That operator runs admin
      commands with --admin-dir DIR.
  admins list [--json]
  admins revoke NAME [--reason TEXT]
      Refuse every certificate of operator NAME from its next call on, for good. An admin
      cannot revoke itself.
  status [--json]
  rounds list [--limit N] [--json]
      Rounds, newest first: stage, cohort, survivors, duration, ε after.
  privacy report [--json]
      The privacy ledger: each committed round's mechanism, noise and ε after, and the total.
  privacy epsilon --noise-multiplier Z --sampling-rate Q --rounds R --delta D
      Print {"epsilon":…, "order":…}: the (ε, δ) of R rounds of the Poisson-subsampled
      Gaussian mechanism, by RDP accounting. Needs no running coordinator.
  privacy noise --target-epsilon E --sampling-rate Q --rounds R --delta D
      Print {"noise_multiplier":…}: the smallest Z that keeps R rounds within ε = E.
      Both take --mode distributed|central --clients N --values V to price the rounds as the
      ledger will: N clients, all surviving, updates of V values (the update_values of a
      round_started log line), and [--mechanism discrete_gaussian|skellam] [--ring-bits B]
      [--clip-norm C] [--rounding-beta BETA] as in the coordinator's config (its defaults).
      With --config FILE (a coordinator.yaml), every setting comes from that federation's
      config, the update's values from its initial model, so that the answer is what its
      ledger will say after R rounds of N clients; flags still override.

Admin commands talk to the running coordinator over mTLS with an admin certificate. They find
it with --state-dir DIR (on the coordinator's host), or --config FILE, or --admin-dir DIR (from
`admins add`), and --coordinator HOST:PORT overrides the address.
)";

int Fail(const absl::Status& status) { return config::ReportFailure("fedmoe-coordinator", status); }

// A failed admin RPC: the coordinator's message, and exit status 1 (the call, not its
// arguments, failed).
int Fail(const grpc::Status& status) {
  return config::ReportFailure("fedmoe-coordinator", absl::UnknownError(status.error_message()));
}

std::string Time(const google::protobuf::Timestamp& timestamp) {
  if (timestamp.seconds() == 0 && timestamp.nanos() == 0) return "-";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::FromUnixSeconds(timestamp.seconds()),
                          absl::UTCTimeZone());
}

std::string Json(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string json;
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  return json;
}

// The config a command works on: --config FILE, or the one in --state-dir DIR; `missing` is
// the error when neither is given.
absl::StatusOr<CoordinatorConfig> ConfigFromFlags(const CommandLine& flags,
                                                  const std::string& missing) {
  std::filesystem::path config_path;
  if (auto config = flags.Get("config")) {
    config_path = *config;
  } else if (auto dir = flags.Get("state-dir")) {
    config_path = StateDir{*dir}.config();
  } else {
    return absl::InvalidArgumentError(missing);
  }
  return CoordinatorConfig::Load(config_path);
}

// The admin's channel to the running coordinator: with the credentials of `admins add`'s
// --out directory, or with the operator's own from the state directory.
absl::StatusOr<std::unique_ptr<v1::Admin::Stub>> DialAdmin(const CommandLine& flags) {
  if (auto admin_dir = flags.Get("admin-dir")) {
    return coordinator::DialAdmin(AdminCredentials{*admin_dir}, flags.GetOr("coordinator", ""));
  }
  absl::StatusOr<CoordinatorConfig> config = ConfigFromFlags(
      flags,
      "admin commands need --state-dir DIR (or --config FILE) to find the admin certificate");
  if (!config.ok()) return config.status();
  return coordinator::DialAdmin(*config, flags.GetOr("coordinator", ""));
}

std::unique_ptr<grpc::ClientContext> AdminContext() {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(15));
  return context;
}

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

int CertificatesCommand(const std::vector<std::string>& args) {
  if (args.empty() || args[0] != "renew") {
    return Fail(absl::InvalidArgumentError("certificates needs renew"));
  }
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  auto flags = CommandLine::Parse(rest, {"state-dir", "config", "san"}, {});
  if (!flags.ok()) return Fail(flags.status());
  absl::StatusOr<CoordinatorConfig> config =
      ConfigFromFlags(*flags, "certificates renew needs --state-dir DIR");
  if (!config.ok()) return Fail(config.status());
  absl::StatusOr<RenewedCertificates> renewed =
      RenewCoordinatorCertificates(*config, flags->GetAll("san"));
  if (!renewed.ok()) return Fail(renewed.status());
  std::printf(
      "server certificate: serial %s for %s, expires %s\n"
      "admin certificate:  serial %s, expires %s\n"
      "the admin commands use the new admin certificate now; restart the coordinator to serve "
      "the new server certificate\n",
      renewed->server.SerialHex().c_str(),
      absl::StrJoin(renewed->server.ServerHosts(), ", ").c_str(),
      absl::FormatTime(renewed->server.NotAfter()).c_str(), renewed->admin.SerialHex().c_str(),
      absl::FormatTime(renewed->admin.NotAfter()).c_str());
  return 0;
}

void PrintCaRotationStatus(const CaRotationStatus& status, bool json) {
  if (json) {
    std::printf(
        "{\"phase\":\"%s\",\"issuing_ca\":\"%s\",\"other_ca\":\"%s\","
        "\"clients_not_moved\":[%s]}\n",
        std::string(CaRotationPhaseName(status.phase)).c_str(), status.issuer_fingerprint.c_str(),
        status.other_fingerprint.c_str(),
        absl::StrJoin(status.clients_not_moved, ",", [](std::string* out, const std::string& id) {
          absl::StrAppend(out, "\"", id, "\"");
        }).c_str());
    return;
  }
  std::printf("phase: %s\nissuing CA: %s\n", std::string(CaRotationPhaseName(status.phase)).c_str(),
              status.issuer_fingerprint.c_str());
  switch (status.phase) {
    case CaRotationPhase::kNone:
      std::printf("no CA rotation in progress\n");
      return;
    case CaRotationPhase::kNewCaTrusted:
      std::printf("new CA (trusted, not issuing yet): %s\n", status.other_fingerprint.c_str());
      break;
    case CaRotationPhase::kNewCaIssuing:
      std::printf("old CA (still trusted): %s\n", status.other_fingerprint.c_str());
      break;
  }
  if (status.clients_not_moved.empty()) {
    std::printf("every client has moved; the next step may run\n");
  } else {
    std::printf("clients not moved yet (%zu): %s\n", status.clients_not_moved.size(),
                absl::StrJoin(status.clients_not_moved, ", ").c_str());
  }
}

int CaCommand(const std::vector<std::string>& args) {
  const std::string verb = args.empty() ? "" : args[0];
  const std::vector<std::string> rest(args.begin() + (args.empty() ? 0 : 1), args.end());
  auto flags = CommandLine::Parse(rest, {"state-dir", "config", "ca-cert", "ca-key", "validity"},
                                  {"force", "json"});
  if (!flags.ok()) return Fail(flags.status());
  if (verb != "status" && verb != "begin" && verb != "switch" && verb != "retire") {
    return Fail(absl::InvalidArgumentError("ca needs status, begin, switch or retire"));
  }
  absl::StatusOr<CoordinatorConfig> config =
      ConfigFromFlags(*flags, absl::StrCat("ca ", verb, " needs --state-dir DIR"));
  if (!config.ok()) return Fail(config.status());
  constexpr char kRestart[] =
      "restart the coordinator to apply it; clients follow at their next poll";
  if (verb == "begin") {
    BeginCaRotationOptions options;
    options.ca_certificate = flags->GetOr("ca-cert", "");
    options.ca_key = flags->GetOr("ca-key", "");
    if (!absl::ParseDuration(flags->GetOr("validity", "87600h"), &options.validity) ||
        options.validity <= absl::ZeroDuration()) {
      return Fail(
          absl::InvalidArgumentError("--validity must be a positive duration, e.g. 87600h"));
    }
    absl::StatusOr<std::string> fingerprint = BeginCaRotation(*config, options);
    if (!fingerprint.ok()) return Fail(fingerprint.status());
    std::printf("new CA %s is trusted beside the old one, which still issues; %s\n",
                fingerprint->c_str(), kRestart);
  } else if (verb == "switch") {
    absl::StatusOr<std::string> fingerprint = SwitchCa(*config, flags->Has("force"));
    if (!fingerprint.ok()) return Fail(fingerprint.status());
    std::printf(
        "CA %s issues now (server and admin certificates re-issued from it, the old "
        "CA's key destroyed); %s\n",
        fingerprint->c_str(), kRestart);
  } else if (verb == "retire") {
    absl::StatusOr<std::string> fingerprint = RetireCa(*config, flags->Has("force"));
    if (!fingerprint.ok()) return Fail(fingerprint.status());
    std::printf("old CA %s is no longer trusted; %s\n", fingerprint->c_str(), kRestart);
  } else {
    absl::StatusOr<CaRotationStatus> status = GetCaRotationStatus(*config);
    if (!status.ok()) return Fail(status.status());
    PrintCaRotationStatus(*status, flags->Has("json"));
  }
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
    if (absl::StatusOr<model::MoeConfig> model =
            model::LoadMoeConfig(policy.initial_model / "config.json");
        model.ok()) {
      int64_t values = 0;
      const model::ModelLayout layout(*model);
      for (const model::TensorSpec& spec : layout.tensors()) {
        if (policy.trainable.Includes(spec.role)) values += spec.size;
      }
      if (const std::string warning = NoiseWarning(policy, policy.min_clients, values);
          !warning.empty()) {
        std::fprintf(stderr, "%s: warning: %s\n", path.c_str(), warning.c_str());
      }
    }
    return absl::OkStatus();
  });
}

int TokenCommand(const std::vector<std::string>& args) {
  if (args.empty()) return Fail(absl::InvalidArgumentError("token needs create, list or revoke"));
  const std::string& verb = args[0];
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  auto flags = CommandLine::Parse(
      rest, {"client-id", "ttl", "state-dir", "config", "admin-dir", "coordinator"}, {"json"});
  if (!flags.ok()) return Fail(flags.status());
  auto stub = DialAdmin(*flags);
  if (!stub.ok()) return Fail(stub.status());
  const bool json = flags->Has("json");

  if (verb == "create") {
    auto client_id = flags->Require("client-id");
    if (!client_id.ok()) return Fail(client_id.status());
    absl::Duration ttl = absl::Hours(24);
    if (!absl::ParseDuration(flags->GetOr("ttl", "24h"), &ttl)) {
      return Fail(absl::InvalidArgumentError("--ttl must be a duration such as 24h or 90m"));
    }
    v1::CreateEnrollmentTokenRequest request;
    request.set_client_id(*client_id);
    request.mutable_ttl()->set_seconds(absl::ToInt64Seconds(ttl));
    v1::CreateEnrollmentTokenResponse response;
    auto context = AdminContext();
    if (grpc::Status status = (*stub)->CreateEnrollmentToken(context.get(), request, &response);
        !status.ok()) {
      return Fail(status);
    }
    if (json) {
      std::string out = "{\"token\":\"";
      AppendJsonEscaped(response.token(), out);
      out += "\",\"token_id\":\"" + response.token_id() + "\",\"client_id\":\"";
      AppendJsonEscaped(response.client_id(), out);
      out += "\",\"ca_fingerprint\":\"" + response.ca_fingerprint_sha256() +
             "\",\"expires_at\":\"" + Time(response.expires_at()) + "\"}";
      std::printf("%s\n", out.c_str());
    } else {
      std::printf(
          "enrollment token for client '%s' (expires %s):\n\n  %s\n\nCA fingerprint (SHA-256):"
          "\n\n  %s\n\nGive both to the organisation out of band; on their host:\n"
          "  fedmoe-client enroll --coordinator HOST:PORT --token TOKEN --ca-fingerprint "
          "FINGERPRINT --state-dir DIR\n",
          response.client_id().c_str(), Time(response.expires_at()).c_str(),
          response.token().c_str(), response.ca_fingerprint_sha256().c_str());
    }
    return 0;
  }
  if (verb == "list") {
    v1::ListEnrollmentTokensRequest request;
    v1::ListEnrollmentTokensResponse response;
    auto context = AdminContext();
    if (grpc::Status status = (*stub)->ListEnrollmentTokens(context.get(), request, &response);
        !status.ok()) {
      return Fail(status);
    }
    if (json) {
      std::printf("%s\n", Json(response).c_str());
      return 0;
    }
    std::printf("%-16s  %-24s  %-8s  %s\n", "TOKEN ID", "CLIENT", "STATE", "EXPIRES");
    for (const auto& token : response.tokens()) {
      std::string state = v1::EnrollmentTokenInfo::State_Name(token.state()).substr(6);
      std::printf("%-16s  %-24s  %-8s  %s\n", token.token_id().c_str(), token.client_id().c_str(),
                  absl::AsciiStrToLower(state).c_str(), Time(token.expires_at()).c_str());
    }
    return 0;
  }
  if (verb == "revoke") {
    if (flags->positional().size() != 1) {
      return Fail(absl::InvalidArgumentError("token revoke needs exactly one TOKEN_ID"));
    }
    v1::RevokeEnrollmentTokenRequest request;
    request.set_token_id(flags->positional()[0]);
    v1::RevokeEnrollmentTokenResponse response;
    auto context = AdminContext();
    if (grpc::Status status = (*stub)->RevokeEnrollmentToken(context.get(), request, &response);
        !status.ok()) {
      return Fail(status);
    }
    std::printf("token %s revoked\n", response.token().token_id().c_str());
    return 0;
  }
  return Fail(absl::InvalidArgumentError(absl::StrCat("unknown token command '", verb, "'")));
}

int ClientsCommand(const std::vector<std::string>& args) {
  if (args.empty()) return Fail(absl::InvalidArgumentError("clients needs list or revoke"));
  const std::string& verb = args[0];
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  auto flags = CommandLine::Parse(
      rest, {"reason", "state-dir", "config", "admin-dir", "coordinator"}, {"json", "all"});
  if (!flags.ok()) return Fail(flags.status());
  auto stub = DialAdmin(*flags);
  if (!stub.ok()) return Fail(stub.status());

  if (verb == "list") {
    v1::ListClientsResponse all;
    v1::ListClientsRequest request;
    request.set_include_revoked(flags->Has("all"));
    do {
      v1::ListClientsResponse page;
      auto context = AdminContext();
      if (grpc::Status status = (*stub)->ListClients(context.get(), request, &page); !status.ok()) {
        return Fail(status);
      }
      all.mutable_clients()->MergeFrom(page.clients());
      request.mutable_page()->set_page_token(page.page().next_page_token());
    } while (!request.page().page_token().empty());
    if (flags->Has("json")) {
      std::printf("%s\n", Json(all).c_str());
      return 0;
    }
    std::printf("%-24s  %-8s  %-7s  %-20s  %-20s  %s\n", "CLIENT", "STATE", "ONLINE", "LAST SEEN",
                "CERT EXPIRES", "ROUNDS");
    for (const auto& client : all.clients()) {
      std::printf("%-24s  %-8s  %-7s  %-20s  %-20s  %llu\n", client.client_id().c_str(),
                  client.state() == v1::ClientInfo::STATE_REVOKED ? "revoked" : "active",
                  client.online() ? "yes" : "no", Time(client.last_seen_at()).c_str(),
                  Time(client.certificate_not_after()).c_str(),
                  static_cast<unsigned long long>(client.rounds_participated()));
    }
    std::printf("%d client(s)\n", all.clients_size());
    return 0;
  }
  if (verb == "revoke") {
    if (flags->positional().size() != 1) {
      return Fail(absl::InvalidArgumentError("clients revoke needs exactly one CLIENT_ID"));
    }
    v1::RevokeClientRequest request;
    request.set_client_id(flags->positional()[0]);
    request.set_reason(flags->GetOr("reason", ""));
    v1::RevokeClientResponse response;
    auto context = AdminContext();
    if (grpc::Status status = (*stub)->RevokeClient(context.get(), request, &response);
        !status.ok()) {
      return Fail(status);
    }
    std::printf("client '%s' revoked at %s; its next call is refused\n",
                response.client().client_id().c_str(),
                Time(response.client().revoked_at()).c_str());
    return 0;
  }
  return Fail(absl::InvalidArgumentError(absl::StrCat("unknown clients command '", verb, "'")));
}

// Where the new operator should dial: --coordinator, else the address this command used, else
// the endpoint the coordinator advertises to clients.
absl::StatusOr<std::string> AdminAddress(const CommandLine& flags) {
  if (auto address = flags.Get("coordinator")) return *address;
  if (auto admin_dir = flags.Get("admin-dir"))
    return ReadAdminAddress(AdminCredentials{*admin_dir});
  absl::StatusOr<CoordinatorConfig> config =
      ConfigFromFlags(flags, "admins add needs --state-dir DIR, --config FILE or --admin-dir DIR");
  if (!config.ok()) return config.status();
  return config->advertised_endpoint();
}

void PrintAdmins(const v1::ListAdminsResponse& admins) {
  std::printf("%-24s  %-8s  %-20s  %-16s  %s\n", "ADMIN", "STATE", "LAST SEEN", "ADDED BY",
              "REVOKED BY");
  for (const v1::AdminInfo& admin : admins.admins()) {
    std::printf("%-24s  %-8s  %-20s  %-16s  %s\n", admin.name().c_str(),
                admin.revoked() ? "revoked" : "active", Time(admin.last_seen_at()).c_str(),
                admin.added_by().empty() ? "-" : admin.added_by().c_str(),
                admin.revoked_by().empty() ? "-" : admin.revoked_by().c_str());
  }
  std::printf("%d admin(s)\n", admins.admins_size());
}

// `admins add`: the new operator's key never leaves this host, and the directory it gets is
// all it needs to dial the coordinator.
int AddAdmin(const CommandLine& flags, v1::Admin::Stub& stub) {
  if (flags.positional().size() != 1) {
    return Fail(absl::InvalidArgumentError("admins add needs exactly one NAME"));
  }
  absl::StatusOr<std::string> out = flags.Require("out");
  if (!out.ok()) return Fail(out.status());
  const AdminCredentials credentials{*out};
  if (storage::PathExists(credentials.key())) {
    return Fail(absl::AlreadyExistsError(
        absl::StrCat(credentials.key().string(), " exists; choose a new --out directory")));
  }
  const std::string& name = flags.positional()[0];
  absl::StatusOr<pki::PrivateKey> key = pki::PrivateKey::GenerateP256();
  if (!key.ok()) return Fail(key.status());
  absl::StatusOr<std::string> csr = pki::MakeCsr(*key, name);
  if (!csr.ok()) return Fail(csr.status());
  v1::AddAdminRequest request;
  request.set_name(name);
  request.set_csr_der(*csr);
  v1::AddAdminResponse response;
  auto context = AdminContext();
  if (grpc::Status status = stub.AddAdmin(context.get(), request, &response); !status.ok()) {
    return Fail(status);
  }
  absl::StatusOr<pki::Certificate> certificate =
      pki::Certificate::FromDer(response.certificate().certificate_der());
  if (!certificate.ok()) return Fail(certificate.status());
  std::vector<std::string> trusted(response.trusted_ca_certificates_der().begin(),
                                   response.trusted_ca_certificates_der().end());
  absl::StatusOr<pki::SpiffeId> id = certificate->Identity();
  if (!id.ok()) return Fail(id.status());
  absl::StatusOr<pki::TrustBundle> trust = pki::TrustBundle::FromDer(trusted, id->federation);
  if (!trust.ok()) return Fail(trust.status());
  absl::StatusOr<std::string> address = AdminAddress(flags);
  if (!address.ok()) return Fail(address.status());
  if (absl::Status status =
          WriteAdminCredentials(credentials, *key, *certificate, *trust, *address);
      !status.ok()) {
    return Fail(status);
  }
  std::printf(
      "admin '%s' added: serial %s, expires %s\n"
      "its key, certificate, trusted CAs and the coordinator's address are in %s; it runs admin "
      "commands with --admin-dir %s\n",
      name.c_str(), certificate->SerialHex().c_str(),
      absl::FormatTime(certificate->NotAfter()).c_str(), out->c_str(), out->c_str());
  return 0;
}

int AdminsCommand(const std::vector<std::string>& args) {
  if (args.empty()) return Fail(absl::InvalidArgumentError("admins needs add, list or revoke"));
  const std::string& verb = args[0];
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  auto flags = CommandLine::Parse(
      rest, {"reason", "out", "state-dir", "config", "admin-dir", "coordinator"}, {"json"});
  if (!flags.ok()) return Fail(flags.status());
  auto stub = DialAdmin(*flags);
  if (!stub.ok()) return Fail(stub.status());
  if (verb == "add") return AddAdmin(*flags, **stub);
  if (verb == "list") {
    v1::ListAdminsResponse response;
    auto context = AdminContext();
    if (grpc::Status status = (*stub)->ListAdmins(context.get(), {}, &response); !status.ok()) {
      return Fail(status);
    }
    if (flags->Has("json")) {
      std::printf("%s\n", Json(response).c_str());
    } else {
      PrintAdmins(response);
    }
    return 0;
  }
  if (verb == "revoke") {
    if (flags->positional().size() != 1) {
      return Fail(absl::InvalidArgumentError("admins revoke needs exactly one NAME"));
    }
    v1::RevokeAdminRequest request;
    request.set_name(flags->positional()[0]);
    request.set_reason(flags->GetOr("reason", ""));
    v1::RevokeAdminResponse response;
    auto context = AdminContext();
    if (grpc::Status status = (*stub)->RevokeAdmin(context.get(), request, &response);
        !status.ok()) {
      return Fail(status);
    }
    std::printf("admin '%s' revoked at %s; its next call is refused\n",
                response.admin().name().c_str(), Time(response.admin().revoked_at()).c_str());
    return 0;
  }
  return Fail(absl::InvalidArgumentError(absl::StrCat("unknown admins command '", verb, "'")));
}

int Status(const std::vector<std::string>& args) {
  auto flags =
      CommandLine::Parse(args, {"state-dir", "config", "admin-dir", "coordinator"}, {"json"});
  if (!flags.ok()) return Fail(flags.status());
  auto stub = DialAdmin(*flags);
  if (!stub.ok()) return Fail(stub.status());
  v1::GetStatusResponse response;
  auto context = AdminContext();
  if (grpc::Status status = (*stub)->GetStatus(context.get(), {}, &response); !status.ok()) {
    return Fail(status);
  }
  if (flags->Has("json")) {
    std::printf("%s\n", Json(response).c_str());
    return 0;
  }
  std::printf(
      "federation:      %s\n"
      "version:         %s\n"
      "started:         %s\n"
      "clients:         %u enrolled, %u online (%u polls held), %u revoked\n"
      "model version:   %llu\n"
      "rounds:          %llu committed, %llu aborted (round %llu: %s)\n"
      "privacy:         epsilon %.4g spent at delta %.3g%s\n"
      "%s",
      response.federation().c_str(), response.version().c_str(),
      Time(response.started_at()).c_str(), response.clients_enrolled(), response.clients_online(),
      response.polls_parked(), response.clients_revoked(),
      static_cast<unsigned long long>(response.model_version()),
      static_cast<unsigned long long>(response.rounds_committed()),
      static_cast<unsigned long long>(response.rounds_aborted()),
      static_cast<unsigned long long>(response.current_round_id()),
      absl::AsciiStrToLower(StageName(response.current_round_stage())).c_str(),
      response.epsilon_spent(), response.privacy_delta(),
      response.target_epsilon() > 0
          ? absl::StrFormat(" (target %.4g)", response.target_epsilon()).c_str()
          : "",
      response.rounds_paused_reason().empty()
          ? ""
          : absl::StrCat("rounds paused:   ", response.rounds_paused_reason(), "\n").c_str());
  return 0;
}

int RoundsCommand(const std::vector<std::string>& args) {
  if (args.empty() || args[0] != "list") {
    return Fail(absl::InvalidArgumentError("rounds needs a command: list"));
  }
  auto flags =
      CommandLine::Parse(std::vector<std::string>(args.begin() + 1, args.end()),
                         {"state-dir", "config", "admin-dir", "coordinator", "limit"}, {"json"});
  if (!flags.ok()) return Fail(flags.status());
  absl::StatusOr<int64_t> limit = flags->IntOr("limit", 20, 1, 1000);
  if (!limit.ok()) return Fail(limit.status());
  auto stub = DialAdmin(*flags);
  if (!stub.ok()) return Fail(stub.status());
  v1::ListRoundsRequest request;
  request.mutable_page()->set_page_size(static_cast<uint32_t>(*limit));
  v1::ListRoundsResponse response;
  auto context = AdminContext();
  if (grpc::Status status = (*stub)->ListRounds(context.get(), request, &response); !status.ok()) {
    return Fail(status);
  }
  if (flags->Has("json")) {
    std::printf("%s\n", Json(response).c_str());
    return 0;
  }
  std::printf("%-6s %-17s %-6s %-9s %-9s %-8s %-10s %s\n", "ROUND", "STAGE", "COHORT", "SURVIVORS",
              "DURATION", "MODEL", "EPSILON", "NOTE");
  for (const v1::RoundInfo& round : response.rounds()) {
    std::string duration = "-";
    if (round.has_finished_at()) {
      duration = absl::StrFormat(
          "%.1fs", static_cast<double>(TimeUtil::TimestampToMilliseconds(round.finished_at()) -
                                       TimeUtil::TimestampToMilliseconds(round.started_at())) /
                       1000.0);
    }
    const std::string stage = absl::AsciiStrToLower(StageName(round.stage()));
    const std::string model =
        round.committed_model_version() > 0
            ? absl::StrCat(round.base_model_version(), "->", round.committed_model_version())
            : absl::StrCat(round.base_model_version());
    std::printf("%-6llu %-17s %-6u %-9u %-9s %-8s %-10.4g %s\n",
                static_cast<unsigned long long>(round.round_id()), stage.c_str(),
                round.cohort_size(), round.survivors(), duration.c_str(), model.c_str(),
                round.epsilon_after(), round.abort_reason().c_str());
    for (const std::string& left : round.left_reasons()) {
      std::printf("%-6s left: %s\n", "", left.c_str());
    }
  }
  return 0;
}

int PrivacyReport(const std::vector<std::string>& args) {
  auto flags =
      CommandLine::Parse(args, {"state-dir", "config", "admin-dir", "coordinator"}, {"json"});
  if (!flags.ok()) return Fail(flags.status());
  auto stub = DialAdmin(*flags);
  if (!stub.ok()) return Fail(stub.status());
  v1::GetPrivacyLedgerResponse response;
  auto context = AdminContext();
  if (grpc::Status status = (*stub)->GetPrivacyLedger(context.get(), {}, &response); !status.ok()) {
    return Fail(status);
  }
  if (flags->Has("json")) {
    std::printf("%s\n", Json(response).c_str());
    return 0;
  }
  std::printf("%-6s %-12s %-18s %-8s %-9s %-9s %-10s %s\n", "ROUND", "MODE", "MECHANISM", "Q",
              "Z_PLAN", "Z_EFF", "EPSILON", "ORDER");
  for (const v1::PrivacyLedgerEntry& entry : response.entries()) {
    std::printf("%-6llu %-12s %-18s %-8.4g %-9.4g %-9.4g %-10.4g %g\n",
                static_cast<unsigned long long>(entry.round_id()), entry.mode().c_str(),
                entry.mechanism().c_str(), entry.sampling_rate(), entry.planned_noise_multiplier(),
                entry.effective_noise_multiplier(), entry.epsilon_after(), entry.best_order());
  }
  std::printf("total: epsilon %.4g at delta %.3g over %d committed rounds%s%s\n",
              response.epsilon_spent(), response.delta(), response.entries_size(),
              response.target_epsilon() > 0
                  ? absl::StrFormat("; target %.4g", response.target_epsilon()).c_str()
                  : "",
              response.sampler_total_variation() > 0
                  ? absl::StrFormat("; the samplers' total variation %.3g is charged to delta",
                                    response.sampler_total_variation())
                        .c_str()
                  : "");
  if (!response.epsilon_note().empty()) {
    std::printf("epsilon is infinite: %s\n", response.epsilon_note().c_str());
  }
  return 0;
}

// The values of one round's update (before the encoder pads them to a power of two): the
// initial model's trained tensors, and each MoE layer's expert weights and histogram.
absl::StatusOr<int64_t> UpdateValuesOf(const RoundPolicy& policy) {
  absl::StatusOr<model::MoeConfig> model =
      model::LoadMoeConfig(policy.initial_model / "config.json");
  if (!model.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--values is needed: the config's initial model cannot be read (",
                     model.status().message(), ")"));
  }
  const model::ModelLayout layout(*model);
  int64_t values = 2 * model->num_hidden_layers * model->num_local_experts;
  for (const model::TensorSpec& spec : layout.tensors()) {
    if (policy.trainable.Includes(spec.role)) values += spec.size;
  }
  return values;
}

// `privacy epsilon|noise --mode distributed|central`: a federation's rounds, priced as the ledger
// will price them (coordinator/round/privacy_plan.h), from the flags and the config's defaults.
int PlanFederation(const std::string& verb, RoundPolicy policy, const std::string& mode,
                   const CommandLine& flags) {
  if (mode == "distributed") {
    policy.privacy_mode = v1::PrivacySpec::MODE_DISTRIBUTED;
  } else if (mode == "central") {
    policy.privacy_mode = v1::PrivacySpec::MODE_CENTRAL;
  } else {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--mode must be gaussian, distributed or central, not '", mode, "'")));
  }
  const std::string mechanism = flags.GetOr("mechanism", MechanismName(policy.mechanism));
  if (mechanism == "skellam" && mode == "distributed") {
    policy.mechanism = v1::PrivacySpec::MECHANISM_SKELLAM;
  } else if (mechanism == "discrete_gaussian") {
    policy.mechanism = v1::PrivacySpec::MECHANISM_DISCRETE_GAUSSIAN;
  } else {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "--mechanism must be discrete_gaussian", mode == "distributed" ? " or skellam" : "", " in ",
        mode, " mode, not '", mechanism, "'")));
  }
  // With --config the federation's own settings are the defaults, so the plan is what its
  // ledger will say; a flag still overrides.
  const bool configured = flags.Has("config");
  for (const auto& [flag, field] :
       {std::pair{"sampling-rate", &policy.sampling_rate}, std::pair{"delta", &policy.delta}}) {
    if (configured && !flags.Has(flag)) continue;
    absl::StatusOr<double> value = flags.RequireDouble(flag);
    if (!value.ok()) return Fail(value.status());
    *field = *value;
  }
  constexpr int64_t kMost = std::numeric_limits<int64_t>::max();
  absl::StatusOr<int64_t> rounds = flags.RequireInt("rounds", 1, kMost);
  if (!rounds.ok()) return Fail(rounds.status());
  absl::StatusOr<int64_t> clients = flags.RequireInt("clients", 2, kMost);
  if (!clients.ok()) return Fail(clients.status());
  absl::StatusOr<int64_t> values = configured && !flags.Has("values")
                                       ? UpdateValuesOf(policy)
                                       : flags.RequireInt("values", 1, int64_t{1} << 40);
  if (!values.ok()) return Fail(values.status());
  if (flags.Has("ring-bits")) {
    absl::StatusOr<int64_t> bits = flags.RequireInt("ring-bits", 16, 62);
    if (!bits.ok()) return Fail(bits.status());
    policy.ring_bits = *bits;
  }
  for (const auto& [flag, field] : {std::pair{"clip-norm", &policy.clip_norm},
                                    std::pair{"rounding-beta", &policy.rounding_beta}}) {
    if (!flags.Has(flag)) continue;
    absl::StatusOr<double> value = flags.RequireDouble(flag);
    if (!value.ok()) return Fail(value.status());
    *field = *value;
  }
  if (!(policy.clip_norm > 0) || !(policy.rounding_beta >= 0 && policy.rounding_beta < 1)) {
    return Fail(
        absl::InvalidArgumentError("--clip-norm must be above 0 and --rounding-beta in [0, 1)"));
  }
  // Updates are encoded at the next power of two.
  const auto encoded = static_cast<int64_t>(std::bit_ceil(static_cast<uint64_t>(*values)));
  if (verb == "epsilon") {
    absl::StatusOr<double> z = configured && !flags.Has("noise-multiplier")
                                   ? absl::StatusOr<double>(policy.noise_multiplier)
                                   : flags.RequireDouble("noise-multiplier");
    if (!z.ok()) return Fail(z.status());
    policy.noise_multiplier = *z;
    if (!(*z > 0)) {
      return Fail(absl::InvalidArgumentError(absl::StrCat(
          "--noise-multiplier must be above 0 (no noise: epsilon is infinite), not ", *z)));
    }
    absl::StatusOr<privacy::PrivacyLoss> loss = PlannedEpsilon(policy, *clients, encoded, *rounds);
    if (!loss.ok()) return Fail(loss.status());
    std::printf("{\"epsilon\":%s,\"order\":%s}\n", JsonNumber(loss->epsilon).c_str(),
                JsonNumber(loss->order).c_str());
    return 0;
  }
  if (verb == "noise") {
    absl::StatusOr<double> target = flags.RequireDouble("target-epsilon");
    if (!target.ok()) return Fail(target.status());
    absl::StatusOr<double> z = PlannedNoiseMultiplier(policy, *target, *clients, encoded, *rounds);
    if (!z.ok()) return Fail(z.status());
    std::printf("{\"noise_multiplier\":%s}\n", JsonNumber(*z).c_str());
    return 0;
  }
  return Fail(absl::InvalidArgumentError(absl::StrCat("unknown privacy command '", verb, "'")));
}

int PrivacyCommand(const std::vector<std::string>& args) {
  if (args.empty()) {
    return Fail(absl::InvalidArgumentError("privacy needs epsilon, noise or report"));
  }
  const std::string& verb = args[0];
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (verb == "report") return PrivacyReport(rest);
  auto flags = CommandLine::Parse(
      rest,
      {"noise-multiplier", "target-epsilon", "sampling-rate", "rounds", "delta", "mode", "clients",
       "values", "mechanism", "ring-bits", "clip-norm", "rounding-beta", "config"},
      {});
  if (!flags.ok()) return Fail(flags.status());
  if (auto path = flags->Get("config")) {
    absl::StatusOr<CoordinatorConfig> config = CoordinatorConfig::Load(*path);
    if (!config.ok()) return Fail(config.status());
    return PlanFederation(verb, config->rounds,
                          flags->GetOr("mode", PrivacyModeName(config->rounds.privacy_mode)),
                          *flags);
  }
  const std::string mode = flags->GetOr("mode", "gaussian");
  if (mode != "gaussian") return PlanFederation(verb, RoundPolicy(), mode, *flags);
  for (const char* federation_only :
       {"clients", "values", "mechanism", "ring-bits", "clip-norm", "rounding-beta"}) {
    if (flags->Has(federation_only)) {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("--", federation_only,
                       " prices a federation's rounds: add --mode distributed or "
                       "central")));
    }
  }
  absl::StatusOr<double> q = flags->RequireDouble("sampling-rate");
  if (!q.ok()) return Fail(q.status());
  absl::StatusOr<double> delta = flags->RequireDouble("delta");
  if (!delta.ok()) return Fail(delta.status());
  absl::StatusOr<int64_t> rounds_flag = flags->RequireInt(
      "rounds", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max());
  if (!rounds_flag.ok()) return Fail(rounds_flag.status());
  const int64_t rounds = *rounds_flag;
  if (absl::Status status = privacy::ValidatePrivacyArguments(*q, rounds, *delta); !status.ok()) {
    return Fail(status);
  }
  if (verb == "epsilon") {
    absl::StatusOr<double> z = flags->RequireDouble("noise-multiplier");
    if (!z.ok()) return Fail(z.status());
    if (*z < 0) {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("--noise-multiplier must not be negative, not ", *z)));
    }
    if (*z == 0) {
      return Fail(
          absl::InvalidArgumentError("--noise-multiplier 0 adds no noise: epsilon is infinite"));
    }
    privacy::RdpAccountant accountant;
    if (absl::Status status = accountant.AddSubsampledGaussian(*q, *z, rounds); !status.ok()) {
      return Fail(status);
    }
    absl::StatusOr<privacy::PrivacyLoss> loss = accountant.Epsilon(*delta);
    if (!loss.ok()) return Fail(loss.status());
    std::printf("{\"epsilon\":%s,\"order\":%s}\n", JsonNumber(loss->epsilon).c_str(),
                JsonNumber(loss->order).c_str());
    return 0;
  }
  if (verb == "noise") {
    absl::StatusOr<double> target = flags->RequireDouble("target-epsilon");
    if (!target.ok()) return Fail(target.status());
    absl::StatusOr<double> z = privacy::NoiseMultiplierForEpsilon(*target, *q, rounds, *delta);
    if (!z.ok()) return Fail(z.status());
    std::printf("{\"noise_multiplier\":%s}\n", JsonNumber(*z).c_str());
    return 0;
  }
  return Fail(absl::InvalidArgumentError(absl::StrCat("unknown privacy command '", verb, "'")));
}

int Main(int argc, char** argv) {
  pki::LeaveOpenSslCleanupToProcessExit();
  pki::RequireTls13ForGrpc();
  RouteGrpcLogsToJson();
  return config::RunSubcommands("fedmoe-coordinator", kUsage, argc, argv,
                                {{"init", Init},
                                 {"serve", Serve},
                                 {"--check-config", CheckConfig},
                                 {"certificates", CertificatesCommand},
                                 {"ca", CaCommand},
                                 {"backup", Backup},
                                 {"restore", Restore},
                                 {"token", TokenCommand},
                                 {"clients", ClientsCommand},
                                 {"admins", AdminsCommand},
                                 {"status", Status},
                                 {"rounds", RoundsCommand},
                                 {"privacy", PrivacyCommand}});
}

}  // namespace
}  // namespace fedmoe::coordinator

int main(int argc, char** argv) { return fedmoe::coordinator::Main(argc, argv); }
