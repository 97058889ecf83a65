// abuse: the attacks of issue [resilience] against a real fedmoe-coordinator process, each on a
// fresh federation, with an enrolled client that keeps working meanwhile.
//   build/bin/abuse [--attack NAME[,NAME...]] [--seconds S] [--connections C] [--rate R]
//                   [--fd-limit N] [--work DIR]
// Attacks: rapid_reset, fd_exhaustion, half_open, metrics_idle, poll_flood, renew_flood,
// enroll_guess ("all", the default, runs each). Every attack lasts --seconds (default 10) and
// is followed by as long again of quiet. Prints one JSON line per attack: the coordinator's RSS
// (idle, peak, after) and file descriptors, the legitimate client's poll and status latencies
// (p50, p99, failures) during and after the attack, one enrollment's latency during and after,
// what the attacker achieved, and the targets beside the measurements.
#include <fcntl.h>
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
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "client/client_config.h"
#include "client/coordinator_channel.h"
#include "client/grpc_status.h"
#include "config/command_line.h"
#include "coordinator/config.h"
#include "coordinator/service/admin_channel.h"
#include "fedmoe/v1/enrollment.grpc.pb.h"
#include "logging/log.h"
#include "pki/certificate_authority.h"
#include "pki/key_change.h"
#include "pki/private_key.h"
#include "simulation/abuse_attacks.h"
#include "simulation/simulated_client.h"
#include "tests/integration/process_harness.h"

namespace fedmoe::simulation {
namespace {

using testing::BinaryPath;
using testing::CommandResult;
using testing::Daemon;
using testing::FreePort;
using testing::ProcStatusMiB;
using testing::RunCommand;

constexpr char kUsage[] =
    "usage: abuse [--attack NAME[,NAME...]] [--seconds S] [--connections C] [--rate R] "
    "[--fd-limit N] "
    "[--work DIR]\n"
    "attacks: rapid_reset fd_exhaustion half_open metrics_idle poll_flood renew_flood "
    "enroll_guess (default: all)\n";

const std::vector<std::string>& AllAttacks() {
  static const std::vector<std::string> attacks = {"rapid_reset",  "fd_exhaustion", "half_open",
                                                   "metrics_idle", "poll_flood",    "renew_flood",
                                                   "enroll_guess"};
  return attacks;
}

struct Flags {
  std::vector<std::string> attacks = AllAttacks();
  int64_t seconds = 10;
  int64_t connections = 2;
  // Rapid reset pairs per second in all (0: as fast as the connections take them); the probe
  // of the issue reached about 14,900.
  int64_t rate = 15000;
  int64_t fd_limit = 1024;
  std::filesystem::path work;
};

int ProcFds(pid_t pid) {
  int fds = 0;
  std::error_code error;
  for (auto it = std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/fd"), error);
       !error && it != std::filesystem::directory_iterator(); it.increment(error)) {
    ++fds;
  }
  return fds;
}

double Percentile(std::vector<double> values, double fraction) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t index = std::min(values.size() - 1, static_cast<size_t>(fraction * values.size()));
  return values[index];
}

// A fresh federation: coordinator process, its admin stub, and enrolled clients.
class Federation {
 public:
  // `limits` replaces the values of keys of the generated coordinator.yaml's limits block.
  static absl::StatusOr<std::unique_ptr<Federation>> Start(
      const std::filesystem::path& work, const std::map<std::string, std::string>& limits,
      int64_t fd_limit) {
    std::unique_ptr<Federation> federation(new Federation());
    federation->work_ = work;
    std::filesystem::remove_all(work);
    std::filesystem::create_directories(work);
    const std::filesystem::path state = work / "coordinator";
    federation->mtls_port_ = FreePort();
    federation->enroll_port_ = FreePort();
    federation->metrics_port_ = FreePort();
    const std::string listen = absl::StrCat("127.0.0.1:", federation->mtls_port_);
    const std::string enroll = absl::StrCat("127.0.0.1:", federation->enroll_port_);
    CommandResult init =
        RunCommand({BinaryPath("fedmoe-coordinator"), "init", "--federation", "abuse",
                    "--state-dir", state.string(), "--listen", listen, "--enroll-listen", enroll});
    if (init.exit_code != 0) return absl::InternalError("coordinator init failed: " + init.err);
    federation->config_path_ = state / "coordinator.yaml";
    std::string yaml = testing::ReadFile(federation->config_path_);
    const std::string default_metrics = "listen: \"127.0.0.1:9464\"";
    if (const size_t at = yaml.find(default_metrics); at != std::string::npos) {
      yaml.replace(at, default_metrics.size(),
                   absl::StrCat("listen: \"127.0.0.1:", federation->metrics_port_, "\""));
    }
    for (const auto& [key, value] : limits) {
      const std::string prefix = absl::StrCat("\n  ", key, ": ");
      const size_t at = yaml.find(prefix);
      // A coordinator from before the limit (a baseline run) has nothing to set.
      if (at == std::string::npos) continue;
      const size_t end = yaml.find('\n', at + 1);
      yaml.replace(at + prefix.size(), end - at - prefix.size(), value);
    }
    testing::WriteFile(federation->config_path_, yaml);
    std::vector<std::string> argv = {BinaryPath("fedmoe-coordinator"), "serve", "--config",
                                     federation->config_path_.string()};
    if (fd_limit > 0) {
      argv.insert(argv.begin(),
                  {"/usr/bin/prlimit", absl::StrCat("--nofile=", fd_limit, ":", fd_limit), "--"});
    }
    federation->daemon_ = std::make_unique<Daemon>(argv, work / "coordinator.log");
    absl::StatusOr<coordinator::CoordinatorConfig> config =
        coordinator::CoordinatorConfig::Load(federation->config_path_);
    if (!config.ok()) return config.status();
    const bool started = testing::WaitFor(
        [&] {
          absl::StatusOr<std::unique_ptr<v1::Admin::Stub>> dialled =
              coordinator::DialAdmin(*config);
          if (!dialled.ok()) return false;
          grpc::ClientContext context;
          context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
          v1::GetStatusResponse status;
          if (!(*dialled)->GetStatus(&context, v1::GetStatusRequest(), &status).ok()) return false;
          federation->admin_ = *std::move(dialled);
          return true;
        },
        absl::Seconds(60));
    if (!started) {
      return absl::UnavailableError("the coordinator did not start:\n" + federation->Log());
    }
    return federation;
  }

  // Enrolls a client named `name` through the enrollment port; returns its state directory.
  absl::StatusOr<std::filesystem::path> Enroll(const std::string& name) {
    absl::StatusOr<std::vector<std::filesystem::path>> enrolled = EnrollFleet(
        config_path_, absl::StrCat("127.0.0.1:", enroll_port_), work_ / "clients", name, 1);
    if (!enrolled.ok()) return enrolled.status();
    return enrolled->front();
  }

  // Seconds one new client takes to get a token and enroll; negative when it failed.
  double TimeEnrollment() {
    const absl::Time started = absl::Now();
    absl::StatusOr<std::filesystem::path> enrolled = Enroll(absl::StrCat("probe", enrollments_++));
    if (!enrolled.ok()) return -1;
    return absl::ToDoubleSeconds(absl::Now() - started);
  }

  pid_t pid() const { return daemon_->pid(); }
  int mtls_port() const { return mtls_port_; }
  int enroll_port() const { return enroll_port_; }
  int metrics_port() const { return metrics_port_; }
  v1::Admin::Stub& admin() { return *admin_; }
  const std::filesystem::path& config_path() const { return config_path_; }
  std::string Log() const { return daemon_->Log(); }
  bool running() { return daemon_->running(); }

 private:
  Federation() = default;
  std::filesystem::path work_;
  std::filesystem::path config_path_;
  std::unique_ptr<Daemon> daemon_;
  std::unique_ptr<v1::Admin::Stub> admin_;
  int mtls_port_ = 0;
  int enroll_port_ = 0;
  int metrics_port_ = 0;
  int enrollments_ = 0;
};

// An enrolled client's own mutual-TLS connection and stubs.
struct Member {
  client::ClientConfig config;
  client::CoordinatorChannel channel;
  std::unique_ptr<v1::Federation::Stub> federation;
  std::unique_ptr<v1::Certificates::Stub> certificates;

  static absl::StatusOr<std::unique_ptr<Member>> Open(const std::filesystem::path& state_dir) {
    absl::StatusOr<client::ClientConfig> config =
        client::ClientConfig::Load(client::ClientStateDir{state_dir}.config());
    if (!config.ok()) return config.status();
    absl::StatusOr<client::CoordinatorChannel> channel =
        client::DialCoordinator(*config, /*own_connection=*/true);
    if (!channel.ok()) return channel.status();
    auto member =
        std::make_unique<Member>(Member{*std::move(config), *std::move(channel), nullptr, nullptr});
    member->federation = v1::Federation::NewStub(member->channel.channel);
    member->certificates = v1::Certificates::NewStub(member->channel.channel);
    return member;
  }

  // One poll the coordinator answers at once (max_wait 0): the call's round trip.
  grpc::Status QuickPoll() {
    v1::PollTaskRequest request;
    request.mutable_max_wait()->set_seconds(0);
    request.mutable_capabilities()->set_software_version("abuse-bench");
    request.mutable_capabilities()->set_device("cpu");
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::PollTaskResponse response;
    return federation->PollTask(&context, request, &response);
  }
};

// The legitimate side, measured while an attack runs and after it: a client polling every
// 50 ms, an operator asking for the status every 250 ms, the coordinator's RSS and FDs every
// 100 ms.
class Observer {
 public:
  Observer(Federation& federation, Member& member) : federation_(federation), member_(member) {
    idle_rss_ = ProcStatusMiB(federation.pid(), "VmRSS");
    idle_fds_ = ProcFds(federation.pid());
    threads_.emplace_back([this] { PollLoop(); });
    threads_.emplace_back([this] { StatusLoop(); });
    threads_.emplace_back([this] { SampleLoop(); });
  }
  ~Observer() { Stop(); }

  void Stop() {
    stop_ = true;
    for (std::thread& thread : threads_) thread.join();
    threads_.clear();
  }
  // Samples from now on count as "after".
  void AttackOver() { after_ = true; }

  void Report(nlohmann::json& line) {
    std::lock_guard<std::mutex> lock(mutex_);
    line["coordinator_idle_rss_mib"] = idle_rss_;
    line["coordinator_peak_rss_mib"] = peak_rss_;
    line["coordinator_rss_mib_at_end"] = ProcStatusMiB(federation_.pid(), "VmRSS");
    line["coordinator_idle_fds"] = idle_fds_;
    line["coordinator_peak_fds"] = peak_fds_;
    for (int phase = 0; phase < 2; ++phase) {
      const std::string suffix = phase == 0 ? "_during" : "_after";
      line["poll_p50_ms" + suffix] = Percentile(poll_ms_[phase], 0.5);
      line["poll_p99_ms" + suffix] = Percentile(poll_ms_[phase], 0.99);
      line["polls" + suffix] = poll_ms_[phase].size();
      line["poll_failures" + suffix] = poll_failures_[phase];
      line["status_p99_ms" + suffix] = Percentile(status_ms_[phase], 0.99);
      line["status_failures" + suffix] = status_failures_[phase];
    }
  }
  double idle_rss() const { return idle_rss_; }
  double peak_rss() {
    std::lock_guard<std::mutex> lock(mutex_);
    return peak_rss_;
  }
  double poll_p99_ms() {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<double> all = poll_ms_[0];
    all.insert(all.end(), poll_ms_[1].begin(), poll_ms_[1].end());
    return Percentile(all, 0.99);
  }
  int poll_failures() {
    std::lock_guard<std::mutex> lock(mutex_);
    return poll_failures_[0] + poll_failures_[1];
  }

 private:
  void PollLoop() {
    while (!stop_) {
      const absl::Time started = absl::Now();
      const grpc::Status status = member_.QuickPoll();
      const double ms = absl::ToDoubleMilliseconds(absl::Now() - started);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        const int phase = after_ ? 1 : 0;
        // A failed poll counts at its full time: the client waited that long for nothing.
        poll_ms_[phase].push_back(ms);
        if (!status.ok()) ++poll_failures_[phase];
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
  }
  void StatusLoop() {
    while (!stop_) {
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
      v1::GetStatusResponse status;
      const absl::Time started = absl::Now();
      const bool ok = federation_.admin().GetStatus(&context, v1::GetStatusRequest(), &status).ok();
      const double ms = absl::ToDoubleMilliseconds(absl::Now() - started);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        const int phase = after_ ? 1 : 0;
        status_ms_[phase].push_back(ms);
        if (!ok) ++status_failures_[phase];
      }
      absl::SleepFor(absl::Milliseconds(250));
    }
  }
  void SampleLoop() {
    while (!stop_) {
      const double rss = ProcStatusMiB(federation_.pid(), "VmRSS");
      const int fds = ProcFds(federation_.pid());
      {
        std::lock_guard<std::mutex> lock(mutex_);
        peak_rss_ = std::max(peak_rss_, rss);
        peak_fds_ = std::max(peak_fds_, fds);
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
  }

  Federation& federation_;
  Member& member_;
  std::atomic<bool> stop_ = false;
  std::atomic<bool> after_ = false;
  std::mutex mutex_;
  double idle_rss_ = 0;
  int idle_fds_ = 0;
  double peak_rss_ = 0;
  int peak_fds_ = 0;
  std::vector<double> poll_ms_[2];
  int poll_failures_[2] = {0, 0};
  std::vector<double> status_ms_[2];
  int status_failures_[2] = {0, 0};
  std::vector<std::thread> threads_;
};

// Lines of the coordinator's log that carry `event`.
int CountLogEvents(const std::string& log, const std::string& event) {
  int count = 0;
  const std::string needle = absl::StrCat("\"event\":\"", event, "\"");
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    if (absl::StrContains(line, needle)) ++count;
  }
  return count;
}

absl::Status RunAttack(const std::string& attack, const Flags& flags) {
  const absl::Duration duration = absl::Seconds(flags.seconds);
  // Only the FD exhaustion runs under a low descriptor limit; the others get the machine's.
  const int64_t fd_limit = attack == "fd_exhaustion" ? flags.fd_limit : 0;
  std::map<std::string, std::string> limits;
  // With the connection caps in place the descriptors never run out; lifted, the flood
  // reaches the limit and the listeners' recovery is what is measured.
  if (attack == "fd_exhaustion") {
    limits = {{"max_connections", "0"},
              {"max_connections_per_peer", "0"},
              {"enrollment_connections_per_second", "0"}};
  }
  absl::StatusOr<std::unique_ptr<Federation>> started =
      Federation::Start(flags.work / attack, limits, fd_limit);
  if (!started.ok()) return started.status();
  Federation& federation = **started;
  absl::StatusOr<std::filesystem::path> legit_dir = federation.Enroll("legit");
  if (!legit_dir.ok()) return legit_dir.status();
  absl::StatusOr<std::unique_ptr<Member>> legit = Member::Open(*legit_dir);
  if (!legit.ok()) return legit.status();
  // The attacker's own identity, for the attacks that need one.
  absl::StatusOr<std::filesystem::path> greedy_dir = federation.Enroll("greedy");
  if (!greedy_dir.ok()) return greedy_dir.status();
  absl::StatusOr<std::unique_ptr<Member>> greedy = Member::Open(*greedy_dir);
  if (!greedy.ok()) return greedy.status();
  if (!(*legit)->QuickPoll().ok()) return absl::UnavailableError("the first poll failed");
  absl::SleepFor(absl::Seconds(1));
  const size_t log_before = federation.Log().size();

  nlohmann::json line = {{"attack", attack}, {"seconds", flags.seconds}};
  Observer observer(federation, **legit);
  double enroll_during = -1;
  std::thread enroll_probe([&] {
    absl::SleepFor(duration / 2);
    enroll_during = federation.TimeEnrollment();
  });
  std::atomic<bool> stop = false;

  if (attack == "rapid_reset") {
    const RapidResetReport report =
        RapidReset(federation.enroll_port(), "/fedmoe.v1.Enrollment/Enroll",
                   static_cast<int>(flags.connections), static_cast<double>(flags.rate), duration);
    line["pairs_target_per_second"] = flags.rate;
    line["pairs"] = report.pairs;
    line["pairs_per_second"] = static_cast<double>(report.pairs) / report.seconds;
    line["connections_opened"] = report.connections;
    line["goaways"] = report.goaways;
    line["closed_without_goaway"] = report.closed;
    line["failed_connects"] = report.failed_connects;
  } else if (attack == "fd_exhaustion" || attack == "half_open") {
    // fd_exhaustion: more connections than the coordinator has descriptors, to both ports;
    // half_open: 4,000 TLS handshakes that never start, to the enrollment port.
    ConnectionFlood flood;
    const bool exhaust = attack == "fd_exhaustion";
    int opened = 0;
    if (exhaust) {
      // The mTLS port alone takes more connections than there are descriptors, then the
      // enrollment port is tried too: both must come back.
      opened = flood.Open(federation.mtls_port(), static_cast<int>(flags.fd_limit) + 100);
      opened += flood.Open(federation.enroll_port(), 100);
    } else {
      opened = flood.Open(federation.enroll_port(), 4000);
    }
    line["connections_opened"] = opened;
    absl::SleepFor(duration);
    line["closed_by_coordinator"] = flood.ClosedByPeer();
    line["mtls_port_answers_during"] = TlsPortAnswers(federation.mtls_port(), absl::Seconds(1));
    line["enroll_port_answers_during"] = TlsPortAnswers(federation.enroll_port(), absl::Seconds(1));
    flood.CloseAll();
    const absl::Time freed = absl::Now();
    double both_answer_after = -1;
    while (absl::Now() < freed + absl::Seconds(30)) {
      if (TlsPortAnswers(federation.mtls_port(), absl::Seconds(1)) &&
          TlsPortAnswers(federation.enroll_port(), absl::Seconds(1))) {
        both_answer_after = absl::ToDoubleSeconds(absl::Now() - freed);
        break;
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
    line["both_ports_answer_seconds_after_freed"] = both_answer_after;
    if (exhaust)
      line["target_both_ports_answer_within_5s"] =
          both_answer_after >= 0 && both_answer_after <= 5.0;
  } else if (attack == "metrics_idle") {
    // One connection that never sends a request, then scrapes.
    ConnectionFlood idle;
    idle.Open(federation.metrics_port(), 1);
    std::vector<double> scrape_ms;
    int scrape_failures = 0;
    const absl::Time until = absl::Now() + duration;
    while (absl::Now() < until) {
      std::map<std::string, double> samples;
      std::string error;
      const absl::Time scrape_started = absl::Now();
      if (!testing::ScrapeMetrics(absl::StrCat("127.0.0.1:", federation.metrics_port()), samples,
                                  error)) {
        ++scrape_failures;
      }
      scrape_ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - scrape_started));
      absl::SleepFor(absl::Milliseconds(200));
    }
    line["scrapes"] = scrape_ms.size();
    line["scrape_failures"] = scrape_failures;
    line["scrape_p99_ms"] = Percentile(scrape_ms, 0.99);
    line["scrape_max_ms"] = Percentile(scrape_ms, 1.0);
  } else if (attack == "poll_flood") {
    // 300 long polls at once from one identity.
    std::atomic<int> refused = 0;
    std::atomic<int> answered = 0;
    std::vector<std::thread> polls;
    for (int i = 0; i < 300; ++i) {
      polls.emplace_back([&] {
        v1::PollTaskRequest request;
        request.mutable_max_wait()->set_seconds(flags.seconds);
        grpc::ClientContext context;
        context.set_deadline(absl::ToChronoTime(absl::Now() + duration + absl::Seconds(10)));
        v1::PollTaskResponse response;
        const grpc::Status status = (*greedy)->federation->PollTask(&context, request, &response);
        (status.ok() ? answered : refused)++;
      });
    }
    absl::SleepFor(duration / 2);
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::GetStatusResponse status;
    if (federation.admin().GetStatus(&context, v1::GetStatusRequest(), &status).ok()) {
      line["polls_parked_mid_attack"] = status.polls_parked();
    }
    for (std::thread& poll : polls) poll.join();
    line["greedy_polls_refused"] = refused.load();
    line["greedy_polls_answered"] = answered.load();
  } else if (attack == "renew_flood") {
    absl::StatusOr<pki::PrivateKey> key = pki::PrivateKey::GenerateP256();
    if (!key.ok()) return key.status();
    absl::StatusOr<std::string> csr = pki::MakeCsr(*key, (*greedy)->config.client_id);
    if (!csr.ok()) return csr.status();
    absl::StatusOr<std::string> public_key = key->PublicKeyDer();
    if (!public_key.ok()) return public_key.status();
    absl::StatusOr<pki::KeyChange> change =
        pki::SignKeyChange((*greedy)->channel.key,
                           pki::SpiffeId{(*greedy)->config.federation, pki::IdentityKind::kClient,
                                         (*greedy)->config.client_id},
                           *public_key);
    if (!change.ok()) return change.status();
    v1::RenewCertificateRequest request;
    request.set_csr_der(*csr);
    request.set_key_change_signature(change->signature);
    const std::filesystem::path wal = federation.config_path().parent_path() / "state.db-wal";
    std::error_code ignored;
    const auto wal_before = std::filesystem::file_size(wal, ignored);
    int issued = 0;
    int refused = 0;
    const absl::Time until = absl::Now() + duration;
    while (absl::Now() < until) {
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
      v1::RenewCertificateResponse response;
      (*greedy)->certificates->Renew(&context, request, &response).ok() ? ++issued : ++refused;
    }
    line["renewals_issued"] = issued;
    line["renewals_refused"] = refused;
    const auto wal_after = std::filesystem::file_size(wal, ignored);
    line["wal_growth_bytes"] = static_cast<int64_t>(wal_after) - static_cast<int64_t>(wal_before);
  } else if (attack == "enroll_guess") {
    auto stub = v1::Enrollment::NewStub(grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", federation.enroll_port()), grpc::SslCredentials([&] {
          grpc::SslCredentialsOptions options;
          options.pem_root_certs =
              testing::ReadFile(federation.config_path().parent_path() / "ca.pem");
          return options;
        }())));
    absl::StatusOr<pki::PrivateKey> key = pki::PrivateKey::GenerateP256();
    if (!key.ok()) return key.status();
    absl::StatusOr<std::string> csr = pki::MakeCsr(*key, "guesser");
    if (!csr.ok()) return csr.status();
    int tries = 0;
    int rate_limited = 0;
    int unavailable = 0;
    const absl::Time until = absl::Now() + duration;
    while (absl::Now() < until) {
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
      context.set_authority("localhost");
      v1::EnrollRequest request;
      // Well-formed guesses (<16 hex>.<64 hex>), which the coordinator looks up.
      request.set_token(absl::StrFormat("%016x.%064x", tries, tries));
      request.set_csr_der(*csr);
      v1::EnrollResponse response;
      const grpc::Status status = stub->Enroll(&context, request, &response);
      ++tries;
      if (status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
        ++rate_limited;
      } else if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
        // The connection was cut (byte budget) or refused (connection rate).
        ++unavailable;
      }
    }
    line["tries"] = tries;
    line["tries_per_second"] = tries / static_cast<double>(flags.seconds);
    line["refused_by_rate_limit"] = rate_limited;
    line["connection_cut_or_refused"] = unavailable;
    line["tokens_checked"] = tries - rate_limited - unavailable;
  } else {
    stop = true;
    enroll_probe.join();
    return absl::InvalidArgumentError(absl::StrCat("no attack named \"", attack, "\""));
  }
  enroll_probe.join();
  observer.AttackOver();
  const double enroll_after = federation.TimeEnrollment();
  absl::SleepFor(duration);
  observer.Stop();
  observer.Report(line);
  line["enroll_seconds_during"] = enroll_during;
  line["enroll_seconds_after"] = enroll_after;
  line["coordinator_alive"] = federation.running();
  const std::string log = federation.Log().substr(log_before);
  line["coordinator_log_bytes"] = log.size();
  line["log_connection_refused"] = CountLogEvents(log, "connection_refused");
  line["log_connection_cut"] = CountLogEvents(log, "connection_cut");
  line["log_call_refused"] = CountLogEvents(log, "call_refused");
  line["target_poll_p99_under_100ms"] = observer.poll_p99_ms() < 100.0;
  if (attack == "rapid_reset") {
    const double limit = 2 * observer.idle_rss() + 100;
    line["target_rss_limit_mib"] = limit;
    line["target_rss_under_limit"] = observer.peak_rss() < limit;
  }
  std::printf("%s\n", line.dump().c_str());
  std::fflush(stdout);
  return absl::OkStatus();
}

absl::StatusOr<Flags> ParseFlags(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  auto line = config::CommandLine::Parse(
      args, {"attack", "seconds", "connections", "rate", "fd-limit", "work"}, {});
  if (!line.ok()) return line.status();
  Flags flags;
  for (auto [name, target, min, max] : {std::tuple{"seconds", &flags.seconds, 1, 600},
                                        {"connections", &flags.connections, 1, 64},
                                        {"rate", &flags.rate, 0, 10000000},
                                        {"fd-limit", &flags.fd_limit, 256, 65536}}) {
    absl::StatusOr<int64_t> value = line->IntOr(name, *target, min, max);
    if (!value.ok()) return value.status();
    *target = *value;
  }
  const std::string attacks = line->GetOr("attack", "all");
  if (attacks != "all") flags.attacks = absl::StrSplit(attacks, ',');
  for (const std::string& attack : flags.attacks) {
    if (std::find(AllAttacks().begin(), AllAttacks().end(), attack) == AllAttacks().end()) {
      return absl::InvalidArgumentError(absl::StrCat("--attack: no attack named \"", attack, "\""));
    }
  }
  flags.work = line->GetOr(
      "work",
      (std::filesystem::temp_directory_path() / absl::StrCat("fedmoe-abuse-", getpid())).string());
  return flags;
}

int Run(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") {
      std::printf("%s", kUsage);
      return 0;
    }
  }
  absl::StatusOr<Flags> flags = ParseFlags(argc, argv);
  if (!flags.ok()) {
    std::fprintf(stderr, "abuse: %s\n%s", std::string(flags.status().message()).c_str(), kUsage);
    return 2;
  }
  SetMinLogLevel(LogLevel::kWarning);
  // The floods hold thousands of sockets on this side too.
  rlimit limit{};
  getrlimit(RLIMIT_NOFILE, &limit);
  limit.rlim_cur = limit.rlim_max;
  setrlimit(RLIMIT_NOFILE, &limit);
  std::signal(SIGPIPE, SIG_IGN);
  int failures = 0;
  for (const std::string& attack : flags->attacks) {
    if (absl::Status status = RunAttack(attack, *flags); !status.ok()) {
      std::fprintf(stderr, "abuse: %s: %s\n", attack.c_str(),
                   std::string(status.message()).c_str());
      ++failures;
    }
  }
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace fedmoe::simulation

int main(int argc, char** argv) { return fedmoe::simulation::Run(argc, argv); }
