// `fedmoe-coordinator privacy epsilon|noise`, as scripts call it (DESIGN §8).
#include <gmock/gmock.h>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "privacy/rdp_accountant.h"
#include "tests/integration/process_harness.h"
#include "tests/testing_temp_dir.h"

namespace fedmoe::testing {
namespace {

using ::testing::HasSubstr;

CommandResult Privacy(std::vector<std::string> args) {
  args.insert(args.begin(), {BinaryPath("fedmoe-coordinator"), "privacy"});
  return RunCommand(args);
}

google::protobuf::Struct ParseJson(const std::string& line) {
  google::protobuf::Struct json;
  EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(line, &json).ok()) << line;
  return json;
}

TEST(PrivacyCliTest, EpsilonPrintsOneJsonLineMatchingTheAccountant) {
  CommandResult result = Privacy({"epsilon", "--noise-multiplier", "1.1", "--sampling-rate", "0.05",
                                  "--rounds", "200", "--delta", "1e-6"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(std::count(result.out.begin(), result.out.end(), '\n'), 1);
  const google::protobuf::Struct json = ParseJson(result.out);
  privacy::RdpAccountant accountant;
  ASSERT_TRUE(accountant.AddSubsampledGaussian(0.05, 1.1, 200).ok());
  const privacy::PrivacyLoss loss = *accountant.Epsilon(1e-6);
  EXPECT_DOUBLE_EQ(json.fields().at("epsilon").number_value(), loss.epsilon);
  EXPECT_DOUBLE_EQ(json.fields().at("order").number_value(), loss.order);
}

TEST(PrivacyCliTest, NoiseInvertsEpsilon) {
  CommandResult noise = Privacy({"noise", "--target-epsilon", "3", "--sampling-rate", "0.1",
                                 "--rounds", "50", "--delta", "1e-5"});
  ASSERT_EQ(noise.exit_code, 0) << noise.err;
  const double z = ParseJson(noise.out).fields().at("noise_multiplier").number_value();
  CommandResult epsilon = Privacy({"epsilon", "--noise-multiplier", std::to_string(z),
                                   "--sampling-rate", "0.1", "--rounds", "50", "--delta", "1e-5"});
  ASSERT_EQ(epsilon.exit_code, 0) << epsilon.err;
  EXPECT_NEAR(ParseJson(epsilon.out).fields().at("epsilon").number_value(), 3.0, 1e-3);
}

// `fedmoe-client privacy plan`: a site's record-level DP-SGD plan, checked against the
// accountant: the noise it names meets the target, and 0.1% less noise would not.
TEST(PrivacyCliTest, ClientPlanNamesTheSmallestNoiseThatKeepsTheRecordBudget) {
  CommandResult plan =
      RunCommand({BinaryPath("fedmoe-client"), "privacy", "plan", "--records", "10000", "--batch",
                  "100", "--steps", "1000", "--delta", "1e-5", "--target-epsilon", "4"});
  ASSERT_EQ(plan.exit_code, 0) << plan.err;
  EXPECT_EQ(std::count(plan.out.begin(), plan.out.end(), '\n'), 1);
  const google::protobuf::Struct json = ParseJson(plan.out);
  const double sigma = json.fields().at("noise_multiplier").number_value();
  EXPECT_DOUBLE_EQ(json.fields().at("sampling_rate").number_value(), 0.01);
  privacy::RdpAccountant enough;
  ASSERT_TRUE(enough.AddSubsampledGaussian(0.01, sigma, 1000).ok());
  const privacy::PrivacyLoss loss = *enough.Epsilon(1e-5);
  EXPECT_LE(loss.epsilon, 4.0);
  EXPECT_GT(loss.epsilon, 3.99);
  EXPECT_DOUBLE_EQ(json.fields().at("epsilon").number_value(), loss.epsilon);
  privacy::RdpAccountant less;
  ASSERT_TRUE(less.AddSubsampledGaussian(0.01, sigma * 0.999, 1000).ok());
  EXPECT_GT(less.Epsilon(1e-5)->epsilon, 4.0);

  const std::vector<std::string> good = {"--records",        "10000", "--batch", "100",
                                         "--steps",          "1000",  "--delta", "1e-5",
                                         "--target-epsilon", "4"};
  struct Case {
    std::string flag;
    std::string value;
    std::string message;
  };
  for (const Case& c :
       {Case{"--delta", "0.001", "at most 1/records (1e-04 for 10000 records)"},
        Case{"--delta", "0", "--delta must be above 0"},
        Case{"--batch", "20000", "--batch must be between 1 and 10000"},
        Case{"--steps", "0", "--steps must be between 1"},
        Case{"--target-epsilon", "-1", "--target-epsilon must be a positive number"},
        Case{"--records", "many", "--records"}}) {
    std::vector<std::string> args = {BinaryPath("fedmoe-client"), "privacy", "plan"};
    for (size_t i = 0; i < good.size(); i += 2) {
      args.push_back(good[i]);
      args.push_back(good[i] == c.flag ? c.value : good[i + 1]);
    }
    const CommandResult bad = RunCommand(args);
    EXPECT_EQ(bad.exit_code, 2) << c.flag << " " << c.value;
    EXPECT_THAT(bad.err, HasSubstr(c.message)) << c.flag << " " << c.value;
    EXPECT_EQ(std::count(bad.err.begin(), bad.err.end(), '\n'), 1) << bad.err;
  }
}

TEST(PrivacyCliTest, BadArgumentsGetOneClearLineAndExitStatus2) {
  const std::vector<std::string> good = {"--noise-multiplier", "1",  "--sampling-rate", "0.1",
                                         "--rounds",           "10", "--delta",         "1e-5"};
  struct Case {
    std::string flag;
    std::string value;
    std::string message;
  };
  for (const Case& c : {Case{"--sampling-rate", "0", "sampling rate q must be in (0, 1]"},
                        Case{"--sampling-rate", "1.5", "sampling rate q must be in (0, 1]"},
                        Case{"--delta", "1", "delta must be in (0, 1)"},
                        Case{"--delta", "0", "delta must be in (0, 1)"},
                        Case{"--noise-multiplier", "-0.5", "must not be negative"},
                        Case{"--noise-multiplier", "0", "epsilon is infinite"},
                        Case{"--rounds", "0", "rounds must be at least 1"},
                        Case{"--rounds", "ten", "--rounds must be a whole number"},
                        Case{"--delta", "small", "--delta must be a number"}}) {
    std::vector<std::string> args = {"epsilon"};
    for (size_t i = 0; i < good.size(); i += 2) {
      args.push_back(good[i]);
      args.push_back(good[i] == c.flag ? c.value : good[i + 1]);
    }
    CommandResult result = Privacy(args);
    EXPECT_EQ(result.exit_code, 2) << c.flag << "=" << c.value;
    EXPECT_THAT(result.err, HasSubstr(c.message)) << c.flag << "=" << c.value;
    EXPECT_EQ(std::count(result.err.begin(), result.err.end(), '\n'), 1) << result.err;
    EXPECT_TRUE(result.out.empty());
  }
  CommandResult missing = Privacy({"epsilon", "--sampling-rate", "0.1"});
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_THAT(missing.err, HasSubstr("--delta is required"));
}

double EpsilonOf(const std::vector<std::string>& args) {
  std::vector<std::string> command = {"epsilon"};
  command.insert(command.end(), args.begin(), args.end());
  CommandResult result = Privacy(command);
  EXPECT_EQ(result.exit_code, 0) << result.err;
  return ParseJson(result.out).fields().at("epsilon").number_value();
}

TEST(PrivacyCliTest, AFederationsRoundsAreTheGaussianAtFullSamplingAndDearerBelowIt) {
  // At q = 1 and noise of 10^8 integer units, the discrete Gaussian noise of a federation's
  // rounds is the Gaussian to within its rounding: a sensitivity a hair above γC and integer
  // orders only, which may cost it a few percent of ε, never less than the Gaussian's. Below
  // full sampling the general amplification bound the ledger uses is looser than the
  // Gaussian's exact one.
  const std::vector<std::string> common = {
      "--noise-multiplier", "2",  "--rounds", "20",    "--delta", "1e-5",
      "--clients",          "50", "--values", "300000"};
  auto with = [&](std::vector<std::string> args) {
    args.insert(args.end(), common.begin(), common.end());
    return args;
  };
  const double gaussian = EpsilonOf(
      {"--noise-multiplier", "2", "--sampling-rate", "1", "--rounds", "20", "--delta", "1e-5"});
  for (const char* mode : {"distributed", "central"}) {
    const double federation = EpsilonOf(with({"--mode", mode, "--sampling-rate", "1"}));
    EXPECT_GE(federation, gaussian) << mode;
    EXPECT_LE(federation, 1.03 * gaussian) << mode;
  }
  const double sampled_gaussian = EpsilonOf(
      {"--noise-multiplier", "2", "--sampling-rate", "0.1", "--rounds", "20", "--delta", "1e-5"});
  const double sampled = EpsilonOf(with({"--mode", "distributed", "--sampling-rate", "0.1"}));
  EXPECT_GT(sampled, sampled_gaussian);
  // Fewer clients to share the noise change nothing in central DP; Skellam shares price alike.
  EXPECT_NEAR(
      EpsilonOf(with({"--mode", "distributed", "--sampling-rate", "1", "--mechanism", "skellam"})),
      EpsilonOf(with({"--mode", "distributed", "--sampling-rate", "1"})), 0.01);
}

TEST(PrivacyCliTest, AFederationWhoseEpsilonCannotBeCertifiedPrintsInf) {
  // RDP ε near 40 over 2^25 noise draws: the samplers' charge takes all of δ.
  CommandResult result = Privacy({"epsilon", "--noise-multiplier", "0.8", "--sampling-rate", "1",
                                  "--rounds", "20", "--delta", "1e-5", "--mode", "distributed",
                                  "--clients", "50", "--values", "300000"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  const google::protobuf::Struct json = ParseJson(result.out);
  EXPECT_EQ(json.fields().at("epsilon").string_value(), "inf");
  EXPECT_EQ(json.fields().at("order").string_value(), "nan");
}

TEST(PrivacyCliTest, NoiseInvertsEpsilonForAFederation) {
  const std::vector<std::string> federation = {"--sampling-rate", "0.2",  "--rounds", "100",
                                               "--delta",         "1e-5", "--mode",   "distributed",
                                               "--clients",       "100",  "--values", "1048576"};
  std::vector<std::string> noise_args = {"noise", "--target-epsilon", "4"};
  noise_args.insert(noise_args.end(), federation.begin(), federation.end());
  CommandResult noise = Privacy(noise_args);
  ASSERT_EQ(noise.exit_code, 0) << noise.err;
  const double z = ParseJson(noise.out).fields().at("noise_multiplier").number_value();
  std::vector<std::string> at_z = {"--noise-multiplier", std::to_string(z)};
  at_z.insert(at_z.end(), federation.begin(), federation.end());
  EXPECT_NEAR(EpsilonOf(at_z), 4.0, 2e-3);
}

TEST(PrivacyCliTest, AFederationsBadArgumentsGetOneClearLine) {
  const std::vector<std::string> good = {"epsilon", "--noise-multiplier", "1",  "--sampling-rate",
                                         "0.1",     "--rounds",           "10", "--delta",
                                         "1e-5"};
  struct Case {
    const char* extra;  // flags to add, separated by spaces
    const char* message;
  };
  for (const Case& c : {
           Case{"--clients 3", "add --mode distributed or central"},
           Case{"--mode local --clients 3 --values 8",
                "--mode must be gaussian, distributed or central"},
           Case{"--mode central --clients 3 --values 8 --mechanism skellam",
                "--mechanism must be discrete_gaussian in central mode"},
           Case{"--mode distributed --clients 1 --values 8", "--clients"},
           Case{"--mode distributed --clients 3", "--values is required"},
           Case{"--mode distributed --clients 3 --values 8 --ring-bits 80", "--ring-bits"},
       }) {
    std::vector<std::string> args = good;
    for (absl::string_view flag : absl::StrSplit(c.extra, ' ')) args.emplace_back(flag);
    CommandResult result = Privacy(args);
    EXPECT_EQ(result.exit_code, 2) << c.message;
    EXPECT_THAT(result.err, HasSubstr(c.message));
    EXPECT_EQ(std::count(result.err.begin(), result.err.end(), '\n'), 1) << result.err;
  }
}

}  // namespace
}  // namespace fedmoe::testing

namespace fedmoe::testing {
namespace {

// `fedmoe-client privacy report` on a state directory with no client.yaml, with a ledger it
// cannot read, and with none yet: one clear line for the first two, a plain answer for the last.
TEST(PrivacyCliTest, ClientReportRefusesWhatItCannotReadAndSaysWhenNothingIsSpent) {
  TempDir dir;
  CommandResult missing = RunCommand(
      {BinaryPath("fedmoe-client"), "privacy", "report", "--state-dir", dir.path().string()});
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_THAT(missing.err, HasSubstr("client.yaml"));
  EXPECT_EQ(std::count(missing.err.begin(), missing.err.end(), '\n'), 1) << missing.err;

  WriteFile(dir.path() / "client.yaml",
            absl::StrCat("client_id: bank\nfederation: acme\ncoordinator: 127.0.0.1:1\n"
                         "state_dir: ",
                         dir.path().string(), "\nprivacy_policy:\n  record: line\n"));
  CommandResult empty = RunCommand({BinaryPath("fedmoe-client"), "privacy", "report", "--json",
                                    "--state-dir", dir.path().string()});
  ASSERT_EQ(empty.exit_code, 0) << empty.err;
  EXPECT_EQ(empty.out, "{\"record_unit\":\"line\",\"datasets\":[]}\n");

  WriteFile(dir.path() / "record-privacy.json", "{\"version\": 1, \"datasets\": 7}");
  CommandResult broken = RunCommand(
      {BinaryPath("fedmoe-client"), "privacy", "report", "--state-dir", dir.path().string()});
  EXPECT_NE(broken.exit_code, 0);
  EXPECT_THAT(broken.err, HasSubstr("record-privacy.json is not a record-privacy ledger"));
  EXPECT_EQ(std::count(broken.err.begin(), broken.err.end(), '\n'), 1) << broken.err;
}

}  // namespace
}  // namespace fedmoe::testing
