#include "config/command_line.h"

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

std::vector<std::string> CommandLine::GetAll(const std::string& flag) const {
  auto it = values_.find(flag);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

}  // namespace fedmoe::config
