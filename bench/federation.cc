// federation: N simulated clients against a real fedmoe-coordinator process, for an update of
// about D values (DESIGN §3, issue [rounds]).
//   build/bin/federation --clients N [--dim D] [--bits B] [--rounds R] [--upload-slots U]
//                        [--parked-polls P] [--wait-seconds S] [--work DIR]
//                        [--timeout-minutes M]
// With --wait-seconds, the enrolled fleet first polls for S seconds under a policy that can
// start no round (what a waiting fleet costs: one JSON line with "phase":"waiting"); then the
// coordinator restarts, so the rounds' peak RSS is their own.
// The coordinator runs as its own process from build/bin, with its real store, SecAgg+ relay,
// decode, expert merge and checkpoint. Each simulated client (simulation/simulated_client.h) is
// enrolled through the enrollment port and holds its own mutual-TLS connection; they do no
// local training, so the round latency is the protocol's and the coordinator's alone. Prints
// one JSON line per round: latency, the coordinator's peak RSS (VmHWM) and bytes per client,
// beside the issue's targets.
#include <google/protobuf/util/time_util.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "bench/guarded_main.h"
#include "client/grpc_status.h"
#include "client/update.h"
#include "config/command_line.h"
#include "coordinator/config.h"
#include "coordinator/service/admin_channel.h"
#include "logging/log.h"
#include "model/checkpoint.h"
#include "privacy/ring_encoder.h"
#include "privacy/secure_random.h"
#include "simulation/simulated_client.h"
#include "tests/integration/process_harness.h"

namespace fedmoe::simulation {
namespace {

using google::protobuf::util::TimeUtil;
using testing::BinaryPath;
using testing::CommandResult;
using testing::Daemon;
using testing::FreePort;
using testing::ProcStatusMiB;
using testing::RunCommand;

constexpr char kUsage[] =
    "usage: federation --clients N [--dim D] [--bits B] [--rounds R] [--upload-slots U] "
    "[--parked-polls P] [--wait-seconds S] [--work DIR] [--timeout-minutes M]\n";

// Open sockets of a process (its connections, plus a few listeners).
int ProcSockets(pid_t pid) {
  int sockets = 0;
  std::error_code error;
  for (const auto& entry :
       std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/fd"), error)) {
    std::error_code ignored;
    if (std::filesystem::read_symlink(entry.path(), ignored).string().rfind("socket:", 0) == 0) {
      ++sockets;
    }
  }
  return sockets;
}

// User plus system CPU seconds a process has used so far (/proc/<pid>/stat fields 14 and 15).
double ProcessCpuSeconds(pid_t pid) {
  std::ifstream stat_file(absl::StrCat("/proc/", pid, "/stat"));
  std::string text;
  std::getline(stat_file, text);
  // The command name may hold spaces; the fields are counted from the ')' that ends it.
  std::istringstream fields(text.substr(text.rfind(')') + 2));
  std::string field;
  double ticks = 0;
  for (int index = 3; fields >> field; ++index) {
    if (index == 14 || index == 15) ticks += std::stod(field);
    if (index == 15) break;
  }
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// A Mixtral-layout model whose default update (routed and shared experts and routers) has
// just under `dim` values: 2 layers of hidden 64 and expert intermediate 128, with as many
// experts as fit.
nlohmann::json ModelConfigFor(int64_t dim) {
  constexpr int64_t kHidden = 64;
  constexpr int64_t kIntermediate = 128;
  constexpr int64_t kLayers = 2;
  // Per layer and expert: three projections, the router row, the weight and histogram slots.
  const int64_t per_expert = 3 * kHidden * kIntermediate + kHidden + 2;
  const int64_t experts = std::max<int64_t>(2, (dim - 1) / (kLayers * per_expert));
  return {{"model_type", "mixtral"},
          {"hidden_size", kHidden},
          {"intermediate_size", kIntermediate},
          {"num_hidden_layers", kLayers},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 2},
          {"num_local_experts", experts},
          {"num_experts_per_tok", 2},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", 10000.0},
          {"vocab_size", 256},
          {"max_position_embeddings", 512},
          {"hidden_act", "silu"},
          {"tie_word_embeddings", false},
          {"router_aux_loss_coef", 0.01},
          {"bos_token_id", 1},
          {"eos_token_id", 2}};
}

std::string RoundPolicyYaml(int64_t min_clients, int64_t rounds, int64_t bits, int64_t minutes) {
  return absl::StrCat(R"(rounds:
  min_clients: )",
                      min_clients, "\n  max_clients: ", min_clients, R"(
  sampling_rate: 1.0
  interval: 1s
  max_rounds: )",
                      rounds, R"(
  timeouts:
    train: )",
                      minutes, "m\n    share_keys: ", minutes, "m\n    masked_input: ", minutes,
                      "m\n    unmask: ", minutes, R"(m
  trainable: [experts, router]
privacy:
  mode: distributed
  noise_multiplier: 1.0
  ring_bits: )",
                      bits, "\n");
}

// The one update every simulated client sends: a plausible fine-tuning change of the initial
// model (small random Δ, routing spread over all experts), encoded with the round's spec and
// noise once, then copied; the coordinator's cost does not depend on the values.
class SharedUpdate {
 public:
  explicit SharedUpdate(std::filesystem::path model) : model_(std::move(model)) {}

  absl::StatusOr<std::vector<uint64_t>> For(const v1::JoinRoundTask& task) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (round_ != task.round_id()) {
      absl::StatusOr<std::vector<uint64_t>> encoded = Encode(task);
      if (!encoded.ok()) return encoded.status();
      encoded_ = *std::move(encoded);
      round_ = task.round_id();
      plain_values_ = static_cast<int64_t>(task.update_spec().layout().plain_values());
      neighbors_ = task.secagg().neighbors_size();
      threshold_ = static_cast<int64_t>(task.secagg().threshold());
    }
    return encoded_;
  }

  int64_t encoded_values() {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<int64_t>(encoded_.size());
  }
  int64_t plain_values() {
    std::lock_guard<std::mutex> lock(mutex_);
    return plain_values_;
  }
  int64_t neighbors() {
    std::lock_guard<std::mutex> lock(mutex_);
    return neighbors_;
  }
  int64_t threshold() {
    std::lock_guard<std::mutex> lock(mutex_);
    return threshold_;
  }

 private:
  absl::StatusOr<std::vector<uint64_t>> Encode(const v1::JoinRoundTask& task) {
    absl::StatusOr<model::ModelParameters> global = model::LoadModel(model_);
    if (!global.ok()) return global.status();
    model::ModelParameters local = *global;
    std::mt19937_64 random(task.round_id());
    std::normal_distribution<float> step(0.0F, 1e-4F);
    for (float& value : local.values()) value += step(random);
    const model::MoeConfig& config = global->config();
    std::vector<std::vector<int64_t>> slots(
        static_cast<size_t>(config.num_hidden_layers),
        std::vector<int64_t>(static_cast<size_t>(config.num_local_experts), 100));
    absl::StatusOr<client::PlainUpdate> plain =
        client::BuildPlainUpdate(*global, local, slots, task.update_spec());
    if (!plain.ok()) return plain.status();
    absl::StatusOr<privacy::RingEncoder> encoder = privacy::RingEncoder::Create(
        plain->values.size(),
        client::EncodingFromSpec(task.update_spec(), static_cast<int>(task.secagg().ring_bits())));
    if (!encoder.ok()) return encoder.status();
    absl::StatusOr<privacy::SecureRandom> noise = privacy::SecureRandom::FromSystem();
    if (!noise.ok()) return noise.status();
    return encoder->Encode(plain->values, *noise);
  }

  std::filesystem::path model_;
  std::mutex mutex_;
  uint64_t round_ = 0;
  std::vector<uint64_t> encoded_;
  int64_t plain_values_ = 0;
  int64_t neighbors_ = 0;
  int64_t threshold_ = 0;
};

struct Flags {
  int64_t clients = 100;
  int64_t dim = int64_t{1} << 20;
  int64_t bits = 32;
  int64_t rounds = 1;
  int64_t upload_slots = 2;
  int64_t timeout_minutes = 60;
  // 0: the coordinator's default (limits.parked_polls).
  int64_t parked_polls = 0;
  // Seconds the fleet waits with no round possible before the coordinator is restarted for
  // the rounds; 0 skips that phase.
  int64_t wait_seconds = 0;
  std::filesystem::path work;
};

absl::StatusOr<Flags> ParseFlags(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  auto line =
      config::CommandLine::Parse(args,
                                 {"clients", "dim", "bits", "rounds", "upload-slots",
                                  "parked-polls", "wait-seconds", "work", "timeout-minutes"},
                                 {});
  if (!line.ok()) return line.status();
  Flags flags;
  for (auto [name, target, min, max] : {std::tuple{"clients", &flags.clients, 2, 10000},
                                        {"dim", &flags.dim, 1000, 1 << 26},
                                        {"bits", &flags.bits, 16, 62},
                                        {"rounds", &flags.rounds, 1, 100},
                                        {"upload-slots", &flags.upload_slots, 1, 64},
                                        {"parked-polls", &flags.parked_polls, 0, 1000000},
                                        {"wait-seconds", &flags.wait_seconds, 0, 3600},
                                        {"timeout-minutes", &flags.timeout_minutes, 1, 600}}) {
    absl::StatusOr<int64_t> value = line->IntOr(name, *target, min, max);
    if (!value.ok()) return value.status();
    *target = *value;
  }
  flags.work = line->GetOr("work", (std::filesystem::temp_directory_path() /
                                    absl::StrCat("fedmoe-federation-", getpid()))
                                       .string());
  return flags;
}

absl::StatusOr<v1::ListRoundsResponse> ListRounds(v1::Admin::Stub& admin) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  v1::ListRoundsRequest request;
  v1::ListRoundsResponse response;
  if (grpc::Status status = admin.ListRounds(&context, request, &response); !status.ok()) {
    return absl::UnavailableError(absl::StrCat("ListRounds: ", status.error_message()));
  }
  return response;
}

absl::StatusOr<v1::GetStatusResponse> GetStatus(v1::Admin::Stub& admin) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  v1::GetStatusResponse status;
  if (grpc::Status got = admin.GetStatus(&context, v1::GetStatusRequest(), &status); !got.ok()) {
    return client::FromGrpc(got, "GetStatus");
  }
  return status;
}

// The fleet polls for --wait-seconds under a policy that starts no round; prints what that
// costs the coordinator: peak and final RSS, sockets and parked polls, overall and over the
// second half (once the fleet's first polls, which all arrive at once, have settled).
absl::Status MeasureWaitingFleet(const std::vector<std::unique_ptr<SimulatedClient>>& clients,
                                 Daemon& coordinator, v1::Admin::Stub& admin, const Flags& flags) {
  const absl::Duration duration = absl::Seconds(flags.wait_seconds);
  const absl::Time started = absl::Now();
  std::vector<std::thread> threads;
  threads.reserve(clients.size());
  for (const std::unique_ptr<SimulatedClient>& client : clients) {
    threads.emplace_back([&client, duration] { client->Wait(duration); });
  }
  double settled_rss = 0;
  int sockets = 0;
  int settled_sockets = 0;
  uint32_t parked = 0;
  while (absl::Now() < started + duration) {
    const double rss = ProcStatusMiB(coordinator.pid(), "VmRSS");
    const int open = ProcSockets(coordinator.pid());
    sockets = std::max(sockets, open);
    if (absl::Now() >= started + duration / 2) {
      settled_rss = std::max(settled_rss, rss);
      settled_sockets = std::max(settled_sockets, open);
    }
    if (absl::StatusOr<v1::GetStatusResponse> status = GetStatus(admin); status.ok()) {
      parked = std::max(parked, status->polls_parked());
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  for (std::thread& thread : threads) thread.join();
  absl::StatusOr<v1::GetStatusResponse> status = GetStatus(admin);
  if (!status.ok()) return status.status();
  const nlohmann::json line = {
      {"phase", "waiting"},
      {"clients", clients.size()},
      {"seconds", flags.wait_seconds},
      {"clients_online", status->clients_online()},
      {"coordinator_peak_rss_mib", ProcStatusMiB(coordinator.pid(), "VmHWM")},
      {"coordinator_rss_mib_second_half", settled_rss},
      {"coordinator_rss_mib_at_end", ProcStatusMiB(coordinator.pid(), "VmRSS")},
      {"coordinator_sockets_max", sockets},
      {"coordinator_sockets_max_second_half", settled_sockets},
      {"coordinator_parked_polls_max", parked},
  };
  std::printf("%s\n", line.dump().c_str());
  std::fflush(stdout);
  return absl::OkStatus();
}

int Run(const Flags& flags) {
  // The fleet's enrollment and round events would bury the results.
  SetMinLogLevel(LogLevel::kWarning);
  std::filesystem::create_directories(flags.work);
  const std::filesystem::path model_dir = flags.work / "initial";
  const std::filesystem::path model_json = flags.work / "model.json";
  std::ofstream(model_json) << ModelConfigFor(flags.dim).dump(2);
  if (!std::filesystem::exists(model_dir / "config.json")) {
    CommandResult init =
        RunCommand({BinaryPath("fedmoe-client"), "model", "init", "--config", model_json.string(),
                    "--out", model_dir.string(), "--seed", "1"});
    if (init.exit_code != 0) {
      std::fprintf(stderr, "federation: model init failed: %s", init.err.c_str());
      return 1;
    }
  }
  const std::filesystem::path state = flags.work / "coordinator";
  // A new federation each run: clients enrolled under an old CA could not connect.
  std::filesystem::remove_all(state);
  std::filesystem::remove_all(flags.work / "clients");
  const std::string listen = absl::StrCat("127.0.0.1:", FreePort());
  const std::string enroll = absl::StrCat("127.0.0.1:", FreePort());
  CommandResult init =
      RunCommand({BinaryPath("fedmoe-coordinator"), "init", "--federation", "bench", "--state-dir",
                  state.string(), "--listen", listen, "--enroll-listen", enroll});
  if (init.exit_code != 0) {
    std::fprintf(stderr, "federation: coordinator init failed: %s", init.err.c_str());
    return 1;
  }
  const std::filesystem::path config_path = state / "coordinator.yaml";
  std::string yaml;
  {
    std::stringstream text;
    text << std::ifstream(config_path).rdbuf();
    yaml = text.str();
  }
  yaml =
      yaml.substr(0, yaml.find("\nmodel:\n")) + "\nmodel:\n  initial: " + model_dir.string() + "\n";
  // Port 0: a free one, so that the bench never collides with a running coordinator.
  const std::string default_metrics = "listen: \"127.0.0.1:9464\"";
  if (const size_t at = yaml.find(default_metrics); at != std::string::npos) {
    yaml.replace(at, default_metrics.size(), "listen: \"127.0.0.1:0\"");
  }
  // The whole fleet dials from 127.0.0.1: the per-address limits would see one huge site.
  {
    const coordinator::CoordinatorConfig defaults;
    for (const auto& [key, value] :
         {std::pair{"max_connections_per_peer", absl::StrCat(defaults.max_connections_per_peer)},
          {"max_connections", absl::StrCat(defaults.max_connections)},
          {"enrollment_connections_per_second",
           absl::StrCat(defaults.enrollment_connections_per_second)}}) {
      const std::string line = absl::StrCat("\n  ", key, ": ", value, "\n");
      if (const size_t at = yaml.find(line); at != std::string::npos) {
        yaml.replace(at, line.size(), absl::StrCat("\n  ", key, ": 0\n"));
      }
    }
  }
  if (flags.parked_polls > 0) {
    const std::string parked =
        absl::StrCat("parked_polls: ", coordinator::CoordinatorConfig().parked_polls);
    if (const size_t at = yaml.find(parked); at != std::string::npos) {
      yaml.replace(at, parked.size(), absl::StrCat("parked_polls: ", flags.parked_polls));
    }
  }
  std::unique_ptr<Daemon> running;
  std::unique_ptr<v1::Admin::Stub> admin;
  // Starts the coordinator under a policy that needs `min_clients` online to start a round.
  auto start_coordinator = [&](int64_t min_clients) -> absl::Status {
    std::ofstream(config_path) << yaml
                               << RoundPolicyYaml(min_clients, flags.rounds, flags.bits,
                                                  flags.timeout_minutes);
    running =
        std::make_unique<Daemon>(std::vector<std::string>{BinaryPath("fedmoe-coordinator"), "serve",
                                                          "--config", config_path.string()},
                                 flags.work / "coordinator.log");
    absl::StatusOr<coordinator::CoordinatorConfig> config =
        coordinator::CoordinatorConfig::Load(config_path);
    if (!config.ok()) return config.status();
    // A fresh channel per attempt: one that failed to connect waits out gRPC's reconnect
    // backoff.
    const bool started = testing::WaitFor(
        [&] {
          absl::StatusOr<std::unique_ptr<v1::Admin::Stub>> dialled =
              coordinator::DialAdmin(*config);
          if (!dialled.ok() || !ListRounds(**dialled).ok()) return false;
          admin = *std::move(dialled);
          return true;
        },
        absl::Seconds(60));
    if (!started) {
      return absl::UnavailableError(
          absl::StrCat("the coordinator did not start:\n", running->Log()));
    }
    return absl::OkStatus();
  };
  if (absl::Status status =
          start_coordinator(flags.wait_seconds > 0 ? flags.clients + 1 : flags.clients);
      !status.ok()) {
    return config::ReportFailure("federation", status);
  }

  const absl::Time enroll_started = absl::Now();
  absl::StatusOr<std::vector<std::filesystem::path>> directories = EnrollFleet(
      config_path, enroll, flags.work / "clients", "sim", static_cast<int>(flags.clients));
  if (!directories.ok()) return config::ReportFailure("federation", directories.status());
  std::vector<std::unique_ptr<SimulatedClient>> clients;
  for (const std::filesystem::path& directory : *directories) {
    absl::StatusOr<std::unique_ptr<SimulatedClient>> client = SimulatedClient::Open(directory);
    if (!client.ok()) return config::ReportFailure("federation", client.status());
    clients.push_back(*std::move(client));
  }
  const double enroll_seconds = absl::ToDoubleSeconds(absl::Now() - enroll_started);

  if (flags.wait_seconds > 0) {
    if (absl::Status status = MeasureWaitingFleet(clients, *running, *admin, flags); !status.ok()) {
      return config::ReportFailure("federation", status);
    }
    running->Signal(SIGTERM);
    running->Wait(absl::Seconds(30));
    if (absl::Status status = start_coordinator(flags.clients); !status.ok()) {
      return config::ReportFailure("federation", status);
    }
  }
  const Daemon& coordinator = *running;
  const double idle_rss_mib = ProcStatusMiB(coordinator.pid(), "VmRSS");

  SharedUpdate shared(model_dir);
  UpdateSource update = [&](const SimulatedClient&, const v1::JoinRoundTask& task) {
    return shared.For(task);
  };
  std::counting_semaphore<> upload_slots(flags.upload_slots);
  RoundBehaviour behaviour;
  behaviour.upload_slots = &upload_slots;
  int failures = 0;
  for (int64_t round = 0; round < flags.rounds; ++round) {
    std::vector<RoundReport> reports(clients.size());
    const double cpu_before = ProcessCpuSeconds(coordinator.pid());
    std::vector<std::thread> threads;
    threads.reserve(clients.size());
    for (size_t i = 0; i < clients.size(); ++i) {
      threads.emplace_back([&, i] {
        reports[i] =
            clients[i]->RunRound(update, behaviour, absl::Minutes(flags.timeout_minutes * 5));
      });
    }
    // Peak RSS by the coordinator's stage, sampled every 100 ms: "IDLE" before the round is
    // selected is what holding the fleet's connections and long polls costs.
    std::map<std::string, double> rss_by_stage;
    std::map<std::string, int> sockets_by_stage;
    std::map<std::string, uint32_t> parked_by_stage;
    std::atomic<bool> round_over = false;
    std::thread sampler([&] {
      while (!round_over.load()) {
        grpc::ClientContext context;
        context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
        v1::GetStatusRequest request;
        v1::GetStatusResponse status;
        const double rss = ProcStatusMiB(coordinator.pid(), "VmRSS");
        const int sockets = ProcSockets(coordinator.pid());
        if (admin->GetStatus(&context, request, &status).ok()) {
          const std::string stage = status.current_round_id() == 0
                                        ? "IDLE"
                                        : v1::RoundStage_Name(status.current_round_stage());
          rss_by_stage[stage] = std::max(rss_by_stage[stage], rss);
          sockets_by_stage[stage] = std::max(sockets_by_stage[stage], sockets);
          parked_by_stage[stage] = std::max(parked_by_stage[stage], status.polls_parked());
        }
        absl::SleepFor(absl::Milliseconds(100));
      }
    });
    for (std::thread& thread : threads) thread.join();
    round_over = true;
    sampler.join();
    const double coordinator_cpu_seconds = ProcessCpuSeconds(coordinator.pid()) - cpu_before;

    int committed = 0;
    uint64_t sent = 0;
    uint64_t received = 0;
    absl::Time first_selected = absl::InfiniteFuture();
    absl::Time last_finished = absl::InfinitePast();
    std::string first_error;
    for (const RoundReport& report : reports) {
      committed += report.outcome == v1::ROUND_STAGE_COMMITTED;
      sent += report.bytes_sent;
      received += report.bytes_received;
      first_selected = std::min(first_selected, report.selected_at);
      last_finished = std::max(last_finished, report.finished_at);
      if (!report.error.ok() && first_error.empty()) first_error = report.error.ToString();
    }
    absl::StatusOr<v1::ListRoundsResponse> rounds = ListRounds(*admin);
    if (!rounds.ok()) return config::ReportFailure("federation", rounds.status());
    const v1::RoundInfo* info = nullptr;
    for (const v1::RoundInfo& candidate : rounds->rounds()) {
      if (candidate.round_id() == reports.front().round_id) info = &candidate;
    }
    const auto n = static_cast<double>(clients.size());
    nlohmann::json line = {
        {"clients", clients.size()},
        {"round", reports.front().round_id},
        {"committed", committed == static_cast<int>(clients.size())},
        {"clients_committed", committed},
        {"bits", flags.bits},
        {"round_seconds", absl::ToDoubleSeconds(last_finished - first_selected)},
        {"coordinator_round_seconds", info != nullptr
                                          ? static_cast<double>(TimeUtil::DurationToMilliseconds(
                                                info->finished_at() - info->started_at())) /
                                                1000.0
                                          : -1.0},
        {"coordinator_cpu_seconds", coordinator_cpu_seconds},
        {"coordinator_peak_rss_mib", ProcStatusMiB(coordinator.pid(), "VmHWM")},
        {"coordinator_idle_rss_mib", idle_rss_mib},
        {"coordinator_rss_mib_by_stage", rss_by_stage},
        {"coordinator_sockets_by_stage", sockets_by_stage},
        {"coordinator_parked_polls_by_stage", parked_by_stage},
        {"bytes_sent_per_client", static_cast<double>(sent) / n},
        {"bytes_received_per_client", static_cast<double>(received) / n},
        {"enroll_seconds", enroll_seconds},
        {"upload_slots", flags.upload_slots},
        {"dim", shared.encoded_values()},
        {"plain_values", shared.plain_values()},
        {"neighbors", shared.neighbors()},
        {"threshold", shared.threshold()},
        {"coordinator_rss_target_mib", (3.0 * shared.encoded_values() * 8) / (1 << 20) + 100},
        {"masked_input_bytes", shared.encoded_values() * flags.bits / 8},
    };
    if (info != nullptr) {
      line["survivors"] = info->survivors();
      line["epsilon_after"] = info->epsilon_after();
    }
    if (!first_error.empty()) line["first_client_error"] = first_error;
    std::printf("%s\n", line.dump().c_str());
    std::fflush(stdout);
    if (committed != static_cast<int>(clients.size())) ++failures;
  }
  running->Signal(SIGTERM);
  running->Wait(absl::Seconds(30));
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace fedmoe::simulation

int main(int argc, char** argv) {
  absl::StatusOr<fedmoe::simulation::Flags> flags = fedmoe::simulation::ParseFlags(argc, argv);
  if (!flags.ok()) {
    std::fprintf(stderr, "federation: %s\n%s", std::string(flags.status().message()).c_str(),
                 fedmoe::simulation::kUsage);
    return 2;
  }
  return fedmoe::bench::GuardedMain("federation", [&] { return fedmoe::simulation::Run(*flags); });
}
