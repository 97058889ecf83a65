// Each rule of a site's privacy floor against a round spec that breaks it, and one that meets
// them all.
#include "client/privacy_policy.h"

#include "gtest/gtest.h"

namespace fedmoe::client {
namespace {

v1::JoinRoundTask Round() {
  v1::JoinRoundTask task;
  v1::UpdateSpec* spec = task.mutable_update_spec();
  spec->mutable_training()->set_record_noise_multiplier(1.0);
  spec->mutable_training()->set_record_clip_norm(1.0);
  v1::PrivacySpec* privacy = spec->mutable_privacy();
  privacy->set_mode(v1::PrivacySpec::MODE_DISTRIBUTED);
  privacy->set_noise_multiplier(0.8);
  privacy->set_clip_norm(1.0);
  v1::SecAggParameters* secagg = task.mutable_secagg();
  for (uint32_t neighbour : {2U, 3U, 4U, 5U}) secagg->add_neighbors(neighbour);
  secagg->set_threshold(3);
  return task;
}

void ExpectRefused(const PrivacyPolicy& policy, const v1::JoinRoundTask& task,
                   const std::string& rule) {
  const absl::Status status = CheckRoundAgainstPolicy(policy, task);
  ASSERT_FALSE(status.ok()) << rule;
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(status.message().find(rule), std::string::npos) << status;
  EXPECT_EQ(status.message().find('\n'), std::string::npos) << "one line";
}

TEST(PrivacyPolicyTest, ARoundThatMeetsEveryRuleIsAccepted) {
  PrivacyPolicy policy;
  policy.min_record_noise_multiplier = 1.0;
  policy.min_client_noise_multiplier = 0.8;
  policy.accepted_modes = {"distributed"};
  policy.min_clip_norm = 0.5;
  policy.max_clip_norm = 2;
  EXPECT_TRUE(CheckRoundAgainstPolicy(policy, Round()).ok());
}

TEST(PrivacyPolicyTest, EachRuleRefusesTheRoundThatBreaksIt) {
  PrivacyPolicy policy;
  policy.min_record_noise_multiplier = 1.5;
  ExpectRefused(policy, Round(), "min_record_noise_multiplier 1.5");
  v1::JoinRoundTask no_dp = Round();
  no_dp.mutable_update_spec()->mutable_training()->set_record_noise_multiplier(0);
  ExpectRefused(policy, no_dp, "runs no DP-SGD");

  policy = PrivacyPolicy();
  policy.accepted_modes = {"central"};
  ExpectRefused(policy, Round(), "mode distributed is not in accepted_modes");

  policy = PrivacyPolicy();
  policy.min_client_noise_multiplier = 1.0;
  ExpectRefused(policy, Round(), "client-level noise multiplier 0.8");
  v1::JoinRoundTask none = Round();
  none.mutable_update_spec()->mutable_privacy()->set_mode(v1::PrivacySpec::MODE_NONE);
  ExpectRefused(policy, none, "client-level noise multiplier 0 ");

  policy = PrivacyPolicy();
  policy.max_clip_norm = 0.5;
  ExpectRefused(policy, Round(), "clip norm 1 is outside [0, 0.5]");
  policy = PrivacyPolicy();
  policy.min_clip_norm = 2;
  ExpectRefused(policy, Round(), "clip norm 1 is outside [2, open]");

  // The default: t must exceed half the neighbourhood. 2 of 4 does not.
  v1::JoinRoundTask weak = Round();
  weak.mutable_secagg()->set_threshold(2);
  ExpectRefused(PrivacyPolicy(), weak, "threshold t = 2 does not exceed 0.5 of the 4");
  v1::JoinRoundTask one = Round();
  one.mutable_secagg()->set_threshold(1);
  ExpectRefused(PrivacyPolicy(), one, "threshold t = 1");
}

}  // namespace
}  // namespace fedmoe::client
