// Subcommand flags for the two CLIs: `--name value`, `--name=value`, repeated flags, boolean
// switches, and positional arguments, checked against what the subcommand accepts so that a
// mistyped flag is an error rather than silently ignored.
#ifndef FEDMOE_CONFIG_COMMAND_LINE_H_
#define FEDMOE_CONFIG_COMMAND_LINE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace fedmoe::config {

class CommandLine {
 public:
  // `value_flags` take a value; `switches` do not. Both are named without dashes.
  static absl::StatusOr<CommandLine> Parse(const std::vector<std::string>& args,
                                           const std::set<std::string>& value_flags,
                                           const std::set<std::string>& switches);

  bool Has(const std::string& flag) const { return values_.contains(flag); }
  // The last value given for the flag, or nullopt.
  std::optional<std::string> Get(const std::string& flag) const;
  std::string GetOr(const std::string& flag, const std::string& fallback) const;
  // InvalidArgument naming the flag when it is absent.
  absl::StatusOr<std::string> Require(const std::string& flag) const;
  std::vector<std::string> GetAll(const std::string& flag) const;
  // A whole-number flag in [min, max], or `fallback` when absent. InvalidArgument naming the
  // flag for text that is not a number or a number out of range.
  absl::StatusOr<int64_t> IntOr(const std::string& flag, int64_t fallback, int64_t min,
                                int64_t max) const;
  absl::StatusOr<int64_t> RequireInt(const std::string& flag, int64_t min, int64_t max) const;
  // A finite floating-point flag.
  absl::StatusOr<double> RequireDouble(const std::string& flag) const;
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  std::map<std::string, std::vector<std::string>> values_;
  std::vector<std::string> positional_;
};

// A CLI's commands: `program COMMAND [FLAGS]`, with --help, and exit status 2 for bad usage.
// `--help` or `-h` anywhere after a command prints that command's entry of `usage` and exits 0.
struct Subcommand {
  std::string name;
  std::function<int(const std::vector<std::string>& args)> run;
};

int RunSubcommands(const std::string& program, const char* usage, int argc, char** argv,
                   const std::vector<Subcommand>& commands);

// The entries of `usage` (a program's whole usage text) for the command `words` ("ca begin",
// "train"): each header line "  WORDS ..." whose words start with `words`, its wrapped flag
// lines, and the description that follows a run of headers of the same command. Empty when no
// header matches. One usage text serves the program's --help and every command's.
std::string CommandUsage(const std::string& usage, const std::vector<std::string>& words);

// Prints "PROGRAM: error: MESSAGE" on one line and returns the exit status: 2 for invalid
// arguments (bad usage), 1 for everything else.
// `PROGRAM --check-config FILE`: `load` reads and validates FILE. Prints "FILE: ok" and
// returns 0, or prints each problem on its own line (FILE:LINE: KEY: what is wrong) and
// returns 1.
int CheckConfigFile(const std::string& program, const std::vector<std::string>& args,
                    const std::function<absl::Status(const std::string&)>& load);

int ReportFailure(const std::string& program, const absl::Status& status);

}  // namespace fedmoe::config

#endif  // FEDMOE_CONFIG_COMMAND_LINE_H_
