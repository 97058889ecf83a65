// The site's record-level ledger against the accountant it composes, and its refusal to forget:
// a ledger that cannot be read is an error, never an empty ledger.
#include "client/record_ledger.h"

#include <sys/stat.h>

#include <fstream>

#include "gtest/gtest.h"
#include "privacy/rdp_accountant.h"
#include "storage/read_file.h"
#include "tests/testing_temp_dir.h"

namespace fedmoe::client {
namespace {

model::RecordPrivacySpend Spend(int64_t records, int64_t steps, double rate, double sigma) {
  return {.unit = model::RecordUnit::kParagraph,
          .records = records,
          .steps = steps,
          .sampling_rate = rate,
          .noise_multiplier = sigma,
          .clip_norm = 1.0,
          .sampler_total_variation = 1e-20};
}

TEST(RecordLedgerTest, ChargesComposeAsTheAccountantSaysAndSurviveAReload) {
  testing::TempDir dir;
  const std::filesystem::path path = dir.path() / "record-privacy.json";
  absl::StatusOr<RecordPrivacyLedger> ledger = RecordPrivacyLedger::Load(path);
  ASSERT_TRUE(ledger.ok()) << ledger.status();
  EXPECT_TRUE(ledger->accounts().empty());

  DatasetAccount account =
      ledger->Account("/data/bank", model::RecordUnit::kParagraph, DefaultRecordDelta(1000));
  EXPECT_DOUBLE_EQ(account.delta, 1e-4);
  EXPECT_EQ(*account.Epsilon(), 0.0) << "nothing spent yet";
  absl::StatusOr<DatasetAccount> first = account.With(Spend(1000, 20, 0.01, 1.1), 7);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(ledger->Record(*first).ok());
  absl::StatusOr<DatasetAccount> second =
      ledger->Account("/data/bank", model::RecordUnit::kParagraph, 1e-4)
          .With(Spend(1200, 30, 0.02, 1.1), 8);
  ASSERT_TRUE(second.ok());
  ASSERT_TRUE(ledger->Record(*second).ok());

  struct stat info {};
  ASSERT_EQ(stat(path.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600U);

  absl::StatusOr<RecordPrivacyLedger> reloaded = RecordPrivacyLedger::Load(path);
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  ASSERT_EQ(reloaded->accounts().size(), 1U);
  const DatasetAccount& stored = reloaded->accounts().front();
  EXPECT_EQ(stored.rounds, 2);
  EXPECT_EQ(stored.steps, 50);
  EXPECT_EQ(stored.records, 1200);
  EXPECT_EQ(stored.last_round_id, 8U);
  EXPECT_DOUBLE_EQ(stored.last_sampling_rate, 0.02);

  privacy::RdpAccountant accountant;
  ASSERT_TRUE(accountant.AddSubsampledGaussian(0.01, 1.1, 20).ok());
  ASSERT_TRUE(accountant.AddSubsampledGaussian(0.02, 1.1, 30).ok());
  ASSERT_TRUE(accountant.AddSamplerTotalVariation(2e-20).ok());
  const double expected = accountant.Epsilon(1e-4)->epsilon;
  EXPECT_NEAR(*stored.Epsilon(), expected, 1e-12 * expected);
  EXPECT_GT(expected, 0.5);
  EXPECT_LT(expected, 5);

  // A second dataset, or the same one read with another unit, has an account of its own.
  EXPECT_EQ(reloaded->Account("/data/bank", model::RecordUnit::kFile, 1e-3).steps, 0);
}

TEST(RecordLedgerTest, AnUnreadableLedgerIsAnErrorAndIsLeftAsItWas) {
  testing::TempDir dir;
  const std::filesystem::path path = dir.path() / "record-privacy.json";
  for (const std::string text :
       {"{not json", R"({"version": 99, "datasets": []})",
        R"({"version": 1, "datasets": [{"dataset": "/d", "unit": "paragraph"}]})",
        R"({"version": 1, "datasets": [{"dataset": "/d", "unit": "sentence", "delta": 0.1,
            "rdp": []}]})"}) {
    std::ofstream(path) << text;
    absl::StatusOr<RecordPrivacyLedger> ledger = RecordPrivacyLedger::Load(path);
    ASSERT_FALSE(ledger.ok()) << text;
    EXPECT_EQ(ledger.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_NE(ledger.status().message().find(path.string()), std::string::npos) << ledger.status();
    EXPECT_EQ(*storage::ReadSmallFile(path), text)
        << "the broken ledger is kept for the operator to restore";
  }
}

TEST(RecordLedgerTest, TheReportJsonCarriesEpsilonBudgetAndExhaustion) {
  testing::TempDir dir;
  absl::StatusOr<RecordPrivacyLedger> ledger =
      RecordPrivacyLedger::Load(dir.path() / "record-privacy.json");
  ASSERT_TRUE(ledger.ok());
  DatasetAccount account =
      *ledger->Account("/data/x", model::RecordUnit::kLine, 1e-5).With(Spend(100, 10, 0.1, 2), 1);
  account.exhausted = true;
  ASSERT_TRUE(ledger->Record(account).ok());
  const std::string json = AccountsJson(*ledger, 8);
  EXPECT_NE(json.find("\"unit\":\"line\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"budget\":8"), std::string::npos) << json;
  EXPECT_NE(json.find("\"exhausted\":true"), std::string::npos) << json;
  EXPECT_NE(json.find("\"epsilon\":"), std::string::npos) << json;
  EXPECT_EQ(AccountsJson(*ledger, 0).find("\"budget\":null") != std::string::npos, true);
}

}  // namespace
}  // namespace fedmoe::client
