#include "logging/log.h"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "config/enum_names.h"

namespace fedmoe {
namespace {

std::atomic<int> min_level{static_cast<int>(LogLevel::kInfo)};
std::atomic<int> log_fd{STDERR_FILENO};

constexpr config::EnumName<LogLevel> kLevelNames[] = {{LogLevel::kDebug, "debug"},
                                                      {LogLevel::kInfo, "info"},
                                                      {LogLevel::kWarning, "warning"},
                                                      {LogLevel::kError, "error"}};

std::string_view LevelName(LogLevel level) { return config::NameOf(kLevelNames, level, "info"); }

void AppendKey(std::string_view key, std::string& line) {
  line += ",\"";
  AppendJsonEscaped(key, line);
  line += "\":";
}

}  // namespace

void SetMinLogLevel(LogLevel level) { min_level.store(static_cast<int>(level)); }

absl::StatusOr<LogLevel> ParseLogLevel(std::string_view name) {
  for (LogLevel level : {LogLevel::kDebug, LogLevel::kInfo, LogLevel::kWarning, LogLevel::kError}) {
    if (name == LevelName(level)) return level;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown log level '", std::string(name),
                                                 "': expected debug, info, warning or error"));
}

void SetLogFileDescriptor(int fd) { log_fd.store(fd); }

void AppendJsonEscaped(std::string_view text, std::string& out) {
  static constexpr char kHex[] = "0123456789abcdef";
  for (char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (byte < 0x20) {
          out += "\\u00";
          out.push_back(kHex[byte >> 4]);
          out.push_back(kHex[byte & 0xf]);
        } else {
          out.push_back(c);
        }
    }
  }
}

LogEvent::LogEvent(LogLevel level, std::string_view event)
    : enabled_(static_cast<int>(level) >= min_level.load()) {
  if (!enabled_) return;
  line_ = absl::StrCat("{\"ts\":\"",
                       absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()),
                       "\",\"level\":\"", std::string(LevelName(level)), "\",\"event\":\"");
  AppendJsonEscaped(event, line_);
  line_ += '"';
}

LogEvent::~LogEvent() {
  if (!enabled_) return;
  line_ += "}\n";
  const int fd = log_fd.load();
  size_t written = 0;
  while (written < line_.size()) {
    const ssize_t n = ::write(fd, line_.data() + written, line_.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // Nowhere to report a failure to log.
    written += static_cast<size_t>(n);
  }
}

LogEvent& LogEvent::Field(std::string_view key, std::string_view value) {
  if (!enabled_) return *this;
  AppendKey(key, line_);
  line_ += '"';
  AppendJsonEscaped(value, line_);
  line_ += '"';
  return *this;
}

LogEvent& LogEvent::Field(std::string_view key, int64_t value) {
  if (!enabled_) return *this;
  AppendKey(key, line_);
  absl::StrAppend(&line_, value);
  return *this;
}

LogEvent& LogEvent::Field(std::string_view key, uint64_t value) {
  if (!enabled_) return *this;
  AppendKey(key, line_);
  absl::StrAppend(&line_, value);
  return *this;
}

LogEvent& LogEvent::Field(std::string_view key, double value) {
  if (!enabled_) return *this;
  AppendKey(key, line_);
  // JSON has no NaN or infinity; they are written as strings so the line stays valid.
  if (std::isfinite(value)) {
    absl::StrAppend(&line_, value);
  } else {
    absl::StrAppend(&line_, "\"", value, "\"");
  }
  return *this;
}

LogEvent& LogEvent::Field(std::string_view key, bool value) {
  if (!enabled_) return *this;
  AppendKey(key, line_);
  line_ += value ? "true" : "false";
  return *this;
}

LogEvent& LogEvent::Error(const absl::Status& status) {
  Field("code", absl::StatusCodeToString(status.code()));
  return Field("error", std::string(status.message()));
}

std::string JsonNumber(double value) {
  if (!std::isfinite(value)) return std::isnan(value) ? "\"nan\"" : "\"inf\"";
  char buffer[32];
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  return {buffer, result.ptr};
}

std::string PrintableLine(std::string_view text, size_t max_bytes) {
  std::string line(text.substr(0, max_bytes));
  for (char& c : line) {
    if (c < 0x20 || c > 0x7e) c = '?';
  }
  return line;
}

}  // namespace fedmoe
