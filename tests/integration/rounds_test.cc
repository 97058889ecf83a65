// Federated rounds end to end (DESIGN §3–§6), with real fedmoe-coordinator and fedmoe-client
// processes over loopback mutual TLS: local training, distributed DP, SecAgg+, the expert
// merge, checkpoints, the privacy ledger, revocation, restarts and the privacy budget.
#include <gmock/gmock.h>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include <cmath>
#include <csignal>
#include <filesystem>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "fedmoe/v1/admin.pb.h"
#include "pki/certificate.h"
#include "pki/key_change.h"
#include "pki/private_key.h"
#include "pki/trust_bundle.h"
#include "privacy/noise.h"
#include "privacy/rdp_accountant.h"
#include "tests/integration/coordinator_fixture.h"
#include "tests/integration/loopback_http.h"
#include "tests/integration/process_harness.h"
#include "tests/testing_temp_dir.h"

namespace fedmoe::testing {
namespace {

using ::testing::HasSubstr;

class RoundsTest : public CoordinatorFixture {
 protected:
  // EnrollWithCorpus, and starts its daemon.
  void AddClient(const std::string& client_id, const std::string& domain) {
    clients_[client_id] = StartClient(EnrollWithCorpus(client_id, domain));
  }

  // The three organisations most tests federate.
  void AddThreeClients() {
    AddClient("bank", "finance");
    AddClient("helpdesk", "it_support");
    AddClient("lawfirm", "contracts");
  }

  double EvalLoss(const std::filesystem::path& model, const std::filesystem::path& data) {
    // Minutes, not seconds: under the sanitizers an evaluation is slow.
    CommandResult result = RunCommand({BinaryPath("fedmoe-client"), "model", "eval", "--model",
                                       model.string(), "--data", data.string(), "--seq-len", "64"},
                                      absl::Minutes(5));
    EXPECT_EQ(result.exit_code, 0) << result.err;
    google::protobuf::Struct json;
    EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(result.out, &json).ok());
    return json.fields().at("loss").number_value();
  }

  std::map<std::string, std::unique_ptr<Daemon>> clients_;
};

constexpr char kModerateNoise[] = R"(privacy:
  mode: distributed
  noise_multiplier: 0.5
)";

constexpr char kTraining[] = R"(  training:
    steps: 15
    batch_size: 4
    seq_len: 64
    learning_rate: 0.01
)";

// Rounds of three, one after another without end, for tests that act while they run.
const std::string kRoundAfterRound = absl::StrCat(R"(rounds:
  min_clients: 3
  interval: 1s
  timeouts:
    train: 30s
)",
                                                  kTraining, kModerateNoise);

// The ledger against a recomputation from its own entries: ε grows round by round, each round
// charges every noise draw the table sampler's distance from its law (one draw per value from
// each of `noise_sources`: the survivors in distributed DP, the coordinator in central DP), and
// ε after the last entry is what their summed RDP and charges give at δ.
void ExpectLedgerRecomputes(const v1::GetPrivacyLedgerResponse& ledger, int noise_sources) {
  ASSERT_GE(ledger.entries_size(), 2);
  const std::vector<double> orders(ledger.entries(0).orders().begin(),
                                   ledger.entries(0).orders().end());
  std::vector<double> rdp(orders.size(), 0.0);
  double charged = 0;
  double previous = 0;
  for (const v1::PrivacyLedgerEntry& entry : ledger.entries()) {
    ASSERT_EQ(entry.rdp_size(), static_cast<int>(orders.size()));
    for (size_t i = 0; i < orders.size(); ++i) rdp[i] += entry.rdp(static_cast<int>(i));
    const double values = entry.sampler_total_variation() /
                          (noise_sources * privacy::TabulatedNoise::kDrawTotalVariation);
    EXPECT_GT(values, 1000) << "noise on every value of the update";
    EXPECT_EQ(std::exp2(std::round(std::log2(values))), values)
        << "the encoded length is a power of two";
    charged += entry.sampler_total_variation();
    EXPECT_GT(entry.epsilon_after(), previous);
    EXPECT_TRUE(std::isfinite(entry.epsilon_after()));
    previous = entry.epsilon_after();
  }
  EXPECT_DOUBLE_EQ(ledger.sampler_total_variation(), charged);
  absl::StatusOr<privacy::PrivacyLoss> recomputed =
      privacy::RdpToEpsilon(orders, rdp, ledger.delta(), charged);
  ASSERT_TRUE(recomputed.ok()) << recomputed.status();
  EXPECT_NEAR(ledger.epsilon_spent(), recomputed->epsilon, 1e-9 * recomputed->epsilon);
  EXPECT_GT(ledger.epsilon_spent(), privacy::RdpToEpsilon(orders, rdp, ledger.delta())->epsilon)
      << "the charge is in the ε reported";
}

// `privacy epsilon --mode MODE` for the rounds a ledger holds, planned as if before they ran:
// noise multiplier z, q = 1, δ = 10^-5 and the config's other defaults, three clients, and the
// encoded length the ledger's first charge implies. The plan must be what the ledger says.
void ExpectThePlanPredictsTheLedger(const v1::GetPrivacyLedgerResponse& ledger,
                                    const std::string& mode, double noise_multiplier,
                                    int noise_sources) {
  ASSERT_GE(ledger.entries_size(), 1);
  const double encoded_values = ledger.entries(0).sampler_total_variation() /
                                (noise_sources * privacy::TabulatedNoise::kDrawTotalVariation);
  CommandResult plan =
      RunCommand({BinaryPath("fedmoe-coordinator"), "privacy", "epsilon", "--mode", mode,
                  "--noise-multiplier", absl::StrCat(noise_multiplier), "--sampling-rate", "1",
                  "--rounds", absl::StrCat(ledger.entries_size()), "--delta", "1e-5", "--clients",
                  "3", "--values", absl::StrCat(static_cast<int64_t>(encoded_values))});
  ASSERT_EQ(plan.exit_code, 0) << plan.err;
  google::protobuf::Struct json;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(plan.out, &json).ok()) << plan.out;
  const double planned = json.fields().at("epsilon").number_value();
  EXPECT_NEAR(ledger.epsilon_spent(), planned, 1e-9 * planned);
}

TEST_F(RoundsTest, TwoRoundsWithThreeClientsCommitLoadableModelsAndLowerTheLoss) {
  StartFederation(absl::StrCat(R"(rounds:
  min_clients: 3
  interval: 1s
  max_rounds: 2
  trainable: [all]
)",
                               kTraining, R"(privacy:
  mode: distributed
  noise_multiplier: 0.001
)"));
  // The bank also serves the federation's model (the serve: block).
  const std::filesystem::path bank = EnrollWithCorpus("bank", "finance");
  const int serve_port = FreePort();
  ASSERT_TRUE(
      ReplaceInFile(bank / "client.yaml", "needs token_file.\n  listen: \"\"",
                    absl::StrCat("needs token_file.\n  listen: \"127.0.0.1:", serve_port, "\"")));
  clients_["bank"] = StartClient(bank);
  AddClient("helpdesk", "it_support");
  AddClient("lawfirm", "contracts");
  ASSERT_TRUE(WaitFor([&] { return Committed() == 2; }, absl::Seconds(240))) << coordinator_->Log();

  const v1::ListRoundsResponse rounds = Rounds();
  ASSERT_EQ(rounds.rounds_size(), 2);
  for (const v1::RoundInfo& round : rounds.rounds()) {
    EXPECT_EQ(round.cohort_size(), 3u);
    EXPECT_EQ(round.survivors(), 3u);
    EXPECT_GT(round.epsilon_after(), 0);
  }
  EXPECT_EQ(rounds.rounds(0).committed_model_version(), 3u);
  ASSERT_TRUE(WaitFor([&] { return !Status().rounds_paused_reason().empty(); }, absl::Seconds(10)));
  const v1::GetStatusResponse status = Status();
  EXPECT_EQ(status.model_version(), 3u);
  EXPECT_THAT(status.rounds_paused_reason(), HasSubstr("max_rounds"));

  // Every published version loads, and the federated model predicts the clients' domains
  // better than the one it started from.
  const std::filesystem::path text =
      std::filesystem::path(FEDMOE_SOURCE_DIR) / "deploy/corpora/finance/documents.txt";
  const double before = EvalLoss(state_ / "models/v1", text);
  EvalLoss(state_ / "models/v2", text);
  const double after = EvalLoss(state_ / "models/v3", text);
  EXPECT_LT(after, before - 0.05) << "before " << before << " after " << after;

  CommandResult report = Coordinator({"privacy", "report", "--json"});
  ASSERT_EQ(report.exit_code, 0) << report.err;
  v1::GetPrivacyLedgerResponse ledger;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(report.out, &ledger).ok());
  ASSERT_EQ(ledger.entries_size(), 2);
  EXPECT_EQ(ledger.entries(0).mode(), "distributed");
  EXPECT_DOUBLE_EQ(ledger.epsilon_spent(), ledger.entries(1).epsilon_after());
  // Noise this low puts ε where the samplers' distance from their law, charged at (1 + e^ε)
  // to δ, takes all of δ: no finite ε is certified.
  EXPECT_TRUE(std::isinf(ledger.epsilon_spent())) << ledger.epsilon_spent();
  EXPECT_GT(ledger.sampler_total_variation(), 0);

  // The client's own /metrics agrees with its status.json.
  std::map<std::string, double> metrics;
  std::string error;
  ASSERT_TRUE(ScrapeMetrics(client_metrics_["bank"], metrics, error)) << error;
  EXPECT_EQ(metrics["fedmoe_client_rounds_total{outcome=\"committed\"}"], 2);
  // Version 3 too: the bank downloaded it to serve it.
  EXPECT_EQ(metrics["fedmoe_client_model_version"], 3);
  EXPECT_GT(metrics["fedmoe_client_tokens_per_second"], 0);
  EXPECT_GT(metrics["fedmoe_client_last_sync_timestamp_seconds"], 1.7e9);
  EXPECT_EQ(metrics["fedmoe_client_connected"], 1);

  // The bank's server followed the versions between requests, and serves the newest, version 3
  // (which it downloaded for that), as `model generate` generates from it.
  ASSERT_TRUE(WaitFor(
      [&] {
        return clients_["bank"]->Log().find("\"event\":\"serving\"") != std::string::npos &&
               clients_["bank"]->Log().find("\"version\":3") != std::string::npos;
      },
      absl::Seconds(30)))
      << clients_["bank"]->Log();
  EXPECT_THAT(clients_["bank"]->Log(), HasSubstr("\"version\":2"));
  const HttpResponse served = HttpCall(
      serve_port,
      HttpRequest(
          "POST", "/v1/completions",
          R"({"model": "acme", "prompt": "The invoice", "max_tokens": 12, "temperature": 0})", ""));
  ASSERT_EQ(served.status, 200) << served.body;
  const CommandResult alone = RunCommand(
      {BinaryPath("fedmoe-client"), "model", "generate", "--model", (bank / "models/v3").string(),
       "--prompt", "The invoice", "--max-tokens", "12", "--temperature", "0"});
  ASSERT_EQ(alone.exit_code, 0) << alone.err;
  google::protobuf::Struct completion;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(served.body, &completion).ok());
  EXPECT_EQ(completion.fields()
                .at("choices")
                .list_value()
                .values(0)
                .struct_value()
                .fields()
                .at("text")
                .string_value(),
            alone.out.substr(0, alone.out.size() - 1));

  const std::string client_status = ReadFile(dir_.path() / "bank" / "status.json");
  EXPECT_THAT(client_status, HasSubstr("\"rounds_committed\":2"));
  EXPECT_THAT(client_status, HasSubstr("committed, model version 3"));
  // Trained from version 2 in the second round; version 3 is what that round committed.
  EXPECT_THAT(client_status, HasSubstr("\"trained_from_version\":2"));
  EXPECT_THAT(client_status, HasSubstr("\"latest_committed_version\":3"));
}

TEST_F(RoundsTest, AKill9OfTheCoordinatorAbortsTheOpenRoundAndTheNextOneCommits) {
  StartFederation(absl::StrCat(R"(rounds:
  min_clients: 3
  interval: 1s
  max_rounds: 2
)",
                               kTraining, kModerateNoise));
  AddThreeClients();
  ASSERT_TRUE(WaitFor([&] { return Committed() == 1; }, absl::Seconds(120))) << coordinator_->Log();
  // Kill it while round 2 is open (it starts a second after round 1 commits).
  ASSERT_TRUE(WaitFor([&] { return Rounds().rounds_size() == 2; }, absl::Seconds(30)));
  coordinator_->Signal(SIGKILL);
  coordinator_->Wait(absl::Seconds(10));
  StartCoordinator();

  ASSERT_TRUE(WaitFor([&] { return Committed() == 2; }, absl::Seconds(120))) << coordinator_->Log();
  const v1::ListRoundsResponse rounds = Rounds();
  ASSERT_GE(rounds.rounds_size(), 3);
  bool saw_abort = false;
  for (const v1::RoundInfo& round : rounds.rounds()) {
    if (round.stage() == v1::ROUND_STAGE_ABORTED) {
      saw_abort = true;
      EXPECT_THAT(round.abort_reason(), HasSubstr("restarted"));
      EXPECT_EQ(round.committed_model_version(), 0u);
    }
  }
  EXPECT_TRUE(saw_abort);
  // Nothing committed was lost: both published versions and both ledger entries remain.
  EXPECT_EQ(Status().model_version(), 3u);
  CommandResult report = Coordinator({"privacy", "report", "--json"});
  v1::GetPrivacyLedgerResponse ledger;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(report.out, &ledger).ok());
  EXPECT_EQ(ledger.entries_size(), 2);
  // The restarted coordinator took up the first round's charges from the store.
  ExpectLedgerRecomputes(ledger, 3);
  ExpectThePlanPredictsTheLedger(ledger, "distributed", 0.5, 3);
  EXPECT_TRUE(std::filesystem::exists(state_ / "models/v2/model.safetensors"));
}

TEST_F(RoundsTest, CentralRoundsAddTheCoordinatorsDiscreteNoiseAndTheLedgerPricesIt) {
  StartFederation(absl::StrCat(R"(rounds:
  min_clients: 3
  interval: 1s
  max_rounds: 2
)",
                               kTraining, R"(privacy:
  mode: central
  noise_multiplier: 0.5
)"));
  AddThreeClients();
  ASSERT_TRUE(WaitFor([&] { return Committed() == 2; }, absl::Seconds(120))) << coordinator_->Log();
  CommandResult report = Coordinator({"privacy", "report", "--json"});
  ASSERT_EQ(report.exit_code, 0) << report.err;
  v1::GetPrivacyLedgerResponse ledger;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(report.out, &ledger).ok()) << report.out;
  ASSERT_EQ(ledger.entries_size(), 2);
  for (const v1::PrivacyLedgerEntry& entry : ledger.entries()) {
    EXPECT_EQ(entry.mode(), "central");
    EXPECT_EQ(entry.mechanism(), "discrete_gaussian");
    // σ = z·C·γ against the rounded sensitivity, a little above γC.
    EXPECT_LT(entry.effective_noise_multiplier(), 0.5);
    EXPECT_GT(entry.effective_noise_multiplier(), 0.45);
  }
  // One noise draw per value, the coordinator's.
  ExpectLedgerRecomputes(ledger, 1);
  ExpectThePlanPredictsTheLedger(ledger, "central", 0.5, 1);
  // The same from the federation's own config, with nothing else given.
  CommandResult plan =
      RunCommand({BinaryPath("fedmoe-coordinator"), "privacy", "epsilon", "--config",
                  (state_ / "coordinator.yaml").string(), "--rounds", "2", "--clients", "3"});
  ASSERT_EQ(plan.exit_code, 0) << plan.err;
  google::protobuf::Struct json;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(plan.out, &json).ok()) << plan.out;
  EXPECT_NEAR(json.fields().at("epsilon").number_value(), ledger.epsilon_spent(),
              1e-9 * ledger.epsilon_spent());
}

// Three clients online, q = 1/2 and a minimum cohort of three: only the draws that take all
// three are kept, so every member of every round was in it with probability 1, not 1/2, and the
// ledger must charge that (it charged q before the conditioned rate was priced).
TEST_F(RoundsTest, TheLedgerChargesTheRateTheSizeConditionedDrawReallyHas) {
  StartFederation(absl::StrCat(R"(rounds:
  min_clients: 3
  sampling_rate: 0.5
  max_rounds: 1
  interval: 1s
  timeouts:
    train: 30s
)",
                               kTraining, kModerateNoise));
  AddThreeClients();
  ASSERT_TRUE(WaitFor([&] { return Committed() == 1; }, absl::Seconds(180))) << coordinator_->Log();
  CommandResult report = Coordinator({"privacy", "report", "--json"});
  ASSERT_EQ(report.exit_code, 0) << report.err;
  v1::GetPrivacyLedgerResponse ledger;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(report.out, &ledger).ok()) << report.out;
  ASSERT_EQ(ledger.entries_size(), 1);
  EXPECT_DOUBLE_EQ(ledger.entries(0).sampling_rate(), 1.0);
}

TEST_F(RoundsTest, AKill9OfAClientMidRoundLeavesTheSurvivorsToCommit) {
  // Four clients: a complete graph of degree 3 and threshold 2, so three survivors suffice.
  StartFederation(absl::StrCat(R"(rounds:
  min_clients: 4
  max_rounds: 1
  timeouts:
    train: 12s
)",
                               kTraining, kModerateNoise));
  AddThreeClients();
  AddClient("insurer", "finance");
  // Killed while it trains for round 1: selected, but it never advertises keys. (The SecAgg+
  // stages' dropouts are in round_faults_test.cc, where clients vanish at an exact stage.)
  const std::filesystem::path status = dir_.path() / "insurer" / "status.json";
  ASSERT_TRUE(WaitFor(
      [&] {
        return std::filesystem::exists(status) &&
               ReadFile(status).find("\"state\":\"training\"") != std::string::npos;
      },
      absl::Seconds(120)))
      << clients_["insurer"]->Log();
  clients_["insurer"]->Signal(SIGKILL);
  ASSERT_TRUE(WaitFor([&] { return Committed() == 1; }, absl::Seconds(120))) << coordinator_->Log();
  const v1::RoundInfo round = Rounds().rounds(0);
  EXPECT_EQ(round.cohort_size(), 4u);
  EXPECT_EQ(round.survivors(), 3u);
  EXPECT_EQ(round.committed_model_version(), 2u);
}

// A coordinator with room for one waiting poll: the other clients are told when to come back
// and wait with their connections closed, cohort members are held all the same, and every
// client hears how each round ended.
TEST_F(RoundsTest, ClientsWhosePollsCannotBeHeldComeBackWhenToldAndCommitEveryRound) {
  StartFederation(absl::StrCat(R"(rounds:
  min_clients: 3
  interval: 1s
  max_rounds: 2
)",
                               kTraining, kModerateNoise),
                  // Deferred clients come back after 1 to 3 s, later than the next round's
                  // start, 1 s after a commit.
                  {{"parked_polls: 256", "parked_polls: 1"},
                   {"deferred_polls_per_second: 100", "deferred_polls_per_second: 1"}});
  AddThreeClients();
  ASSERT_TRUE(WaitFor([&] { return Committed() == 2; }, absl::Seconds(240))) << coordinator_->Log();
  const v1::ListRoundsResponse rounds = Rounds();
  for (const v1::RoundInfo& round : rounds.rounds()) EXPECT_EQ(round.survivors(), 3u);

  std::map<std::string, double> metrics;
  std::string error;
  ASSERT_TRUE(ScrapeMetrics(metrics_address_, metrics, error)) << error;
  EXPECT_GT(metrics["fedmoe_polls_deferred_total"], 0);
  // With no round open, only the one place for a waiting client remains (members' last polls
  // finish as they hear of the commit).
  EXPECT_TRUE(WaitFor([&] { return Status().polls_parked() <= 1; }, absl::Seconds(10)));

  for (const char* client : {"bank", "helpdesk", "lawfirm"}) {
    const std::filesystem::path status = dir_.path() / client / "status.json";
    EXPECT_TRUE(
        WaitFor([&] { return absl::StrContains(ReadFile(status), "\"rounds_committed\":2"); },
                absl::Seconds(30)))
        << client << ": " << ReadFile(status);
  }
}

TEST_F(RoundsTest, ARevokedClientIsLeftOutOfTheNextRound) {
  StartFederation(kRoundAfterRound);
  AddThreeClients();
  AddClient("insurer", "finance");
  auto committed_with = [&](uint32_t cohort, uint64_t after_round) {
    const v1::ListRoundsResponse rounds = Rounds();
    for (const v1::RoundInfo& round : rounds.rounds()) {
      if (round.round_id() > after_round && round.stage() == v1::ROUND_STAGE_COMMITTED &&
          round.cohort_size() == cohort) {
        return true;
      }
    }
    return false;
  };
  ASSERT_TRUE(WaitFor([&] { return committed_with(4, 0); }, absl::Seconds(120)))
      << coordinator_->Log();
  ASSERT_EQ(Coordinator({"clients", "revoke", "insurer", "--reason", "test"}).exit_code, 0);
  const v1::ListRoundsResponse at_revocation = Rounds();
  const uint64_t last_before = at_revocation.rounds(0).round_id();
  ASSERT_TRUE(WaitFor([&] { return committed_with(3, last_before); }, absl::Seconds(120)))
      << coordinator_->Log();
  // No round that started after the revocation selected the revoked client.
  const v1::ListRoundsResponse rounds = Rounds();
  for (const v1::RoundInfo& round : rounds.rounds()) {
    if (round.round_id() > last_before) {
      EXPECT_EQ(round.cohort_size(), 3u);
    }
  }
  // The revoked daemon was refused and stopped.
  EXPECT_TRUE(WaitFor([&] { return !clients_["insurer"]->running(); }, absl::Seconds(20)));
}

// Each site pins its peers' keys on first sight. A peer's renewal (a new key, vouched for by
// the old one) moves the pin through the chain the coordinator relays; a key the site cannot
// reach from its pin, as a coordinator minting a certificate for the peer's id would show, makes
// the site refuse the round and name the peer.
TEST_F(RoundsTest, SitesPinPeerKeysFollowSignedRenewalsAndRefuseAnUnprovenKeyChange) {
  StartFederation(kRoundAfterRound);
  AddThreeClients();
  const std::filesystem::path bank = dir_.path() / "bank";
  const std::filesystem::path helpdesk = dir_.path() / "helpdesk";
  auto pins = [&](const std::filesystem::path& state_dir) {
    std::map<std::string, std::string> pinned;
    std::istringstream lines(ReadFile(state_dir / "peer-keys"));
    for (std::string peer, fingerprint; lines >> peer >> fingerprint;) {
      if (peer != "#") pinned[peer] = fingerprint;
      std::getline(lines, peer);
    }
    return pinned;
  };
  auto key_fingerprint = [](const std::filesystem::path& state_dir) {
    return pki::PublicKeyFingerprint(
        *pki::PrivateKey::ReadFile(state_dir / "client.key")->PublicKeyDer());
  };
  ASSERT_TRUE(WaitFor([&] { return Committed() >= 1; }, absl::Seconds(120))) << coordinator_->Log();
  ASSERT_EQ(pins(bank).count("helpdesk"), 1u) << ReadFile(bank / "peer-keys");
  EXPECT_EQ(pins(bank)["helpdesk"], key_fingerprint(helpdesk));
  EXPECT_EQ(pins(bank).count("lawfirm"), 1u);

  // helpdesk renews with a new key.
  clients_["helpdesk"]->Signal(SIGTERM);
  ASSERT_TRUE(clients_["helpdesk"]->Wait(absl::Seconds(30)).has_value());
  AgeClientCertificate(helpdesk, "helpdesk");
  const std::string old_key = key_fingerprint(helpdesk);
  clients_["helpdesk"] = StartClient(helpdesk);
  ASSERT_TRUE(
      WaitFor([&] { return absl::StrContains(clients_["helpdesk"]->Log(), "certificate_renewed"); },
              absl::Seconds(30)))
      << clients_["helpdesk"]->Log();
  ASSERT_NE(key_fingerprint(helpdesk), old_key);
  const int committed = Committed();
  ASSERT_TRUE(WaitFor([&] { return Committed() > committed + 1; }, absl::Seconds(180)))
      << coordinator_->Log();
  EXPECT_THAT(clients_["bank"]->Log(), HasSubstr("peer_key_changed"));
  EXPECT_EQ(pins(bank)["helpdesk"], key_fingerprint(helpdesk));

  // bank's pin for lawfirm no longer matches what the coordinator relays for lawfirm.
  clients_["bank"]->Signal(SIGTERM);
  ASSERT_TRUE(clients_["bank"]->Wait(absl::Seconds(30)).has_value());
  const std::string lawfirm_key = pins(bank)["lawfirm"];
  ASSERT_TRUE(ReplaceInFile(bank / "peer-keys", lawfirm_key, std::string(64, 'b')));
  clients_["bank"] = StartClient(bank);
  ASSERT_TRUE(WaitFor(
      [&] {
        return absl::StrContains(clients_["bank"]->Log(), "peer 'lawfirm' presents key sha256:");
      },
      absl::Seconds(180)))
      << clients_["bank"]->Log();
  EXPECT_THAT(clients_["bank"]->Log(), HasSubstr("round_left"));
  // The refusal moved no pin.
  EXPECT_EQ(pins(bank)["lawfirm"], std::string(64, 'b'));
}

// A CA rotation from begin to retire while the federation trains: the clients follow by
// themselves, rounds keep committing on the same model history and ledger, and a client that
// slept through the overlap is named by every step, cut off only when forced, and told why.
TEST_F(RoundsTest, ACaRotationKeepsTheFederationItsHistoryAndItsRunningClients) {
  StartFederation(kRoundAfterRound);
  AddThreeClients();
  const std::filesystem::path away = EnrollWithCorpus("away", "finance");
  ASSERT_TRUE(WaitFor([&] { return Committed() >= 1; }, absl::Seconds(120))) << coordinator_->Log();

  auto rotation = [&] {
    CommandResult result = Coordinator({"ca", "status", "--json"});
    EXPECT_EQ(result.exit_code, 0) << result.err;
    google::protobuf::Struct json;
    EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(result.out, &json).ok()) << result.out;
    return json;
  };
  auto not_moved = [&] {
    std::vector<std::string> ids;
    const google::protobuf::Struct status = rotation();
    for (const auto& id : status.fields().at("clients_not_moved").list_value().values()) {
      ids.push_back(id.string_value());
    }
    return ids;
  };
  auto restart = [&] {
    coordinator_.reset();
    StartCoordinator();
  };
  auto commits_after = [&](int committed) {
    return WaitFor([&] { return Committed() > committed; }, absl::Seconds(120));
  };
  const std::string old_ca = rotation().fields().at("issuing_ca").string_value();
  EXPECT_EQ(rotation().fields().at("phase").string_value(), "none");
  EXPECT_THAT(Coordinator({"ca", "retire"}).err, HasSubstr("no CA rotation is in progress"));

  // begin: a new CA is trusted; nobody holds it until the coordinator announces it.
  ASSERT_EQ(Coordinator({"ca", "begin"}).exit_code, 0);
  const std::string new_ca = rotation().fields().at("other_ca").string_value();
  ASSERT_EQ(new_ca.size(), 64u);
  EXPECT_NE(new_ca, old_ca);
  CommandResult early = Coordinator({"ca", "switch"});
  EXPECT_EQ(early.exit_code, 1);
  EXPECT_THAT(early.err, HasSubstr("4 client(s) do not hold the new CA yet: away, bank"));
  restart();
  ASSERT_TRUE(
      WaitFor([&] { return not_moved() == std::vector<std::string>{"away"}; }, absl::Seconds(60)))
      << coordinator_->Log();
  EXPECT_EQ(pki::TrustBundle::ReadFile(dir_.path() / "bank" / "ca.pem", "acme")->Fingerprints(),
            (std::vector<std::string>{old_ca, new_ca}));
  // A client enrolling now pins the old CA and is handed both; revoked, it holds nothing back.
  const std::filesystem::path late = EnrollClient("late");
  EXPECT_EQ(pki::TrustBundle::ReadFile(late / "ca.pem", "acme")->Fingerprints(),
            (std::vector<std::string>{old_ca, new_ca}));
  EXPECT_EQ(not_moved(), (std::vector<std::string>{"away", "late"}));
  ASSERT_EQ(Coordinator({"clients", "revoke", "late"}).exit_code, 0);

  // switch: refused while "away" lacks the new CA; forced, it leaves "away" behind.
  CommandResult refused = Coordinator({"ca", "switch"});
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_THAT(refused.err, HasSubstr("1 client(s) do not hold the new CA yet: away;"));
  ASSERT_EQ(Coordinator({"ca", "switch", "--force"}).exit_code, 0);
  EXPECT_FALSE(std::filesystem::exists(state_ / "ca-next.key"));
  EXPECT_EQ(pki::Certificate::ReadFile(state_ / "ca.pem")->Sha256Fingerprint(), new_ca);
  restart();
  ASSERT_TRUE(
      WaitFor([&] { return not_moved() == std::vector<std::string>{"away"}; }, absl::Seconds(60)))
      << coordinator_->Log();
  // Rounds go on with certificates from the new CA, on the same model history.
  const int before_retire = Committed();
  ASSERT_TRUE(commits_after(before_retire)) << coordinator_->Log();
  for (const char* client : {"bank", "helpdesk", "lawfirm"}) {
    auto certificate = pki::Certificate::ReadFile(dir_.path() / client / "client.pem");
    auto ca = pki::Certificate::ReadFile(state_ / "ca.pem");
    EXPECT_TRUE(pki::VerifyPeer(*certificate, *ca, "acme", pki::Purpose::kClient).ok()) << client;
  }

  // The client that slept through it cannot verify the coordinator any more, and says why.
  auto sleeper = StartClient(away);
  EXPECT_TRUE(WaitFor(
      [&] { return ReadFile(away / "status.json").find("rotated its CA") != std::string::npos; },
      absl::Seconds(30)))
      << sleeper->Log();

  // retire: the old CA is gone from the coordinator and, at their next poll, from the clients.
  CommandResult blocked = Coordinator({"ca", "retire"});
  EXPECT_THAT(blocked.err, HasSubstr("1 client(s) still use a certificate from the old CA: away"));
  ASSERT_EQ(Coordinator({"ca", "retire", "--force"}).exit_code, 0);
  restart();
  EXPECT_EQ(rotation().fields().at("phase").string_value(), "none");
  for (const char* client : {"bank", "helpdesk", "lawfirm"}) {
    EXPECT_TRUE(WaitFor(
        [&] {
          auto trust = pki::TrustBundle::ReadFile(dir_.path() / client / "ca.pem", "acme");
          return trust.ok() && trust->Fingerprints() == std::vector<std::string>{new_ca};
        },
        absl::Seconds(60)))
        << client;
  }
  const int after_retire = Committed();
  ASSERT_TRUE(commits_after(after_retire)) << coordinator_->Log();

  // One history: model versions and ledger entries run on from before the rotation.
  const v1::GetStatusResponse status = Status();
  EXPECT_EQ(static_cast<int>(status.model_version()), Committed() + 1);
  CommandResult ledger = Coordinator({"privacy", "report", "--json"});
  v1::GetPrivacyLedgerResponse report;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(ledger.out, &report).ok()) << ledger.out;
  EXPECT_EQ(report.entries_size(), Committed());
}

TEST_F(RoundsTest, AnExhaustedPrivacyBudgetStopsTheRoundsWithAClearStatus) {
  // One round at z = 0.5 costs about ε 10.8 here; a target of 15 allows one, not two.
  StartFederation(absl::StrCat(R"(rounds:
  min_clients: 3
  interval: 1s
)",
                               kTraining, R"(privacy:
  mode: distributed
  noise_multiplier: 0.5
  target_epsilon: 15
)"));
  AddThreeClients();
  ASSERT_TRUE(WaitFor([&] { return !Status().rounds_paused_reason().empty(); }, absl::Seconds(120)))
      << coordinator_->Log();
  const v1::GetStatusResponse status = Status();
  EXPECT_THAT(status.rounds_paused_reason(), HasSubstr("privacy budget exhausted"));
  EXPECT_LE(status.epsilon_spent(), 15.0);
  EXPECT_EQ(Committed(), 1);
  CommandResult human = Coordinator({"status"});
  EXPECT_THAT(human.out, HasSubstr("rounds paused:   privacy budget exhausted"));
}

}  // namespace
}  // namespace fedmoe::testing
