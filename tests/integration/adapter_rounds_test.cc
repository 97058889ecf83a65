// A federation of LoRA adapters over a frozen INT8 base (issue [peft]), with real
// fedmoe-coordinator and fedmoe-client processes over loopback mutual TLS: the round spec names
// the base by content hash, each site trains FFA-LoRA adapters over its own copy, rounds move
// only the lora_B matrices and routers, the published versions are PEFT directories that
// `model eval --adapter` reads, a site holding another base is refused with both hashes, a site
// with none downloads the coordinator's once, and a coordinator restarted over another base
// refuses to run.
#include <gmock/gmock.h>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include <csignal>
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "model/adapted_model.h"
#include "model/frozen_base.h"
#include "model/lora.h"
#include "model/peft.h"
#include "privacy/noise.h"
#include "tests/integration/coordinator_fixture.h"
#include "tests/integration/process_harness.h"

namespace fedmoe::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr char kAdapterRounds[] = R"(rounds:
  min_clients: 4
  max_rounds: 2
  interval: 1s
  timeouts:
    train: 120s
  training:
    steps: 12
    batch_size: 4
    seq_len: 64
    learning_rate: 0.02
privacy:
  mode: distributed
  noise_multiplier: 0.01
)";

class AdapterRoundsTest : public CoordinatorFixture {
 protected:
  CommandResult Client(const std::vector<std::string>& args) {
    std::vector<std::string> command = {BinaryPath("fedmoe-client")};
    command.insert(command.end(), args.begin(), args.end());
    return RunCommand(command, absl::Minutes(5));
  }

  google::protobuf::Struct Json(const CommandResult& result) {
    EXPECT_EQ(result.exit_code, 0) << result.err;
    google::protobuf::Struct json;
    EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(result.out, &json).ok()) << result.out;
    return json;
  }

  // A site with `domain`'s corpus that holds its frozen base at `base`, or (empty) downloads it.
  void AddSite(const std::string& client_id, const std::string& domain,
               const std::filesystem::path& base) {
    const std::filesystem::path state_dir = EnrollWithCorpus(client_id, domain);
    if (!base.empty()) {
      ASSERT_TRUE(ReplaceInFile(state_dir / "client.yaml", "  base: \"\"",
                                absl::StrCat("  base: \"", base.string(), "\"")));
    }
    clients_[client_id] = StartClient(state_dir);
  }

  std::map<std::string, std::unique_ptr<Daemon>> clients_;
};

TEST_F(AdapterRoundsTest, SitesTrainAdaptersOverTheNamedBaseAndRoundsMoveOnlyBAndRouters) {
  // The base, as an operator makes it: a model, quantized to INT8; and a bf16 copy that computes
  // other things and so must not pass for it.
  const std::filesystem::path fp32 = dir_.path() / "fp32";
  const std::filesystem::path base = dir_.path() / "base-int8";
  const std::filesystem::path other = dir_.path() / "base-bf16";
  ASSERT_EQ(Client({"model", "init", "--config", FEDMOE_SOURCE_DIR "/deploy/quickstart-model.json",
                    "--out", fp32.string(), "--seed", "3"})
                .exit_code,
            0);
  ASSERT_EQ(
      Client({"model", "quantize", "--model", fp32.string(), "--int8", "--out", base.string()})
          .exit_code,
      0);
  ASSERT_EQ(
      Client({"model", "quantize", "--model", fp32.string(), "--bf16", "--out", other.string()})
          .exit_code,
      0);
  const std::string base_hash = Json(Client({"model", "hash", "--model", base.string()}))
                                    .fields()
                                    .at("sha256")
                                    .string_value();

  StartFederation(kAdapterRounds,
                  {{absl::StrCat("initial: ", (dir_.path() / "initial").string(), "\n"),
                    absl::StrCat("initial: ", base.string(),
                                 "\n  adapters:\n    enabled: true\n    rank: 8\n"
                                 "    targets: [experts, attention]\n    seed: 77\n")}});
  AddSite("bank", "finance", base);
  AddSite("helpdesk", "it_support", base);
  AddSite("lawfirm", "contracts", "");
  AddSite("insurer", "finance", other);
  ASSERT_TRUE(WaitFor([&] { return Committed() == 2; }, absl::Seconds(400)))
      << coordinator_->Log() << clients_["bank"]->Log();

  // The site with another base left each round before training, saying why with both hashes.
  const v1::ListRoundsResponse rounds = Rounds();
  for (const v1::RoundInfo& round : rounds.rounds()) {
    EXPECT_EQ(round.cohort_size(), 4u);
    EXPECT_EQ(round.survivors(), 3u);
    ASSERT_EQ(round.left_reasons_size(), 1);
    EXPECT_THAT(round.left_reasons(0), StartsWith("insurer: training.base: the base at "));
    EXPECT_THAT(round.left_reasons(0), HasSubstr("held as bf16"));
    EXPECT_THAT(round.left_reasons(0), HasSubstr(absl::StrCat("not the federation's ", base_hash)));
  }
  EXPECT_THAT(ReadFile(dir_.path() / "insurer" / "status.json"), HasSubstr(base_hash));
  // The site without a base downloaded the coordinator's once, file for file.
  const std::filesystem::path downloaded = dir_.path() / "lawfirm" / "bases" / base_hash / "v0";
  for (const char* file : {"config.json", "model.safetensors"}) {
    EXPECT_EQ(ReadFile(downloaded / file), ReadFile(base / file)) << file;
  }
  const std::string lawfirm_log = clients_["lawfirm"]->Log();
  size_t downloads = 0;
  for (size_t at = lawfirm_log.find("adapter_base_downloaded"); at != std::string::npos;
       at = lawfirm_log.find("adapter_base_downloaded", at + 1)) {
    ++downloads;
  }
  EXPECT_EQ(downloads, 1u) << lawfirm_log;

  // Every version is a PEFT directory over that base; no version holds a base's weights.
  absl::StatusOr<model::FrozenBase> frozen = model::FrozenBase::Open(base);
  ASSERT_TRUE(frozen.ok()) << frozen.status();
  std::vector<model::LoraAdapters> versions;
  for (int version = 1; version <= 3; ++version) {
    const std::filesystem::path directory = state_ / "models" / absl::StrCat("v", version);
    EXPECT_FALSE(std::filesystem::exists(directory / "model.safetensors"));
    absl::StatusOr<std::string> trained_over = model::AdapterBaseContentHash(directory);
    ASSERT_TRUE(trained_over.ok()) << trained_over.status();
    EXPECT_EQ(*trained_over, base_hash);
    absl::StatusOr<model::LoraAdapters> adapters = model::LoadAdaptersFor(*frozen, directory);
    ASSERT_TRUE(adapters.ok()) << adapters.status();
    EXPECT_EQ(adapters->config().seed, 77u);
    EXPECT_FALSE(adapters->config().train_a);
    versions.push_back(*std::move(adapters));
  }
  // A never moves; every B starts at zero and the rounds move them; routers move too.
  int64_t moved_b = 0;
  int64_t moved_routers = 0;
  for (const model::AdapterTensor& tensor : versions[0].layout().tensors()) {
    const std::span<const float> first = versions[0].tensor(tensor);
    const std::span<const float> last = versions[2].tensor(tensor);
    const bool moved = !std::equal(first.begin(), first.end(), last.begin(), last.end());
    switch (tensor.role) {
      case model::AdapterRole::kLoraA:
        EXPECT_FALSE(moved) << tensor.name;
        break;
      case model::AdapterRole::kLoraB:
        EXPECT_TRUE(std::all_of(first.begin(), first.end(), [](float v) { return v == 0; }));
        moved_b += moved;
        break;
      case model::AdapterRole::kRouter:
        moved_routers += moved;
        break;
    }
  }
  EXPECT_GT(moved_b, 0);
  EXPECT_EQ(moved_routers, frozen->config().num_hidden_layers);

  // Each round's update was the adapters' size: B values, routers and the expert weights and
  // histogram, padded to a power of two; far below the base's parameter count.
  int64_t trained_values = 0;
  for (const model::AdapterTensor& tensor : versions[0].layout().tensors()) {
    if (tensor.role != model::AdapterRole::kLoraA) trained_values += tensor.size;
  }
  const model::MoeConfig& config = frozen->config();
  int64_t encoded = 1;
  while (encoded < trained_values + 2 * config.num_hidden_layers * config.num_local_experts) {
    encoded *= 2;
  }
  CommandResult report = Coordinator({"privacy", "report", "--json"});
  ASSERT_EQ(report.exit_code, 0) << report.err;
  v1::GetPrivacyLedgerResponse ledger;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(report.out, &ledger).ok());
  ASSERT_EQ(ledger.entries_size(), 2);
  const double noised_values = ledger.entries(0).sampler_total_variation() /
                               (3 * privacy::TabulatedNoise::kDrawTotalVariation);
  EXPECT_NEAR(noised_values, static_cast<double>(encoded), 1e-6 * static_cast<double>(encoded));
  EXPECT_LT(encoded, frozen->layout().total_size() / 4);

  // The federated adapters predict the sites' text better than the base alone.
  const std::string text = FEDMOE_SOURCE_DIR "/deploy/corpora/finance/documents.txt";
  auto loss = [&](int version) {
    return Json(Client({"model", "eval", "--model", base.string(), "--adapter",
                        (state_ / "models" / absl::StrCat("v", version)).string(), "--data", text,
                        "--seq-len", "64"}))
        .fields()
        .at("loss")
        .number_value();
  };
  const double before = loss(1);
  const double after = loss(3);
  EXPECT_LT(after, before - 0.02) << "before " << before << " after " << after;
  EXPECT_THAT(ReadFile(dir_.path() / "bank" / "status.json"), HasSubstr("\"rounds_committed\":2"));

  // A coordinator restarted over another base refuses to run, naming both; over its own base
  // it serves the version it had.
  coordinator_->Signal(SIGTERM);
  ASSERT_TRUE(coordinator_->Wait(absl::Seconds(30)).has_value());
  const std::filesystem::path config_file = state_ / "coordinator.yaml";
  ASSERT_TRUE(ReplaceInFile(config_file, absl::StrCat("initial: ", base.string()),
                            absl::StrCat("initial: ", other.string())));
  CommandResult refused =
      RunCommand({BinaryPath("fedmoe-coordinator"), "serve", "--config", config_file.string()},
                 absl::Minutes(1));
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_THAT(refused.err, HasSubstr("were trained over base " + base_hash)) << refused.err;
  ASSERT_TRUE(ReplaceInFile(config_file, absl::StrCat("initial: ", other.string()),
                            absl::StrCat("initial: ", base.string())));
  StartCoordinator();
  const v1::GetStatusResponse status = Status();
  EXPECT_EQ(status.model_version(), 3u);
  EXPECT_EQ(status.adapter_base_sha256(), base_hash);
  EXPECT_EQ(status.adapter_base_format(), "int8");
  EXPECT_THAT(Coordinator({"status"}).out,
              HasSubstr(absl::StrCat("(adapters over base ", base_hash, ", held as int8)")));
}

}  // namespace
}  // namespace fedmoe::testing
