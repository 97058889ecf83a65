// Record-level DP on real sites (#26): fedmoe-coordinator and fedmoe-client processes over
// loopback mTLS running DP-SGD rounds; each site's own ledger against the accountant, charged
// before upload even when the site dies in between; and each rule of a site's privacy floor
// refusing a round, with the reason in `rounds list` and the site's status.
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include <cmath>
#include <csignal>
#include <map>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "fedmoe/v1/admin.pb.h"
#include "privacy/rdp_accountant.h"
#include "tests/integration/coordinator_fixture.h"
#include "tests/integration/process_harness.h"

namespace fedmoe::testing {
namespace {

// Rounds of `clients` with DP-SGD at σ = 1 and C = 1, four local steps of four records each.
// `train` bounds local training and key advertisement.
std::string DpSgdRounds(int clients, int max_rounds, const std::string& train = "30s") {
  return absl::StrCat("rounds:\n  min_clients: ", clients, "\n  max_rounds: ", max_rounds,
                      "\n  interval: 1s\n  timeouts:\n    train: ", train, R"(
    share_keys: 5s
  training:
    steps: 4
    batch_size: 4
    seq_len: 64
    learning_rate: 0.01
    record_noise_multiplier: 1.0
    record_clip_norm: 1.0
privacy:
  mode: distributed
  noise_multiplier: 0.5
)");
}

class RecordPrivacyTest : public CoordinatorFixture {
 protected:
  void AddClient(const std::string& client_id, const std::string& domain,
                 const std::string& policy = "") {
    const std::filesystem::path state_dir = EnrollWithCorpus(client_id, domain);
    if (!policy.empty()) {
      std::string config = ReadFile(state_dir / "client.yaml");
      config = config.substr(0, config.find("privacy_policy:")) + policy;
      WriteFile(state_dir / "client.yaml", config);
    }
    clients_[client_id] = StartClient(state_dir);
  }

  google::protobuf::Struct Report(const std::string& client_id) {
    CommandResult result = RunCommand({BinaryPath("fedmoe-client"), "privacy", "report", "--json",
                                       "--state-dir", (dir_.path() / client_id).string()});
    EXPECT_EQ(result.exit_code, 0) << result.err;
    google::protobuf::Struct json;
    EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(result.out, &json).ok()) << result.out;
    return json;
  }

  std::map<std::string, std::unique_ptr<Daemon>> clients_;
};

const google::protobuf::Struct& FirstDataset(const google::protobuf::Struct& report) {
  return report.fields().at("datasets").list_value().values(0).struct_value();
}
double Number(const google::protobuf::Struct& json, const std::string& key) {
  return json.fields().at(key).number_value();
}

TEST_F(RecordPrivacyTest, EverySiteChargesItsOwnLedgerForEachStepAndItsEpsilonRecomputes) {
  StartFederation(DpSgdRounds(3, 2));
  AddClient("bank", "finance");
  AddClient("helpdesk", "it_support");
  AddClient("lawfirm", "contracts");
  ASSERT_TRUE(WaitFor([&] { return Committed() == 2; }, absl::Seconds(240)))
      << coordinator_->Log() << clients_["bank"]->Log();
  for (const std::string client : {"bank", "helpdesk", "lawfirm"}) {
    const google::protobuf::Struct report = Report(client);
    EXPECT_EQ(report.fields().at("record_unit").string_value(), "paragraph");
    ASSERT_EQ(report.fields().at("datasets").list_value().values_size(), 1) << client;
    const google::protobuf::Struct& dataset = FirstDataset(report);
    EXPECT_EQ(Number(dataset, "rounds"), 2) << client;
    EXPECT_EQ(Number(dataset, "steps"), 8) << client;
    const double records = Number(dataset, "records");
    const double rate = Number(dataset, "sampling_rate");
    EXPECT_DOUBLE_EQ(rate, 4.0 / records) << client;
    const double sigma = Number(dataset, "noise_multiplier");
    EXPECT_LT(sigma, 1.0);
    EXPECT_GT(sigma, 1.0 - 1e-3) << "within the noise grid's 2^-11 of the round's σ";
    EXPECT_DOUBLE_EQ(Number(dataset, "delta"), 0.1 / records);
    // The accountant, from the report's own numbers: 8 steps at (q, σ).
    privacy::RdpAccountant accountant;
    ASSERT_TRUE(accountant.AddSubsampledGaussian(rate, sigma, 8).ok());
    const double expected = accountant.Epsilon(0.1 / records)->epsilon;
    const double epsilon = Number(dataset, "epsilon");
    EXPECT_NEAR(epsilon, expected, 1e-6 * expected) << client;
    EXPECT_TRUE(std::isfinite(epsilon));
    // status shows the same account.
    CommandResult status = RunCommand({BinaryPath("fedmoe-client"), "status", "--json",
                                       "--state-dir", (dir_.path() / client).string()});
    EXPECT_NE(status.out.find("\"record_privacy\":[{"), std::string::npos) << status.out;
  }
}

// Killed after its charge and before it could upload anything: a fourth site is frozen while
// it trains, so the round cannot reach its masked inputs while the victim dies.
TEST_F(RecordPrivacyTest, ASiteKilledBetweenItsChargeAndItsUploadStaysCharged) {
  // The victim may die before it advertises keys; the round then waits out `train` for it.
  StartFederation(DpSgdRounds(4, 1, "12s"));
  AddClient("bank", "finance");
  AddClient("helpdesk", "it_support");
  AddClient("lawfirm", "contracts");
  AddClient("insurer", "finance");
  const std::filesystem::path insurer_status = dir_.path() / "insurer" / "status.json";
  ASSERT_TRUE(WaitFor(
      [&] {
        return std::filesystem::exists(insurer_status) &&
               ReadFile(insurer_status).find("\"state\":\"training\"") != std::string::npos;
      },
      absl::Seconds(120)));
  clients_["insurer"]->Signal(SIGSTOP);
  const std::filesystem::path ledger = dir_.path() / "bank" / "record-privacy.json";
  ASSERT_TRUE(WaitFor([&] { return std::filesystem::exists(ledger); }, absl::Seconds(120)))
      << clients_["bank"]->Log();
  clients_["bank"]->Signal(SIGKILL);
  clients_["insurer"]->Signal(SIGCONT);
  ASSERT_TRUE(WaitFor([&] { return Committed() == 1; }, absl::Seconds(120))) << coordinator_->Log();
  const v1::RoundInfo round = Rounds().rounds(0);
  EXPECT_EQ(round.cohort_size(), 4U);
  EXPECT_EQ(round.survivors(), 3U) << "the dead site's update is not in the sum";
  const google::protobuf::Struct report = Report("bank");
  const google::protobuf::Struct& dataset = FirstDataset(report);
  EXPECT_EQ(Number(dataset, "rounds"), 1);
  EXPECT_EQ(Number(dataset, "steps"), 4);
  EXPECT_GT(Number(dataset, "epsilon"), 0);
}

struct PolicyCase {
  const char* name;
  // privacy_policy block of the strict site.
  const char* policy;
  // What the refusal says.
  const char* reason;
  // The cohort: three sites give each a complete graph with t = k = 2, so the threshold rule
  // needs four (k = 3, t = 2).
  int sites = 3;
};

class PolicyRefusalTest : public RecordPrivacyTest,
                          public ::testing::WithParamInterface<PolicyCase> {};

TEST_P(PolicyRefusalTest, TheSiteRefusesTheRoundSaysWhyAndSendsNothing) {
  StartFederation(DpSgdRounds(GetParam().sites, 1));
  AddClient("helpdesk", "it_support");
  AddClient("lawfirm", "contracts");
  if (GetParam().sites == 4) AddClient("insurer", "finance");
  AddClient("strict", "finance", GetParam().policy);
  ASSERT_TRUE(WaitFor(
      [&] {
        const v1::ListRoundsResponse rounds = Rounds();
        return rounds.rounds_size() > 0 && rounds.rounds(0).left_reasons_size() > 0;
      },
      absl::Seconds(120)))
      << coordinator_->Log() << clients_["strict"]->Log();
  const v1::RoundInfo round = Rounds().rounds(0);
  ASSERT_EQ(round.left_reasons_size(), 1);
  EXPECT_EQ(round.left_reasons(0).rfind("strict: privacy policy: ", 0), 0U)
      << round.left_reasons(0);
  EXPECT_NE(round.left_reasons(0).find(GetParam().reason), std::string::npos)
      << round.left_reasons(0);
  // The site says the same, and trained and charged nothing.
  const std::string status = ReadFile(dir_.path() / "strict" / "status.json");
  EXPECT_NE(status.find(GetParam().reason), std::string::npos) << status;
  EXPECT_NE(status.find("\"local_training\":{\"steps\":0"), std::string::npos) << status;
  EXPECT_EQ(status.find("\"rounds_joined\":1"), std::string::npos) << status;
  ASSERT_TRUE(WaitFor([&] { return Rounds().rounds(0).has_finished_at(); }, absl::Seconds(120)));
  EXPECT_LT(Rounds().rounds(0).survivors(), static_cast<uint32_t>(GetParam().sites));
}

INSTANTIATE_TEST_SUITE_P(
    Rules, PolicyRefusalTest,
    ::testing::Values(
        PolicyCase{"record_noise", "privacy_policy:\n  min_record_noise_multiplier: 2\n",
                   "below this site's min_record_noise_multiplier 2"},
        PolicyCase{"record_budget", "privacy_policy:\n  max_record_epsilon: 0.01\n",
                   "past max_record_epsilon 0.01"},
        PolicyCase{"client_mode", "privacy_policy:\n  accepted_modes: [central]\n",
                   "mode distributed is not in accepted_modes [central]"},
        PolicyCase{"client_noise", "privacy_policy:\n  min_client_noise_multiplier: 5\n",
                   "noise multiplier 0.5 is below min_client_noise_multiplier 5"},
        PolicyCase{"clip_range", "privacy_policy:\n  max_clip_norm: 0.5\n",
                   "clip norm 1 is outside [0, 0.5]"},
        PolicyCase{"secagg_threshold", "privacy_policy:\n  min_secagg_threshold_fraction: 0.999\n",
                   "threshold t = 2 does not exceed 0.999 of the 3 neighbours", 4}),
    [](const auto& test) { return std::string(test.param.name); });

}  // namespace
}  // namespace fedmoe::testing
