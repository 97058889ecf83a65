// Personal models on real sites (#27): fedmoe-coordinator and fedmoe-client processes over
// loopback mTLS. A site with private experts trains them in every round, keeps them across a
// restart and each new global version, and never lets them shape what it sends or what the
// federation publishes; a Ditto site refreshes its copy after each commit; and the CLI reads
// the personal model by default on an enrolled site.
#include <gtest/gtest.h>

#include <csignal>
#include <map>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "tests/integration/coordinator_fixture.h"
#include "tests/integration/process_harness.h"

namespace fedmoe::testing {
namespace {

constexpr char kRounds[] = R"(rounds:
  min_clients: 3
  max_rounds: 3
  interval: 1s
  timeouts:
    train: 60s
  training:
    steps: 4
    batch_size: 4
    seq_len: 64
    learning_rate: 0.01
)";

class PersonalModelTest : public CoordinatorFixture {
 protected:
  std::filesystem::path AddClient(const std::string& client_id, const std::string& domain,
                                  const std::string& mode) {
    const std::filesystem::path state_dir = EnrollWithCorpus(client_id, domain);
    EXPECT_TRUE(
        ReplaceInFile(state_dir / "client.yaml", "  mode: none", absl::StrCat("  mode: ", mode)));
    EXPECT_TRUE(ReplaceInFile(state_dir / "client.yaml", "  steps: 0", "  steps: 3"));
    clients_[client_id] = StartClient(state_dir);
    return state_dir;
  }

  // personal.json's global_version and rounds_trained, or {0, 0} while there is none.
  std::pair<int64_t, int64_t> Personal(const std::string& client_id) {
    const std::filesystem::path info = dir_.path() / client_id / "personal" / "personal.json";
    if (!std::filesystem::exists(info)) return {0, 0};
    const std::string text = ReadFile(info);
    auto field = [&text](const std::string& key) -> int64_t {
      const size_t at = text.find(absl::StrCat("\"", key, "\": "));
      return at == std::string::npos ? -1 : std::stoll(text.substr(at + key.size() + 4));
    };
    return {field("global_version"), field("rounds_trained")};
  }

  CommandResult Client(const std::vector<std::string>& args) {
    std::vector<std::string> command = {BinaryPath("fedmoe-client")};
    command.insert(command.end(), args.begin(), args.end());
    return RunCommand(command);
  }

  std::map<std::string, std::unique_ptr<Daemon>> clients_;
};

TEST_F(PersonalModelTest, PrivateExpertsTrainEveryRoundStayHomeAndSurviveARestart) {
  StartFederation(kRounds);
  const std::filesystem::path bank = AddClient("bank", "finance", "private_experts");
  AddClient("helpdesk", "it_support", "ditto");
  const std::filesystem::path lawfirm = dir_.path() / "lawfirm";
  {
    const std::filesystem::path state_dir = EnrollWithCorpus("lawfirm", "contracts");
    ASSERT_TRUE(
        ReplaceInFile(state_dir / "client.yaml", "  mode: none", "  mode: private_experts"));
    ASSERT_TRUE(
        ReplaceInFile(state_dir / "client.yaml", "  private_experts: 4", "  private_experts: 2"));
    ASSERT_TRUE(ReplaceInFile(state_dir / "client.yaml", "train_private_experts: after_commit",
                              "train_private_experts: with_round"));
    clients_["lawfirm"] = StartClient(state_dir);
  }
  const absl::StatusOr<model::MoeConfig> initial =
      model::LoadMoeConfig(dir_.path() / "initial" / "config.json");
  ASSERT_TRUE(initial.ok());
  const int64_t experts = initial->num_local_experts;

  // After the first commit the bank's personal model is the new global one plus its experts.
  ASSERT_TRUE(
      WaitFor([&] { return Committed() >= 1 && Personal("bank").first >= 2; }, absl::Seconds(120)))
      << coordinator_->Log() << clients_["bank"]->Log();
  const absl::StatusOr<model::MoeConfig> personal_config =
      model::LoadMoeConfig(bank / "personal" / "config.json");
  ASSERT_TRUE(personal_config.ok());
  EXPECT_EQ(personal_config->num_local_experts, experts + 4);

  ASSERT_TRUE(WaitFor(
      [&] {
        const int64_t version = Status().model_version();
        return Committed() == 3 && Personal("bank").first == static_cast<int64_t>(version) &&
               Personal("helpdesk").first == static_cast<int64_t>(version) &&
               Personal("lawfirm").first == static_cast<int64_t>(version);
      },
      absl::Seconds(180)))
      << coordinator_->Log() << clients_["bank"]->Log() << clients_["helpdesk"]->Log()
      << clients_["lawfirm"]->Log();
  const int64_t version = static_cast<int64_t>(Status().model_version());
  // Every committed round trained the bank's experts after it and the Ditto copy; every round
  // the law firm took part in trained its experts with the round. Each continued from the held
  // ones (a fresh start would count from 1 again).
  EXPECT_EQ(Personal("bank").second, 3);
  EXPECT_EQ(Personal("helpdesk").second, 3);
  EXPECT_EQ(Personal("lawfirm").second, 3);
  EXPECT_EQ(model::LoadMoeConfig(lawfirm / "personal" / "config.json")->num_local_experts,
            experts + 2);

  // The federation's model keeps its shape; the Ditto copy has the global one's.
  const absl::StatusOr<model::MoeConfig> published =
      model::LoadMoeConfig(state_ / "models" / absl::StrCat("v", version) / "config.json");
  ASSERT_TRUE(published.ok());
  EXPECT_EQ(published->num_local_experts, experts);
  EXPECT_EQ(model::LoadMoeConfig(dir_.path() / "helpdesk" / "personal" / "config.json")
                ->num_local_experts,
            experts);
  // Nothing about the private experts in the sites' logs: no tensor, no expert index past E.
  for (const char* site : {"bank", "lawfirm"}) {
    const std::string log = clients_[site]->Log();
    EXPECT_EQ(log.find("block_sparse_moe"), std::string::npos) << site;
    EXPECT_EQ(log.find(absl::StrCat("experts.", experts)), std::string::npos) << site;
  }

  // status names both models; eval and trace read the personal one unless told otherwise.
  CommandResult status = Client({"status", "--json", "--state-dir", bank.string()});
  ASSERT_EQ(status.exit_code, 0) << status.err;
  EXPECT_NE(status.out.find(absl::StrCat("\"global_model_version\":", version)), std::string::npos)
      << status.out;
  EXPECT_NE(status.out.find(absl::StrCat("\"global_version\": ", version)), std::string::npos)
      << status.out;
  status = Client({"status", "--state-dir", bank.string()});
  EXPECT_NE(status.out.find("plus 4 private experts per layer"), std::string::npos) << status.out;
  const std::string heldout =
      (std::filesystem::path(FEDMOE_SOURCE_DIR) / "deploy/corpora/finance/documents.txt").string();
  CommandResult personal_eval =
      Client({"model", "eval", "--state-dir", bank.string(), "--data", heldout, "--seq-len", "32"});
  ASSERT_EQ(personal_eval.exit_code, 0) << personal_eval.err;
  EXPECT_NE(personal_eval.out.find("/personal\""), std::string::npos) << personal_eval.out;
  CommandResult global_eval = Client({"model", "eval", "--state-dir", bank.string(), "--global",
                                      "--data", heldout, "--seq-len", "32"});
  ASSERT_EQ(global_eval.exit_code, 0) << global_eval.err;
  EXPECT_NE(global_eval.out.find(absl::StrCat("/models/v", version, "\"")), std::string::npos)
      << global_eval.out;
  CommandResult trace = Client({"model", "trace", "--state-dir", bank.string(), "--personal",
                                "--text", "interest rate", "--json"});
  EXPECT_EQ(trace.exit_code, 0) << trace.err;
  CommandResult both = Client(
      {"model", "eval", "--state-dir", bank.string(), "--personal", "--global", "--data", heldout});
  EXPECT_NE(both.exit_code, 0);
  EXPECT_NE(both.err.find("exclude each other"), std::string::npos) << both.err;

  // A restart keeps the private experts byte for byte, and the daemon takes them up again.
  clients_["bank"]->Signal(SIGTERM);
  ASSERT_TRUE(clients_["bank"]->Wait(absl::Seconds(30)).has_value());
  const std::string weights = ReadFile(bank / "personal" / "model.safetensors");
  std::filesystem::remove(bank / "status.json");
  clients_["bank"] = StartClient(bank);
  ASSERT_TRUE(WaitFor(
      [&] {
        return std::filesystem::exists(bank / "status.json") &&
               ReadFile(bank / "status.json").find("\"polls_answered\":0,") == std::string::npos;
      },
      absl::Seconds(30)))
      << clients_["bank"]->Log();
  // A further idle poll or two, in which it could refresh what needs no refresh.
  absl::SleepFor(absl::Seconds(3));
  EXPECT_EQ(ReadFile(bank / "personal" / "model.safetensors"), weights);
  EXPECT_EQ(Personal("bank"), std::make_pair(version, int64_t{3}));
  clients_["bank"]->Signal(SIGTERM);
  ASSERT_TRUE(clients_["bank"]->Wait(absl::Seconds(30)).has_value());

  // A reset removes the experts; the site then has no personal model until its next round.
  CommandResult reset = Client({"personal", "reset", "--state-dir", bank.string()});
  ASSERT_EQ(reset.exit_code, 0) << reset.err;
  EXPECT_FALSE(std::filesystem::exists(bank / "personal"));
  CommandResult show = Client({"personal", "show", "--state-dir", bank.string()});
  EXPECT_NE(show.out.find("none yet (configured: private_experts)"), std::string::npos) << show.out;
  CommandResult missing =
      Client({"model", "eval", "--state-dir", bank.string(), "--personal", "--data", heldout});
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_NE(missing.err.find("no personal model yet"), std::string::npos) << missing.err;
}

}  // namespace
}  // namespace fedmoe::testing
