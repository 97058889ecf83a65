#include "logging/log.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <limits>
#include <string>

namespace fedmoe {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;

// Captures what LogEvent writes, through a pipe.
class LogCapture {
 public:
  LogCapture() {
    EXPECT_EQ(::pipe(fds_), 0);
    SetLogFileDescriptor(fds_[1]);
  }
  ~LogCapture() {
    SetLogFileDescriptor(STDERR_FILENO);
    ::close(fds_[0]);
    ::close(fds_[1]);
  }
  std::string Read() {
    ::close(fds_[1]);
    fds_[1] = -1;
    std::string out;
    char buffer[4096];
    while (true) {
      const ssize_t n = ::read(fds_[0], buffer, sizeof(buffer));
      if (n <= 0) break;
      out.append(buffer, static_cast<size_t>(n));
    }
    return out;
  }

 private:
  int fds_[2] = {-1, -1};
};

TEST(LogTest, WritesOneJsonObjectPerEvent) {
  LogCapture capture;
  LogEvent(LogLevel::kInfo, "client_enrolled")
      .Field("client_id", "bank-1")
      .Field("count", 3)
      .Field("ratio", 0.5)
      .Field("online", true);
  { LogEvent second(LogLevel::kWarning, "second"); }
  const std::string out = capture.Read();
  EXPECT_THAT(out, MatchesRegex(R"(\{"ts":"[0-9T:.-]+Z","level":"info","event":"client_enrolled",)"
                                R"("client_id":"bank-1","count":3,"ratio":0.5,"online":true\})"
                                "\n.*"));
  EXPECT_THAT(out, HasSubstr(R"("level":"warning","event":"second"})"));
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 2);
}

TEST(LogTest, EscapesSoALineStaysOneLine) {
  LogCapture capture;
  LogEvent(LogLevel::kError, "bad")
      .Field("text", "a\"b\\c\nd\x01")
      .Field("nan", std::numeric_limits<double>::quiet_NaN())
      .Error(absl::InvalidArgumentError("no\nsplit"));
  const std::string out = capture.Read();
  EXPECT_THAT(out, HasSubstr(R"("text":"a\"b\\c\nd\u0001")"));
  EXPECT_THAT(out, HasSubstr(R"("nan":"nan")"));
  EXPECT_THAT(out, HasSubstr(R"("code":"INVALID_ARGUMENT","error":"no\nsplit")"));
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1);
}

TEST(LogTest, LevelsFilter) {
  LogCapture capture;
  SetMinLogLevel(LogLevel::kWarning);
  { LogEvent dropped(LogLevel::kInfo, "dropped"); }
  { LogEvent kept(LogLevel::kError, "kept"); }
  SetMinLogLevel(LogLevel::kInfo);
  const std::string out = capture.Read();
  EXPECT_THAT(out, Not(HasSubstr("dropped")));
  EXPECT_THAT(out, HasSubstr("kept"));
  EXPECT_EQ(*ParseLogLevel("debug"), LogLevel::kDebug);
  EXPECT_FALSE(ParseLogLevel("verbose").ok());
}

}  // namespace
}  // namespace fedmoe
