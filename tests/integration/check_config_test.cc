// `fedmoe-coordinator --check-config FILE` and `fedmoe-client --check-config FILE`: one case
// per class of error, each named with its file, line and key, and the shipped examples pass.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "tests/integration/process_harness.h"
#include "tests/testing_temp_dir.h"

namespace fedmoe::testing {
namespace {

using ::testing::HasSubstr;

const std::filesystem::path kExamples =
    std::filesystem::path(FEDMOE_SOURCE_DIR) / "deploy/examples";

struct BrokenConfig {
  std::string name;
  // Replaces `from` in the example (from empty: the whole file becomes `to`).
  std::string from;
  std::string to;
  // What the one line about it says; {line} stands for the line of the replaced text.
  std::string expected;
};

class CheckConfigTest : public ::testing::TestWithParam<BrokenConfig> {
 protected:
  CommandResult Check(const std::string& program, const std::filesystem::path& file) {
    return RunCommand({BinaryPath(program), "--check-config", file.string()});
  }
  TempDir dir_;
};

TEST(CheckConfigExamplesTest, TheShippedExamplesPass) {
  for (const auto& [program, file] : {std::pair{"fedmoe-coordinator", "coordinator.yaml"},
                                      {"fedmoe-coordinator", "adapter-federation.yaml"},
                                      {"fedmoe-client", "client.yaml"}}) {
    CommandResult result =
        RunCommand({BinaryPath(program), "--check-config", (kExamples / file).string()});
    EXPECT_EQ(result.exit_code, 0) << result.err;
    EXPECT_THAT(result.out, HasSubstr(": ok"));
  }
}

TEST_P(CheckConfigTest, TheCoordinatorNamesTheProblemWithItsLine) {
  const BrokenConfig& broken = GetParam();
  const std::filesystem::path file = dir_.path() / "coordinator.yaml";
  std::string text = ReadFile(kExamples / "coordinator.yaml");
  std::string expected = broken.expected;
  if (broken.from.empty()) {
    text = broken.to;
  } else {
    const size_t at = text.find(broken.from);
    ASSERT_NE(at, std::string::npos) << broken.from;
    text.replace(at, broken.from.size(), broken.to);
    const auto line =
        std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(at), '\n') + 1;
    if (const size_t mark = expected.find("{line}"); mark != std::string::npos) {
      expected.replace(mark, 6, std::to_string(line));
    }
  }
  WriteFile(file, text);
  CommandResult result = Check("fedmoe-coordinator", file);
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.err, HasSubstr(expected));
  // Exactly one problem, on one line that starts with the file's name.
  EXPECT_EQ(result.err.rfind(file.string(), 0), 0u) << result.err;
  EXPECT_EQ(std::count(result.err.begin(), result.err.end(), '\n'), 1) << result.err;
}

INSTANTIATE_TEST_SUITE_P(
    EachErrorClass, CheckConfigTest,
    ::testing::Values(BrokenConfig{"UnknownKey", "  max_concurrent_streams: 256",
                                   "  max_concurent_streams: 256",
                                   ":{line}: limits.max_concurent_streams: unknown key"},
                      BrokenConfig{"WrongType", "  min_clients: 3", "  min_clients: three",
                                   ": rounds.min_clients: expected an integer, got 'three'"},
                      BrokenConfig{"BadDuration", "  poll_max_wait: 30s", "  poll_max_wait: soon",
                                   ": limits.poll_max_wait: expected a duration such as 30s"},
                      BrokenConfig{"OutOfRange", "  ring_bits: 32", "  ring_bits: 70",
                                   ": privacy.ring_bits: must be between 16 and 62"},
                      BrokenConfig{"NotAChoice", "  mode: distributed", "  mode: secret",
                                   ": privacy.mode: must be distributed, central or none"},
                      BrokenConfig{"MissingRequired", "federation: acme-federation\n", "",
                                   "coordinator.yaml: federation: is required"},
                      BrokenConfig{"NotYaml", "", "federation: [unclosed\n", ":2: not valid YAML"},
                      BrokenConfig{"ListForANumber", "  min_clients: 3", "  min_clients: [1, 2]",
                                   ": rounds.min_clients: expected an integer, got a list"},
                      BrokenConfig{"HugeValue", "  min_clients: 3",
                                   "  min_clients: " + std::string(10 << 20, '9') + "x",
                                   ": rounds.min_clients: expected an integer, got '999999999999"
                                   "9999999999999999999999999999999999999999999999999999'... "
                                   "(10485761 bytes)"},
                      BrokenConfig{"DuplicateKey", "  ring_bits: 32",
                                   "  ring_bits: 32\n  ring_bits: 20",
                                   ": privacy.ring_bits: set twice (first at line"}),
    [](const ::testing::TestParamInfo<BrokenConfig>& broken) { return broken.param.name; });

TEST(CheckConfigClientTest, TheClientNamesTheProblemWithItsLine) {
  TempDir dir;
  const std::filesystem::path file = dir.path() / "client.yaml";
  std::string text = ReadFile(kExamples / "client.yaml");
  const size_t at = text.find("  threads: 0");
  ASSERT_NE(at, std::string::npos);
  text.replace(at, 12, "  threads: -1\n  thread: 2");
  WriteFile(file, text);
  CommandResult result = RunCommand({BinaryPath("fedmoe-client"), "--check-config", file.string()});
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.err, HasSubstr(": training.threads: must be between 0 (all cores) and 1024"));
  EXPECT_THAT(result.err, HasSubstr(": training.thread: unknown key"));

  // Where the daemon's server decodes: a device it does not know is named with the choices.
  text = ReadFile(kExamples / "client.yaml");
  const size_t device = text.find("  device: \"auto\"");
  ASSERT_NE(device, std::string::npos);
  text.replace(device, 16, "  device: \"gpu\"");
  WriteFile(file, text);
  result = RunCommand({BinaryPath("fedmoe-client"), "--check-config", file.string()});
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.err,
              HasSubstr(": serve.device: unknown device 'gpu': expected cpu, cuda or auto"));

  // Int8 activations with a format that is not INT8 are refused before anything loads.
  text = ReadFile(kExamples / "client.yaml");
  for (const auto& [from, to] : {std::pair<std::string, std::string>{
                                     "  format: \"\"\n  # With", "  format: \"bf16\"\n  # With"},
                                 {"  int8_activations: false", "  int8_activations: true"}}) {
    const size_t where = text.find(from);
    ASSERT_NE(where, std::string::npos) << from;
    text.replace(where, from.size(), to);
  }
  WriteFile(file, text);
  result = RunCommand({BinaryPath("fedmoe-client"), "--check-config", file.string()});
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.err, HasSubstr(": serve.int8_activations: needs an INT8 model (serve.format "
                                    "int8), not format 'bf16'"));
}

TEST(CheckConfigFileTest, AMissingFileIsOneClearLine) {
  CommandResult result =
      RunCommand({BinaryPath("fedmoe-coordinator"), "--check-config", "/nonexistent/c.yaml"});
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.err, HasSubstr("/nonexistent/c.yaml"));
}

}  // namespace
}  // namespace fedmoe::testing

namespace fedmoe::testing {
namespace {

// The example with the quickstart's model as its initial one and client-level noise z: a
// warning line when the noise is sure to drown the merged rounds, none when it is not, and the
// config passes either way.
TEST(CheckConfigNoiseTest, NoiseThatDrownsTheModelIsWarnedAboutInOneLine) {
  TempDir dir;
  const std::filesystem::path model = dir.path() / "model";
  ASSERT_EQ(
      RunCommand(
          {BinaryPath("fedmoe-client"), "model", "init", "--config",
           (std::filesystem::path(FEDMOE_SOURCE_DIR) / "deploy/quickstart-model.json").string(),
           "--out", model.string()})
          .exit_code,
      0);
  for (const auto& [z, warned] : {std::pair{"1.0", true}, {"0.01", false}}) {
    std::string text = ReadFile(kExamples / "coordinator.yaml");
    const size_t initial = text.find("  initial: ");
    ASSERT_NE(initial, std::string::npos);
    text.replace(initial, text.find('\n', initial) - initial, "  initial: " + model.string());
    const size_t noise = text.find("  noise_multiplier: ");
    ASSERT_NE(noise, std::string::npos);
    text.replace(noise, text.find('\n', noise) - noise, std::string("  noise_multiplier: ") + z);
    const std::filesystem::path file = dir.path() / "coordinator.yaml";
    WriteFile(file, text);
    CommandResult result =
        RunCommand({BinaryPath("fedmoe-coordinator"), "--check-config", file.string()});
    EXPECT_EQ(result.exit_code, 0) << result.err;
    EXPECT_THAT(result.out, HasSubstr(": ok"));
    if (warned) {
      EXPECT_THAT(result.err, HasSubstr("warning: client-level noise will drown the model: with "
                                        "z = 1, "));
      EXPECT_EQ(std::count(result.err.begin(), result.err.end(), '\n'), 1) << result.err;
    } else {
      EXPECT_EQ(result.err, "");
    }
  }
}

}  // namespace
}  // namespace fedmoe::testing
