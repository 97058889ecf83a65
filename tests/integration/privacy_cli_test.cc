// `fedmoe-coordinator privacy epsilon|noise`, as scripts call it (DESIGN §8).
#include <gmock/gmock.h>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include "privacy/rdp_accountant.h"
#include "tests/integration/process_harness.h"

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

}  // namespace
}  // namespace fedmoe::testing
