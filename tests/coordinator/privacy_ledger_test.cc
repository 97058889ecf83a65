// The coordinator's privacy ledger on its own: a round's row as Charge prices it, against the
// planning path (PlannedEpsilon, which composes the same round's RDP by multiplying it); and what
// it refuses to replay.
#include "coordinator/round/privacy_ledger.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "coordinator/round/privacy_plan.h"
#include "coordinator/round/update_spec.h"
#include "gmock/gmock.h"

namespace fedmoe::coordinator {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kClients = 8;
constexpr int64_t kEncodedValues = 1 << 12;

RoundTerms TermsOf(const RoundPolicy& policy, uint64_t round_id) {
  RoundTerms terms;
  terms.round_id = round_id;
  terms.privacy.set_mode(policy.privacy_mode);
  terms.privacy.set_mechanism(policy.mechanism);
  terms.privacy.set_noise_multiplier(policy.noise_multiplier);
  terms.encoding = PlanEncoding(policy, kClients, kEncodedValues, std::string(32, '\0'));
  terms.encoded_values = kEncodedValues;
  terms.sampling_rate = policy.sampling_rate;
  return terms;
}

TEST(PrivacyLedgerTest, ChargedRowsComposeToWhatThePlanSaysForEveryRoundAlike) {
  RoundPolicy policy;
  policy.sampling_rate = 0.5;
  PrivacyLedger ledger(policy.delta);
  for (int64_t round = 1; round <= 3; ++round) {
    const double spent_before = ledger.epsilon_spent();
    absl::StatusOr<LedgerEntry> row =
        ledger.Charge(TermsOf(policy, static_cast<uint64_t>(round)), kClients, absl::Now());
    ASSERT_TRUE(row.ok()) << row.status();
    // Charging changes nothing until the row is recorded.
    EXPECT_EQ(ledger.epsilon_spent(), spent_before);
    EXPECT_GT(row->epsilon_after, spent_before);
    absl::StatusOr<privacy::PrivacyLoss> planned =
        PlannedEpsilon(policy, kClients, kEncodedValues, round);
    ASSERT_TRUE(planned.ok()) << planned.status();
    EXPECT_NEAR(row->epsilon_after, planned->epsilon, 1e-9 * planned->epsilon) << round;
    EXPECT_EQ(row->round_id, round);
    EXPECT_EQ(row->mode, "distributed");
    EXPECT_EQ(row->mechanism, "discrete_gaussian");
    EXPECT_GT(row->best_order, 1);
    EXPECT_GT(row->sampler_total_variation, 0);
    // The survivors' shares add up to a little less than the planned multiplier: the encoder's
    // rounding is not noise the accountant may count.
    EXPECT_LE(row->effective_noise_multiplier, policy.noise_multiplier * (1 + 1e-12));
    ASSERT_TRUE(ledger.Record(*row).ok());
    EXPECT_EQ(ledger.epsilon_spent(), row->epsilon_after);
  }
}

TEST(PrivacyLedgerTest, TheWorstCaseChargesTheFewestSurvivorsNoise) {
  RoundPolicy policy;
  PrivacyLedger ledger(policy.delta);
  const RoundTerms terms = TermsOf(policy, 1);
  absl::StatusOr<LedgerEntry> all_survive = ledger.Charge(terms, kClients, absl::Now());
  ASSERT_TRUE(all_survive.ok());
  const double worst = ledger.WorstCaseEpsilonAfter(terms, 3, kClients);
  // Three survivors' noise shares are less noise than eight: a larger ε.
  EXPECT_GT(worst, all_survive->epsilon_after);
  EXPECT_EQ(ledger.WorstCaseEpsilonAfter(terms, kClients, kClients), all_survive->epsilon_after);
}

TEST(PrivacyLedgerTest, WithoutNoiseEpsilonIsInfiniteAndHasNoBestOrder) {
  RoundPolicy policy;
  policy.privacy_mode = v1::PrivacySpec::MODE_NONE;
  PrivacyLedger ledger(policy.delta);
  absl::StatusOr<LedgerEntry> row = ledger.Charge(TermsOf(policy, 1), kClients, absl::Now());
  ASSERT_TRUE(row.ok()) << row.status();
  EXPECT_EQ(row->epsilon_after, std::numeric_limits<double>::infinity());
  EXPECT_EQ(row->best_order, 0);
  EXPECT_EQ(row->sampler_total_variation, 0);
  EXPECT_EQ(row->mode, "none");
}

TEST(PrivacyLedgerTest, ARowPricedAtOtherOrdersIsDataLossAndChangesNothing) {
  RoundPolicy policy;
  PrivacyLedger ledger(policy.delta);
  absl::StatusOr<LedgerEntry> row = ledger.Charge(TermsOf(policy, 7), kClients, absl::Now());
  ASSERT_TRUE(row.ok());
  LedgerEntry truncated = *row;
  truncated.rdp.pop_back();
  const absl::Status refused = ledger.Record(truncated);
  EXPECT_EQ(refused.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(refused.message()), HasSubstr("round 7"));
  LedgerEntry negative = *row;
  negative.sampler_total_variation = -1;
  EXPECT_EQ(ledger.Record(negative).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ledger.epsilon_spent(), 0);
  EXPECT_EQ(ledger.sampler_total_variation(), 0);
}

}  // namespace
}  // namespace fedmoe::coordinator
