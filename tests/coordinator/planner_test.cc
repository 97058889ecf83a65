#include "coordinator/round/planner.h"

#include <google/protobuf/util/time_util.h>
#include <gtest/gtest.h>

#include "privacy/rdp_accountant.h"

namespace fedmoe::coordinator {
namespace {

using google::protobuf::util::TimeUtil;

// A generator that gives the same draws each run; `name` tells the tests' streams apart.
privacy::SecureRandom Seeded(const std::string& name) {
  std::string seed(32, '\0');
  seed.replace(0, std::min(name.size(), seed.size()), name.substr(0, 32));
  return *privacy::SecureRandom::FromSeed(seed, "planner test");
}

std::vector<std::string> Clients(int count) {
  std::vector<std::string> clients;
  for (int i = 0; i < count; ++i) clients.push_back("site-" + std::to_string(i));
  return clients;
}

TEST(DrawCohortTest, AtRateOneEveryOnlineClientIsInAndNothingIsConditioned) {
  RoundPolicy policy;
  policy.min_clients = 3;
  policy.max_clients = 10;
  privacy::SecureRandom random = Seeded("all");
  absl::StatusOr<std::optional<Cohort>> cohort = DrawCohort(Clients(5), policy, random);
  ASSERT_TRUE(cohort.ok()) << cohort.status();
  ASSERT_TRUE(cohort->has_value());
  EXPECT_EQ((*cohort)->members, Clients(5));
  EXPECT_DOUBLE_EQ((*cohort)->charged_sampling_rate, 1.0);
}

TEST(DrawCohortTest, ADrawOutsideTheRangeIsNoCohort) {
  RoundPolicy policy;
  policy.min_clients = 3;
  policy.max_clients = 4;
  privacy::SecureRandom random = Seeded("too many");
  absl::StatusOr<std::optional<Cohort>> cohort = DrawCohort(Clients(5), policy, random);
  ASSERT_TRUE(cohort.ok()) << cohort.status();
  EXPECT_FALSE(cohort->has_value());
}

TEST(DrawCohortTest, TheChargedRateIsTheConditionedOneAndMembersAreOnline) {
  RoundPolicy policy;
  policy.min_clients = 2;
  policy.max_clients = 40;
  policy.sampling_rate = 0.5;
  const std::vector<std::string> online = Clients(40);
  privacy::SecureRandom random = Seeded("half");
  std::optional<Cohort> kept;
  for (int attempt = 0; attempt < 20 && !kept.has_value(); ++attempt) {
    absl::StatusOr<std::optional<Cohort>> cohort = DrawCohort(online, policy, random);
    ASSERT_TRUE(cohort.ok()) << cohort.status();
    kept = *cohort;
  }
  ASSERT_TRUE(kept.has_value());
  for (const std::string& member : kept->members) {
    EXPECT_NE(std::find(online.begin(), online.end(), member), online.end()) << member;
  }
  EXPECT_DOUBLE_EQ(kept->charged_sampling_rate, *privacy::ConditionedSamplingRate(40, 0.5, 2, 40));
}

TEST(ChooseSecAggShapeTest, TheThresholdIsAlwaysOverHalfTheDegree) {
  RoundPolicy policy;
  for (int64_t size : {2, 3, 5, 10, 50, 200, 1000}) {
    const SecAggShape shape = ChooseSecAggShape(size, policy);
    EXPECT_GE(shape.degree, 1U) << size;
    EXPECT_LE(shape.degree, static_cast<uint32_t>(size - 1)) << size;
    EXPECT_GT(2 * shape.threshold, shape.degree) << size;
    EXPECT_LE(shape.threshold, shape.degree) << size;
  }
}

TEST(SessionIdTest, BindsTheFederationTheRoundAndTheSpec) {
  v1::UpdateSpec spec;
  spec.mutable_layout()->set_encoded_values(1024);
  const std::string base = *SessionId("acme", 7, spec);
  EXPECT_EQ(base.size(), 32U);
  EXPECT_EQ(*SessionId("acme", 7, spec), base);
  EXPECT_NE(*SessionId("globex", 7, spec), base);
  EXPECT_NE(*SessionId("acme", 8, spec), base);
  spec.mutable_layout()->set_encoded_values(2048);
  EXPECT_NE(*SessionId("acme", 7, spec), base);
}

TEST(ScheduleStagesTest, EachDeadlineIsOneTimeoutAfterThePrevious) {
  RoundPolicy policy;
  policy.timeouts.train = absl::Minutes(10);
  policy.timeouts.share_keys = absl::Seconds(30);
  policy.timeouts.masked_input = absl::Minutes(2);
  policy.timeouts.unmask = absl::Seconds(45);
  const absl::Time selected = absl::FromUnixSeconds(1'800'000'000);
  const v1::StageDeadlines deadlines = ScheduleStages(selected, policy);
  auto at = [](const google::protobuf::Timestamp& timestamp) {
    return absl::FromUnixMillis(TimeUtil::TimestampToMilliseconds(timestamp));
  };
  EXPECT_EQ(at(deadlines.advertise_keys()), selected + absl::Minutes(10));
  EXPECT_EQ(at(deadlines.share_keys()), selected + absl::Minutes(10) + absl::Seconds(30));
  EXPECT_EQ(at(deadlines.masked_input()), selected + absl::Minutes(12) + absl::Seconds(30));
  EXPECT_EQ(at(deadlines.unmask()), selected + absl::Minutes(13) + absl::Seconds(15));
}

TEST(RandomSeedTest, SeedsDiffer) {
  EXPECT_EQ(RandomSeed(32)->size(), 32U);
  EXPECT_NE(*RandomSeed(32), *RandomSeed(32));
}

}  // namespace
}  // namespace fedmoe::coordinator
