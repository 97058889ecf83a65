// Structured logs: one JSON object per line on stderr, so that journald, kubectl logs and log
// shippers take each event whole.
//
//   LogEvent(LogLevel::kInfo, "client_enrolled").Field("client_id", id).Field("serial", serial);
//
// The line is written when the event goes out of scope, in one write(), so concurrent events
// never interleave. Keys, tokens and certificate bodies must never be passed as fields: the
// callers log ids, serials and fingerprints instead.
#ifndef FEDMOE_LOGGING_LOG_H_
#define FEDMOE_LOGGING_LOG_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fedmoe {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// Events below this level are dropped. The default is kInfo.
void SetMinLogLevel(LogLevel level);
absl::StatusOr<LogLevel> ParseLogLevel(std::string_view name);

// Where lines go; stderr unless a test redirects it. Not thread-safe against concurrent logging.
void SetLogFileDescriptor(int fd);

class LogEvent {
 public:
  LogEvent(LogLevel level, std::string_view event);
  LogEvent(const LogEvent&) = delete;
  LogEvent& operator=(const LogEvent&) = delete;
  ~LogEvent();

  LogEvent& Field(std::string_view key, std::string_view value);
  LogEvent& Field(std::string_view key, const char* value) {
    return Field(key, std::string_view(value));
  }
  LogEvent& Field(std::string_view key, const std::string& value) {
    return Field(key, std::string_view(value));
  }
  LogEvent& Field(std::string_view key, int64_t value);
  LogEvent& Field(std::string_view key, int value) { return Field(key, int64_t{value}); }
  LogEvent& Field(std::string_view key, uint64_t value);
  LogEvent& Field(std::string_view key, double value);
  LogEvent& Field(std::string_view key, bool value);
  // "error" with the status's code and message.
  LogEvent& Error(const absl::Status& status);

 private:
  bool enabled_;
  std::string line_;
};

// Appends `text` to `out` as the inside of a JSON string.
void AppendJsonEscaped(std::string_view text, std::string& out);

// The shortest text that reads back as the same double, as a JSON value. JSON has no infinity
// or NaN: they are the strings "inf" and "nan", as the logs write them (an ε no finite number
// can be claimed for is infinite).
std::string JsonNumber(double value);

// Text from a peer made safe to store and show: at most max_bytes, every byte outside printable
// ASCII (control characters, terminal escapes, newlines, any UTF-8) replaced by '?'.
std::string PrintableLine(std::string_view text, size_t max_bytes);

}  // namespace fedmoe

#endif  // FEDMOE_LOGGING_LOG_H_
