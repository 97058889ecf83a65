// A real fedmoe-coordinator in a fresh state directory on free loopback ports, and the admin
// and enrollment steps that integration tests share: tokens, enrolled client state
// directories tuned for tests (short polls and backoff), and client daemons.
#ifndef FEDMOE_TESTS_INTEGRATION_COORDINATOR_FIXTURE_H_
#define FEDMOE_TESTS_INTEGRATION_COORDINATOR_FIXTURE_H_

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "coordinator/state/store.h"
#include "fedmoe/v1/admin.pb.h"
#include "pki/certificate_authority.h"
#include "pki/private_key.h"
#include "tests/integration/process_harness.h"
#include "tests/testing_temp_dir.h"

namespace fedmoe::testing {

struct Token {
  std::string token;
  std::string fingerprint;
};

class CoordinatorFixture : public ::testing::Test {
 protected:
  // `init` in a fresh state directory, with a 2 s poll wait so that "the next RPC" comes within
  // seconds. Tests may edit coordinator.yaml before StartCoordinator().
  void InitCoordinator() {
    mtls_address_ = absl::StrCat("127.0.0.1:", FreePort());
    enroll_address_ = absl::StrCat("127.0.0.1:", FreePort());
    state_ = dir_.path() / "coordinator";
    CommandResult init =
        Coordinator({"init", "--federation", "acme", "--state-dir", state_.string(), "--listen",
                     mtls_address_, "--enroll-listen", enroll_address_});
    ASSERT_EQ(init.exit_code, 0) << init.err;
    ASSERT_TRUE(
        ReplaceInFile(state_ / "coordinator.yaml", "poll_max_wait: 30s", "poll_max_wait: 2s"));
    // Tests run in parallel: each coordinator serves /metrics on a port of its own.
    metrics_address_ = absl::StrCat("127.0.0.1:", FreePort());
    ASSERT_TRUE(ReplaceInFile(state_ / "coordinator.yaml", "listen: \"127.0.0.1:9464\"",
                              absl::StrCat("listen: \"", metrics_address_, "\"")));
  }

  void StartCoordinator() {
    coordinator_ = std::make_unique<Daemon>(
        std::vector<std::string>{BinaryPath("fedmoe-coordinator"), "serve", "--config",
                                 (state_ / "coordinator.yaml").string()},
        dir_.path() / absl::StrCat("coordinator-", ++coordinator_starts_, ".log"));
    ASSERT_TRUE(WaitFor([&] { return Coordinator({"status"}).exit_code == 0; }, absl::Seconds(20)))
        << coordinator_->Log();
  }

  // Runs an admin command against this federation.
  CommandResult Coordinator(const std::vector<std::string>& args) {
    std::vector<std::string> command = {BinaryPath("fedmoe-coordinator")};
    command.insert(command.end(), args.begin(), args.end());
    if (args.empty() || args.front() != "init") {
      command.emplace_back("--state-dir");
      command.push_back(state_.string());
    }
    return RunCommand(command);
  }

  Token CreateToken(const std::string& client_id, const std::string& ttl = "1h") {
    CommandResult result =
        Coordinator({"token", "create", "--client-id", client_id, "--ttl", ttl, "--json"});
    EXPECT_EQ(result.exit_code, 0) << result.err;
    google::protobuf::Struct json;
    EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(result.out, &json).ok()) << result.out;
    return {json.fields().at("token").string_value(),
            json.fields().at("ca_fingerprint").string_value()};
  }

  CommandResult Enroll(const Token& token, const std::filesystem::path& state_dir,
                       const std::vector<std::string>& extra_flags = {}) {
    std::vector<std::string> args = {BinaryPath("fedmoe-client"),
                                     "enroll",
                                     "--coordinator",
                                     enroll_address_,
                                     "--token",
                                     token.token,
                                     "--ca-fingerprint",
                                     token.fingerprint,
                                     "--state-dir",
                                     state_dir.string()};
    args.insert(args.end(), extra_flags.begin(), extra_flags.end());
    return RunCommand(args);
  }

  // Enrolls `client_id` and tunes its daemon for tests: short polls and backoff.
  std::filesystem::path EnrollClient(const std::string& client_id,
                                     const std::vector<std::string>& extra_flags = {}) {
    std::filesystem::path state_dir = dir_.path() / client_id;
    CommandResult result = Enroll(CreateToken(client_id), state_dir, extra_flags);
    EXPECT_EQ(result.exit_code, 0) << result.err;
    const auto config = state_dir / "client.yaml";
    EXPECT_TRUE(ReplaceInFile(config, "max_wait: 30s", "max_wait: 2s"));
    EXPECT_TRUE(ReplaceInFile(config, "backoff_initial: 1s", "backoff_initial: 100ms"));
    EXPECT_TRUE(ReplaceInFile(config, "backoff_max: 1m", "backoff_max: 1s"));
    return state_dir;
  }

  // Enrolls `client_id` with `domain`'s bundled corpus as its private data, training on one
  // thread.
  std::filesystem::path EnrollWithCorpus(const std::string& client_id, const std::string& domain) {
    const std::filesystem::path data =
        std::filesystem::path(FEDMOE_SOURCE_DIR) / "deploy/corpora" / domain;
    std::filesystem::path state_dir = EnrollClient(client_id, {"--data", data.string()});
    EXPECT_TRUE(ReplaceInFile(state_dir / "client.yaml", "threads: 0", "threads: 1"));
    return state_dir;
  }

  // Replaces the client's certificate by one for the same key, issued two hours ago and ending
  // in five minutes, as the coordinator's CA would have issued it, and records it in the
  // coordinator's registry: the client's daemon renews as soon as it starts.
  pki::Certificate AgeClientCertificate(const std::filesystem::path& state_dir,
                                        const std::string& client_id) {
    auto ca = pki::CertificateAuthority::Load(*pki::Certificate::ReadFile(state_ / "ca.pem"),
                                              *pki::PrivateKey::ReadFile(state_ / "ca.key"));
    EXPECT_TRUE(ca.ok()) << ca.status();
    auto key = pki::PrivateKey::ReadFile(state_dir / "client.key");
    auto aging = ca->IssueFromCsr(*pki::MakeCsr(*key, client_id),
                                  {"acme", pki::IdentityKind::kClient, client_id},
                                  absl::Hours(2) + absl::Minutes(5), absl::Now() - absl::Hours(2));
    EXPECT_TRUE(aging.ok()) << aging.status();
    auto store = coordinator::Store::Open(state_ / "state.db");
    EXPECT_TRUE(store.ok()) << store.status();
    EXPECT_TRUE((*store)
                    ->RecordRenewal(client_id,
                                    {aging->SerialHex(),
                                     absl::StrCat("spiffe://acme/client/", client_id),
                                     aging->NotAfter(),
                                     ca->certificate().Sha256Fingerprint(),
                                     {ca->certificate().Sha256Fingerprint()},
                                     aging->PublicKeyDer()},
                                    absl::Now() - absl::Hours(2))
                    .ok());
    EXPECT_TRUE(aging->WriteFile(state_dir / "client.pem").ok());
    return *aging;
  }

  // Starts `fedmoe-client run`, with its /metrics on a free port (client_metrics_[state_dir]).
  std::unique_ptr<Daemon> StartClient(const std::filesystem::path& state_dir) {
    const std::string metrics = absl::StrCat("127.0.0.1:", FreePort());
    if (ReplaceInFile(state_dir / "client.yaml", "listen: \"127.0.0.1:9465\"",
                      absl::StrCat("listen: \"", metrics, "\""))) {
      client_metrics_[state_dir.filename().string()] = metrics;
    }
    return std::make_unique<Daemon>(
        std::vector<std::string>{BinaryPath("fedmoe-client"), "run", "--config",
                                 (state_dir / "client.yaml").string()},
        state_dir.parent_path() / (state_dir.filename().string() + ".log"));
  }

  // A coordinator whose round policy is `rounds_yaml` (the rounds, privacy and secagg
  // sections), over a freshly initialised small MoE; `edits` replace text in the rest of
  // coordinator.yaml.
  void StartFederation(const std::string& rounds_yaml,
                       const std::vector<std::pair<std::string, std::string>>& edits = {}) {
    const std::filesystem::path source = FEDMOE_SOURCE_DIR;
    CommandResult model = RunCommand({BinaryPath("fedmoe-client"), "model", "init", "--config",
                                      (source / "deploy/quickstart-model.json").string(), "--out",
                                      (dir_.path() / "initial").string(), "--seed", "3"});
    ASSERT_EQ(model.exit_code, 0) << model.err;
    InitCoordinator();
    const std::filesystem::path config = state_ / "coordinator.yaml";
    std::string text = ReadFile(config);
    text = text.substr(0, text.find("\nmodel:\n"));
    text += absl::StrCat("\nmodel:\n  initial: ", (dir_.path() / "initial").string(), "\n",
                         rounds_yaml);
    WriteFile(config, text);
    for (const auto& [from, to] : edits) ASSERT_TRUE(ReplaceInFile(config, from, to)) << from;
    StartCoordinator();
  }

  v1::ListRoundsResponse Rounds() {
    CommandResult result = Coordinator({"rounds", "list", "--json"});
    v1::ListRoundsResponse rounds;
    EXPECT_EQ(result.exit_code, 0) << result.err;
    EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(result.out, &rounds).ok())
        << result.out;
    return rounds;
  }

  int Committed() {
    int committed = 0;
    const v1::ListRoundsResponse rounds = Rounds();
    for (const v1::RoundInfo& round : rounds.rounds()) {
      committed += round.stage() == v1::ROUND_STAGE_COMMITTED;
    }
    return committed;
  }

  v1::GetStatusResponse Status() {
    CommandResult result = Coordinator({"status", "--json"});
    v1::GetStatusResponse status;
    EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(result.out, &status).ok())
        << result.out;
    return status;
  }

  TempDir dir_;
  std::filesystem::path state_;
  std::string mtls_address_;
  std::string enroll_address_;
  std::string metrics_address_;
  // Each started client's /metrics address, by state directory name.
  std::map<std::string, std::string> client_metrics_;
  std::unique_ptr<Daemon> coordinator_;
  int coordinator_starts_ = 0;
};

}  // namespace fedmoe::testing

#endif  // FEDMOE_TESTS_INTEGRATION_COORDINATOR_FIXTURE_H_
