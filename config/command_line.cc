#include "config/command_line.h"

#include <cmath>
#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace fedmoe::config {

absl::StatusOr<CommandLine> CommandLine::Parse(const std::vector<std::string>& args,
                                               const std::set<std::string>& value_flags,
                                               const std::set<std::string>& switches) {
  CommandLine line;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg.size() < 3 || arg.rfind("--", 0) != 0) {
      line.positional_.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2);
    std::optional<std::string> value;
    if (const size_t equals = name.find('='); equals != std::string::npos) {
      value = name.substr(equals + 1);
      name = name.substr(0, equals);
    }
    if (switches.contains(name)) {
      if (value.has_value()) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " takes no value"));
      }
      line.values_[name].push_back("true");
      continue;
    }
    if (!value_flags.contains(name)) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
    if (!value.has_value()) {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      }
      value = args[++i];
    }
    line.values_[name].push_back(*value);
  }
  return line;
}

std::optional<std::string> CommandLine::Get(const std::string& flag) const {
  auto it = values_.find(flag);
  if (it == values_.end() || it->second.empty()) return std::nullopt;
  return it->second.back();
}

std::string CommandLine::GetOr(const std::string& flag, const std::string& fallback) const {
  return Get(flag).value_or(fallback);
}

absl::StatusOr<std::string> CommandLine::Require(const std::string& flag) const {
  std::optional<std::string> value = Get(flag);
  if (!value.has_value() || value->empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, " is required"));
  }
  return *value;
}

absl::StatusOr<int64_t> CommandLine::IntOr(const std::string& flag, int64_t fallback, int64_t min,
                                           int64_t max) const {
  if (!Has(flag)) return fallback;
  return RequireInt(flag, min, max);
}

absl::StatusOr<int64_t> CommandLine::RequireInt(const std::string& flag, int64_t min,
                                                int64_t max) const {
  absl::StatusOr<std::string> text = Require(flag);
  if (!text.ok()) return text.status();
  int64_t value = 0;
  if (!absl::SimpleAtoi(*text, &value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, " must be a whole number, not '", *text, "'"));
  }
  if (value < min || value > max) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, " must be between ", min, " and ", max, ", not ", value));
  }
  return value;
}

absl::StatusOr<double> CommandLine::RequireDouble(const std::string& flag) const {
  absl::StatusOr<std::string> text = Require(flag);
  if (!text.ok()) return text.status();
  double value = 0;
  if (!absl::SimpleAtod(*text, &value) || !std::isfinite(value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, " must be a number, not '", *text, "'"));
  }
  return value;
}

std::vector<std::string> CommandLine::GetAll(const std::string& flag) const {
  auto it = values_.find(flag);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

int RunSubcommands(const std::string& program, const char* usage, int argc, char** argv,
                   const std::vector<Subcommand>& commands) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::fputs(usage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  for (const Subcommand& command : commands) {
    if (command.name == args[0]) return command.run(rest);
  }
  return ReportFailure(program, absl::InvalidArgumentError(
                                    absl::StrCat("unknown command '", args[0], "' (try --help)")));
}

int CheckConfigFile(const std::string& program, const std::vector<std::string>& args,
                    const std::function<absl::Status(const std::string&)>& load) {
  if (args.size() != 1) {
    return ReportFailure(program, absl::InvalidArgumentError("--check-config takes one FILE"));
  }
  if (absl::Status status = load(args[0]); !status.ok()) {
    std::fprintf(stderr, "%s\n", std::string(status.message()).c_str());
    return 1;
  }
  std::printf("%s: ok\n", args[0].c_str());
  return 0;
}

int ReportFailure(const std::string& program, const absl::Status& status) {
  std::fprintf(stderr, "%s: error: %s\n", program.c_str(), std::string(status.message()).c_str());
  return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

}  // namespace fedmoe::config
