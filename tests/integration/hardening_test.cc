// The coordinator under the attacks of issue [resilience], at small scale: a real coordinator
// process on loopback, attacked from 127.0.0.2 (simulation/abuse_attacks.h) while the legitimate
// side works from 127.0.0.1. bench/abuse runs the same attacks at full scale.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/client_config.h"
#include "client/coordinator_channel.h"
#include "fedmoe/v1/enrollment.grpc.pb.h"
#include "fedmoe/v1/federation.grpc.pb.h"
#include "pki/certificate_authority.h"
#include "pki/key_change.h"
#include "simulation/abuse_attacks.h"
#include "tests/integration/coordinator_fixture.h"

namespace fedmoe::testing {
namespace {

using simulation::ConnectionFlood;
using simulation::RapidReset;
using simulation::TlsPortAnswers;

int PortOf(const std::string& address) { return std::stoi(address.substr(address.rfind(':') + 1)); }

// The coordinator's log lines that carry `event`.
std::vector<std::string> Events(const std::string& log, const std::string& event) {
  std::vector<std::string> lines;
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    if (absl::StrContains(line, absl::StrCat("\"event\":\"", event, "\""))) {
      lines.emplace_back(line);
    }
  }
  return lines;
}

// GET `path` over plain HTTP; the status line and body, or "" when no answer came within
// `timeout`.
std::string HttpGet(const std::string& address, const std::string& path, absl::Duration timeout) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(absl::ToInt64Seconds(timeout));
  tv.tv_usec = static_cast<suseconds_t>(absl::ToInt64Microseconds(timeout) % 1'000'000);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in target{};
  target.sin_family = AF_INET;
  target.sin_port = htons(static_cast<uint16_t>(PortOf(address)));
  target.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string answer;
  if (connect(fd, reinterpret_cast<sockaddr*>(&target), sizeof(target)) == 0) {
    const std::string request = absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: localhost\r\n\r\n");
    if (write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      char buffer[4096];
      for (ssize_t n; (n = read(fd, buffer, sizeof(buffer))) > 0;) {
        answer.append(buffer, static_cast<size_t>(n));
      }
    }
  }
  close(fd);
  return answer;
}

class HardeningTest : public CoordinatorFixture {
 protected:
  // Sets limits.<key> in coordinator.yaml.
  void SetLimit(const std::string& key, const std::string& from, const std::string& to) {
    ASSERT_TRUE(ReplaceInFile(state_ / "coordinator.yaml",
                              absl::StrCat("  ", key, ": ", from, "\n"),
                              absl::StrCat("  ", key, ": ", to, "\n")))
        << key;
  }

  // An enrolled client's own channel, for calls the daemon would not make.
  struct Member {
    client::CoordinatorChannel channel;
    std::unique_ptr<v1::Federation::Stub> federation;
    std::unique_ptr<v1::Certificates::Stub> certificates;
    client::ClientConfig config;
  };
  Member Open(const std::filesystem::path& state_dir) {
    absl::StatusOr<client::ClientConfig> config =
        client::ClientConfig::Load(state_dir / "client.yaml");
    EXPECT_TRUE(config.ok()) << config.status();
    absl::StatusOr<client::CoordinatorChannel> channel =
        client::DialCoordinator(*config, /*own_connection=*/true);
    EXPECT_TRUE(channel.ok()) << channel.status();
    Member member{*std::move(channel), nullptr, nullptr, *config};
    member.federation = v1::Federation::NewStub(member.channel.channel);
    member.certificates = v1::Certificates::NewStub(member.channel.channel);
    return member;
  }

  // Every line of the coordinator's log is a JSON object (gRPC's own lines included).
  void ExpectOnlyJsonLines() {
    for (absl::string_view line : absl::StrSplit(coordinator_->Log(), '\n', absl::SkipEmpty())) {
      EXPECT_TRUE(absl::StartsWith(line, "{\"ts\":")) << line;
    }
  }
};

TEST_F(HardeningTest, APortOutOfDescriptorsComesBackAsSoonAsTheyAreFree) {
  InitCoordinator();
  // Without the connection caps the flood reaches the descriptor limit.
  SetLimit("max_connections", "4096", "0");
  SetLimit("max_connections_per_peer", "64", "0");
  coordinator_ = std::make_unique<Daemon>(
      std::vector<std::string>{"/usr/bin/prlimit", "--nofile=256:256", "--",
                               BinaryPath("fedmoe-coordinator"), "serve", "--config",
                               (state_ / "coordinator.yaml").string()},
      dir_.path() / "coordinator.log");
  ASSERT_TRUE(WaitFor([&] { return Coordinator({"status"}).exit_code == 0; }, absl::Seconds(20)))
      << coordinator_->Log();

  ConnectionFlood flood;
  EXPECT_EQ(flood.Open(PortOf(mtls_address_), 300), 300);
  ASSERT_TRUE(
      WaitFor([&] { return !Events(coordinator_->Log(), "listener_not_accepting").empty(); },
              absl::Seconds(10)))
      << coordinator_->Log();
  flood.CloseAll();
  const absl::Time freed = absl::Now();
  ASSERT_TRUE(WaitFor(
      [&] {
        return TlsPortAnswers(PortOf(mtls_address_), absl::Seconds(1)) &&
               TlsPortAnswers(PortOf(enroll_address_), absl::Seconds(1));
      },
      absl::Seconds(5)));
  EXPECT_LT(absl::Now() - freed, absl::Seconds(5));
  EXPECT_EQ(Coordinator({"status"}).exit_code, 0);
  EnrollClient("after-the-flood");
  ASSERT_TRUE(WaitFor([&] { return !Events(coordinator_->Log(), "listener_accepting").empty(); },
                      absl::Seconds(5)));

  std::map<std::string, double> samples;
  std::string error;
  ASSERT_TRUE(ScrapeMetrics(metrics_address_, samples, error)) << error;
  EXPECT_EQ(samples["fedmoe_up"], 1);
  EXPECT_EQ(samples["fedmoe_port_accepting{port=\"federation\"}"], 1);
  EXPECT_GE(samples["fedmoe_connections_refused_total{port=\"federation\",reason=\"descriptors_"
                    "exhausted\"}"],
            1);
  EXPECT_TRUE(
      absl::StartsWith(HttpGet(metrics_address_, "/health", absl::Seconds(2)), "HTTP/1.1 200"));
  const std::vector<std::string> refused = Events(coordinator_->Log(), "connection_refused");
  ASSERT_FALSE(refused.empty());
  EXPECT_TRUE(absl::StrContains(refused.front(), "\"reason\":\"descriptors_exhausted\""))
      << refused.front();
}

TEST_F(HardeningTest, ConnectionCapsRefuseOnePeerWithOneLogLineAndServeTheOthers) {
  InitCoordinator();
  SetLimit("max_connections_per_peer", "64", "3");
  StartCoordinator();
  ConnectionFlood flood;
  flood.Open(PortOf(mtls_address_), 10);
  ASSERT_TRUE(WaitFor([&] { return flood.ClosedByPeer() >= 7; }, absl::Seconds(5)))
      << flood.ClosedByPeer();
  // 127.0.0.1, the operator's, is another peer.
  EXPECT_EQ(Coordinator({"status"}).exit_code, 0);
  const std::vector<std::string> refused = Events(coordinator_->Log(), "connection_refused");
  ASSERT_EQ(refused.size(), 1U) << coordinator_->Log();
  EXPECT_TRUE(absl::StrContains(refused.front(), "\"peer\":\"127.0.0.2\"")) << refused.front();
  EXPECT_TRUE(absl::StrContains(refused.front(), "\"reason\":\"max_connections_per_peer\""))
      << refused.front();
  EXPECT_TRUE(absl::StrContains(refused.front(), "\"limit\":3")) << refused.front();

  flood.CloseAll();
  // Once the coordinator has seen the flood's connections close, the peer gets in again; a TLS
  // handshake without a client certificate then makes gRPC log, and the line is JSON.
  EXPECT_TRUE(WaitFor([&] { return TlsPortAnswers(PortOf(mtls_address_), absl::Seconds(2)); },
                      absl::Seconds(5)));
  EXPECT_TRUE(TlsPortAnswers(PortOf(enroll_address_), absl::Seconds(2)));
  ASSERT_TRUE(
      WaitFor([&] { return !Events(coordinator_->Log(), "grpc").empty(); }, absl::Seconds(5)))
      << coordinator_->Log();
  ExpectOnlyJsonLines();
}

TEST_F(HardeningTest, RapidResetOnTheEnrollmentPortIsCutAndMemoryStaysBounded) {
  InitCoordinator();
  StartCoordinator();
  const double idle = ProcStatusMiB(coordinator_->pid(), "VmRSS");
  std::atomic<bool> done = false;
  double peak = idle;
  std::thread sampler([&] {
    while (!done) {
      peak = std::max(peak, ProcStatusMiB(coordinator_->pid(), "VmRSS"));
      absl::SleepFor(absl::Milliseconds(50));
    }
  });
  const simulation::RapidResetReport report =
      RapidReset(PortOf(enroll_address_), "/fedmoe.v1.Enrollment/Enroll", 2,
                 /*pairs_per_second=*/5000, absl::Seconds(3));
  absl::SleepFor(absl::Seconds(1));
  done = true;
  sampler.join();
  EXPECT_GT(report.pairs, 5000);
  EXPECT_LT(peak, 2 * idle + 100) << "idle " << idle << " MiB";
  ASSERT_FALSE(Events(coordinator_->Log(), "connection_cut").empty()) << coordinator_->Log();
  EXPECT_TRUE(absl::StrContains(Events(coordinator_->Log(), "connection_cut").front(),
                                "\"reason\":\"byte_budget\""));
  // The legitimate side, from its own address, was never in the way.
  EnrollClient("after-the-attack");
  EXPECT_EQ(Coordinator({"status"}).exit_code, 0);
}

TEST_F(HardeningTest, AnIdleConnectionDoesNotBlockMetricsOrHealth) {
  InitCoordinator();
  StartCoordinator();
  ConnectionFlood idle;
  ASSERT_EQ(idle.Open(PortOf(metrics_address_), 1), 1);
  const absl::Time started = absl::Now();
  std::map<std::string, double> samples;
  std::string error;
  ASSERT_TRUE(ScrapeMetrics(metrics_address_, samples, error)) << error;
  EXPECT_LT(absl::Now() - started, absl::Seconds(1));
  EXPECT_EQ(samples["fedmoe_up"], 1);
  EXPECT_EQ(samples["fedmoe_port_accepting{port=\"enrollment\"}"], 1);
  const std::string health = HttpGet(metrics_address_, "/health", absl::Seconds(1));
  EXPECT_TRUE(absl::StartsWith(health, "HTTP/1.1 200")) << health;
  EXPECT_TRUE(absl::EndsWith(health, "ok\n")) << health;
  // The idle connection itself is closed within the request timeout.
  EXPECT_TRUE(WaitFor([&] { return idle.ClosedByPeer() == 1; }, absl::Seconds(10)));
}

TEST_F(HardeningTest, OneClientHoldsAtMostItsShareOfPolls) {
  InitCoordinator();
  StartCoordinator();
  Member greedy = Open(EnrollClient("greedy"));
  std::atomic<int> refused = 0;
  std::atomic<int> answered = 0;
  std::string message;
  std::mutex mutex;
  std::vector<std::thread> polls;
  for (int i = 0; i < 5; ++i) {
    polls.emplace_back([&] {
      v1::PollTaskRequest request;
      request.mutable_max_wait()->set_seconds(2);
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
      v1::PollTaskResponse response;
      const grpc::Status status = greedy.federation->PollTask(&context, request, &response);
      if (status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
        ++refused;
        std::lock_guard<std::mutex> lock(mutex);
        message = status.error_message();
      } else if (status.ok()) {
        ++answered;
      }
    });
  }
  for (std::thread& poll : polls) poll.join();
  EXPECT_EQ(answered.load(), 2);
  EXPECT_EQ(refused.load(), 3);
  EXPECT_TRUE(absl::StrContains(message, "limits.polls_per_client")) << message;
  // Its share is free again once its polls end.
  v1::PollTaskRequest request;
  request.mutable_max_wait()->set_seconds(0);
  grpc::ClientContext context;
  v1::PollTaskResponse response;
  EXPECT_TRUE(greedy.federation->PollTask(&context, request, &response).ok());
}

TEST_F(HardeningTest, RenewalsAreLimitedPerClient) {
  InitCoordinator();
  SetLimit("renewals_per_hour", "10", "2");
  StartCoordinator();
  Member member = Open(EnrollClient("renewer"));
  absl::StatusOr<pki::PrivateKey> key = pki::PrivateKey::GenerateP256();
  ASSERT_TRUE(key.ok());
  v1::RenewCertificateRequest request;
  request.set_csr_der(*pki::MakeCsr(*key, "renewer"));
  request.set_key_change_signature(
      pki::SignKeyChange(member.channel.key,
                         pki::SpiffeId{"acme", pki::IdentityKind::kClient, "renewer"},
                         *key->PublicKeyDer())
          ->signature);
  std::vector<grpc::Status> results;
  for (int i = 0; i < 3; ++i) {
    grpc::ClientContext context;
    v1::RenewCertificateResponse response;
    results.push_back(member.certificates->Renew(&context, request, &response));
  }
  EXPECT_TRUE(results[0].ok()) << results[0].error_message();
  EXPECT_TRUE(results[1].ok()) << results[1].error_message();
  EXPECT_EQ(results[2].error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(absl::StrContains(results[2].error_message(), "limits.renewals_per_hour"))
      << results[2].error_message();
}

TEST_F(HardeningTest, GuessedTokensAreRefusedUncheckedPastTheBudgetAndLoggedOncePerInterval) {
  InitCoordinator();
  SetLimit("enrollment_failures_per_minute", "10", "3");
  StartCoordinator();
  grpc::SslCredentialsOptions tls;
  tls.pem_root_certs = ReadFile(state_ / "ca.pem");
  grpc::ChannelArguments arguments;
  arguments.SetSslTargetNameOverride("localhost");
  auto enrollment = v1::Enrollment::NewStub(
      grpc::CreateCustomChannel(enroll_address_, grpc::SslCredentials(tls), arguments));
  int limited = 0;
  int other = 0;
  std::string message;
  for (int i = 0; i < 20; ++i) {
    grpc::ClientContext context;
    v1::EnrollRequest request;
    request.set_token(absl::StrCat("guess-", i));
    v1::EnrollResponse response;
    const grpc::Status status = enrollment->Enroll(&context, request, &response);
    ASSERT_FALSE(status.ok());
    if (status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
      ++limited;
      message = status.error_message();
    } else {
      ++other;
    }
  }
  EXPECT_EQ(other, 3);
  EXPECT_EQ(limited, 17);
  EXPECT_TRUE(absl::StrContains(message, "too many failed enrollments from 127.0.0.1")) << message;
  // One line names the peer; the other 19 attempts of the interval only count.
  const std::vector<std::string> lines = Events(coordinator_->Log(), "call_refused");
  std::vector<std::string> enroll_lines;
  for (const std::string& line : lines) {
    if (absl::StrContains(line, "\"method\":\"Enroll\"")) enroll_lines.push_back(line);
  }
  ASSERT_EQ(enroll_lines.size(), 1U) << coordinator_->Log();
  EXPECT_TRUE(absl::StrContains(enroll_lines.front(), "\"caller\":\"127.0.0.1\""))
      << enroll_lines.front();
}

}  // namespace
}  // namespace fedmoe::testing
