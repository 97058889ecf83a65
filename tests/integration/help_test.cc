// Every command and subcommand of both programs answers --help and -h with its own usage, on
// stdout, with exit status 0: the commands are read from each program's own --help, so a new
// command is walked without touching this test.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "config/command_line.h"
#include "tests/integration/process_harness.h"

namespace fedmoe::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// "train", "model eval", "--check-config": the words of each entry of a usage text.
std::set<std::string> Commands(const std::string& usage) {
  std::set<std::string> commands;
  const std::regex header(R"(^  ((?:--)?[a-z][a-z-]*)(?: ([a-z][a-z-]*))?(?: .*)?$)");
  std::istringstream lines(usage);
  for (std::string line; std::getline(lines, line);) {
    std::smatch match;
    if (!std::regex_match(line, match, header)) continue;
    commands.insert(match[2].matched ? match[1].str() + " " + match[2].str() : match[1].str());
  }
  return commands;
}

class HelpTest : public ::testing::TestWithParam<std::string> {};

TEST_P(HelpTest, EveryCommandAnswersHelpWithItsOwnUsage) {
  const std::string program = GetParam();
  const CommandResult top = RunCommand({BinaryPath(program), "--help"});
  ASSERT_EQ(top.exit_code, 0) << top.err;
  const std::set<std::string> commands = Commands(top.out);
  ASSERT_GE(commands.size(), 8U) << top.out;
  for (const std::string& command : commands) {
    std::vector<std::string> words;
    std::istringstream split(command);
    for (std::string word; split >> word;) words.push_back(word);
    for (const char* flag : {"--help", "-h"}) {
      std::vector<std::string> argv = {BinaryPath(program)};
      argv.insert(argv.end(), words.begin(), words.end());
      argv.emplace_back(flag);
      const CommandResult result = RunCommand(argv);
      EXPECT_EQ(result.exit_code, 0)
          << program << " " << command << " " << flag << ": " << result.err;
      EXPECT_THAT(result.out, StartsWith("usage: " + program + " " + command + "\n"))
          << program << " " << command << " " << flag;
      // Its own entry, with its flags, not the whole program's usage.
      EXPECT_THAT(result.out, HasSubstr("\n  " + command)) << program << " " << command;
      EXPECT_LT(result.out.size(), top.out.size()) << program << " " << command;
    }
  }
  // --help after other flags, too, and before a command's required flags are given.
  const CommandResult late = RunCommand({BinaryPath(program), "status", "--json", "--help"});
  EXPECT_EQ(late.exit_code, 0) << late.err;
  EXPECT_THAT(late.out, StartsWith("usage: " + program + " status\n"));
}

INSTANTIATE_TEST_SUITE_P(Programs, HelpTest,
                         ::testing::Values("fedmoe-client", "fedmoe-coordinator"),
                         [](const auto& program) {
                           std::string name = program.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

TEST(CommandUsageTest, TakesTheEntryItsWrappedFlagsAndTheDescriptionItShares) {
  const std::string usage =
      "usage: tool COMMAND\n\n"
      "  init --name N\n"
      "       [--force]\n"
      "      Create it.\n"
      "  ca begin --dir D\n"
      "  ca switch --dir D\n"
      "      Rotate in steps.\n"
      "  token list [--json]\n"
      "  rounds list\n"
      "      Rounds, newest first.\n";
  EXPECT_EQ(config::CommandUsage(usage, {"init"}),
            "  init --name N\n       [--force]\n      Create it.\n");
  EXPECT_EQ(config::CommandUsage(usage, {"ca", "switch"}),
            "  ca switch --dir D\n      Rotate in steps.\n");
  EXPECT_EQ(config::CommandUsage(usage, {"ca"}),
            "  ca begin --dir D\n  ca switch --dir D\n      Rotate in steps.\n");
  // A header without its own description does not take the next command's.
  EXPECT_EQ(config::CommandUsage(usage, {"token", "list"}), "  token list [--json]\n");
  EXPECT_EQ(config::CommandUsage(usage, {"rounds", "list"}),
            "  rounds list\n      Rounds, newest first.\n");
  EXPECT_EQ(config::CommandUsage(usage, {"serve"}), "");
}

}  // namespace
}  // namespace fedmoe::testing
