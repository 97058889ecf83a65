#include "config/command_line.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

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

namespace {

size_t Indent(absl::string_view line) {
  const size_t first = line.find_first_not_of(' ');
  return first == absl::string_view::npos ? line.size() : first;
}

// "  train --model DIR ..." opens an entry; "        [--lr LR] ..." right after it wraps its
// flags; the deeper lines after those describe it.
bool IsHeader(absl::string_view line) { return Indent(line) == 2 && line.size() > 2; }
bool IsWrappedFlags(absl::string_view line) {
  return Indent(line) > 2 && Indent(line) < line.size() && line[Indent(line)] == '[';
}
bool IsDescription(absl::string_view line) {
  return Indent(line) > 2 && Indent(line) < line.size();
}

std::vector<std::string> HeaderWords(absl::string_view header) {
  std::vector<std::string> words;
  for (absl::string_view word : absl::StrSplit(header.substr(2), ' ', absl::SkipEmpty())) {
    if (word.empty() || !(std::islower(static_cast<unsigned char>(word[0])) || word[0] == '-')) {
      break;
    }
    words.emplace_back(word);
    if (word[0] == '-') break;  // --check-config FILE
  }
  return words;
}

bool StartsWithWords(const std::vector<std::string>& header,
                     const std::vector<std::string>& words) {
  if (words.empty() || header.size() < words.size()) return false;
  return std::equal(words.begin(), words.end(), header.begin());
}

}  // namespace

std::string CommandUsage(const std::string& usage, const std::vector<std::string>& words) {
  std::vector<absl::string_view> lines = absl::StrSplit(usage, '\n');
  std::string out;
  for (size_t i = 0; i < lines.size();) {
    if (!IsHeader(lines[i])) {
      ++i;
      continue;
    }
    // A run of headers, each with its wrapped flags, then the description they share.
    struct Entry {
      size_t begin, end;
      std::vector<std::string> words;
    };
    std::vector<Entry> run;
    while (i < lines.size() && IsHeader(lines[i])) {
      Entry entry{i, i + 1, HeaderWords(lines[i])};
      while (entry.end < lines.size() && IsWrappedFlags(lines[entry.end])) ++entry.end;
      i = entry.end;
      run.push_back(std::move(entry));
    }
    const size_t description_begin = i;
    while (i < lines.size() && IsDescription(lines[i])) ++i;
    // The description belongs to the last headers of the run that name the same command.
    size_t described_from = run.size();
    while (described_from > 0 && !run[described_from - 1].words.empty() &&
           run[described_from - 1].words[0] == run.back().words.front()) {
      --described_from;
    }
    bool matched_described = false;
    for (size_t e = 0; e < run.size(); ++e) {
      if (!StartsWithWords(run[e].words, words)) continue;
      for (size_t line = run[e].begin; line < run[e].end; ++line) {
        absl::StrAppend(&out, lines[line], "\n");
      }
      matched_described |= e >= described_from;
    }
    if (matched_described) {
      for (size_t line = description_begin; line < i; ++line) {
        absl::StrAppend(&out, lines[line], "\n");
      }
    }
  }
  return out;
}

int RunSubcommands(const std::string& program, const char* usage, int argc, char** argv,
                   const std::vector<Subcommand>& commands) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::fputs(usage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  if (std::find_if(args.begin() + 1, args.end(), [](const std::string& arg) {
        return arg == "--help" || arg == "-h";
      }) != args.end()) {
    std::vector<std::string> words = {args[0]};
    if (args.size() > 1 && !args[1].empty() && args[1][0] != '-') words.push_back(args[1]);
    std::string entry = CommandUsage(usage, words);
    if (entry.empty() && words.size() > 1) {
      words.pop_back();
      entry = CommandUsage(usage, words);
    }
    if (entry.empty()) {
      std::fputs(usage, stdout);
    } else {
      std::printf("usage: %s %s\n\n%s", program.c_str(), absl::StrJoin(words, " ").c_str(),
                  entry.c_str());
    }
    return 0;
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
