// Which failed stage calls a client tries again, and how long it keeps trying.
#include "client/round_participant.h"

#include <gtest/gtest.h>

#include <vector>

namespace fedmoe::client {
namespace {

// Answers each attempt with the next of `answers`, the last one forever after.
class ScriptedCall {
 public:
  explicit ScriptedCall(std::vector<grpc::Status> answers) : answers_(std::move(answers)) {}
  grpc::Status operator()(grpc::ClientContext& /*context*/) {
    const size_t index = std::min(attempts_, answers_.size() - 1);
    ++attempts_;
    last_attempt_ = absl::Now();
    return answers_[index];
  }
  size_t attempts() const { return attempts_; }
  absl::Time last_attempt() const { return last_attempt_; }

 private:
  std::vector<grpc::Status> answers_;
  size_t attempts_ = 0;
  absl::Time last_attempt_;
};

// What gRPC 1.51 reports for a stream the coordinator's HTTP/2 layer reset mid-upload, seen in
// a coordinator-restart test.
const grpc::Status kResetStream(grpc::StatusCode::INTERNAL,
                                "Received RST_STREAM with error code 1");

TEST(StageRetryTest, TransportTroubleIsRetriedAndRefusalsAreNot) {
  EXPECT_TRUE(IsRetryable(kResetStream));
  EXPECT_TRUE(IsRetryable({grpc::StatusCode::UNAVAILABLE, "connection refused"}));
  EXPECT_TRUE(IsRetryable({grpc::StatusCode::ABORTED, "send it again from value 0"}));
  EXPECT_TRUE(IsRetryable({grpc::StatusCode::RESOURCE_EXHAUSTED, "busy"}));
  EXPECT_FALSE(IsRetryable({grpc::StatusCode::FAILED_PRECONDITION, "round 1 is not open"}));
  EXPECT_FALSE(IsRetryable({grpc::StatusCode::PERMISSION_DENIED, "revoked"}));
  EXPECT_FALSE(IsRetryable({grpc::StatusCode::INVALID_ARGUMENT, "wrong length"}));
  EXPECT_FALSE(IsRetryable({grpc::StatusCode::DEADLINE_EXCEEDED, "stage closed"}));
}

TEST(StageRetryTest, AResetStreamIsSentAgainUntilItGoesThrough) {
  ScriptedCall call(
      {kResetStream, {grpc::StatusCode::UNAVAILABLE, "reconnecting"}, grpc::Status::OK});
  const grpc::Status status =
      CallWithRetries(absl::Now() + absl::Seconds(30), std::ref(call), absl::Milliseconds(1));
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(call.attempts(), 3U);
}

TEST(StageRetryTest, ARefusalEndsTheTriesAtOnce) {
  ScriptedCall call({{grpc::StatusCode::FAILED_PRECONDITION, "round 1 is not open"}});
  const grpc::Status status =
      CallWithRetries(absl::Now() + absl::Seconds(30), std::ref(call), absl::Milliseconds(1));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(call.attempts(), 1U);
}

TEST(StageRetryTest, TheStageDeadlineBoundsTheTries) {
  ScriptedCall call({kResetStream});
  const absl::Time deadline = absl::Now() + absl::Milliseconds(250);
  const grpc::Status status = CallWithRetries(deadline, std::ref(call), absl::Milliseconds(20));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_EQ(status.error_message(), kResetStream.error_message());
  // Tries at 0, 20, 60 and 140 ms; the next wait, 160 ms, would pass the deadline. A loaded
  // machine that oversleeps fits fewer, never more, and no try starts after the deadline.
  EXPECT_GE(call.attempts(), 2U);
  EXPECT_LE(call.attempts(), 4U);
  EXPECT_LE(call.last_attempt(), deadline);
}

}  // namespace
}  // namespace fedmoe::client
