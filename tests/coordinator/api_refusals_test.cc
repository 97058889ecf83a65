// CoordinatorApi's refusals, without a network: a coordinator core opened on a fresh state
// directory, called with the auth contexts gRPC would build for each kind of peer
// (tests/coordinator/fake_peer.h). The integration tests check the same over real mTLS.
#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "coordinator/config.h"
#include "coordinator/core.h"
#include "coordinator/service/api.h"
#include "model/checkpoint.h"
#include "model/init.h"
#include "pki/certificate_authority.h"
#include "pki/private_key.h"
#include "tests/coordinator/fake_peer.h"
#include "tests/testing_temp_dir.h"
#include "tests/testing_tiny_model.h"

namespace fedmoe::coordinator {
namespace {

using testing::PeerCertificate;

class ApiRefusalsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::filesystem::path model = dir_.path() / "initial-model";
    ASSERT_TRUE(
        model::SaveModel(model::InitializeModel(fedmoe::testing::TinyMoeConfig(), 5), model).ok());
    InitOptions init;
    init.federation = "acme";
    init.state_dir = dir_.path() / "coordinator";
    absl::StatusOr<InitResult> made = InitStateDir(init);
    ASSERT_TRUE(made.ok()) << made.status();
    CoordinatorConfig config = made->config;
    config.rounds.initial_model = model;
    config.enrollment_failures_per_minute = 2;
    absl::StatusOr<std::unique_ptr<CoordinatorCore>> core = CoordinatorCore::Open(config);
    ASSERT_TRUE(core.ok()) << core.status();
    core_ = *std::move(core);
    api_ = std::make_unique<CoordinatorApi>(core_->context());
    admin_.set_pem(
        pki::Certificate::ReadFile(core_->config().state_dir.admin_certificate())->ToPem());
  }

  // A client enrolled through the API, as `fedmoe-client enroll` would.
  PeerCertificate Enroll(const std::string& client_id) {
    auto token = core_->context().authority->CreateToken(client_id, absl::Hours(1));
    EXPECT_TRUE(token.ok()) << token.status();
    const pki::PrivateKey key = *pki::PrivateKey::GenerateP256();
    v1::EnrollRequest request;
    request.set_token(token->token.ToString());
    request.set_csr_der(*pki::MakeCsr(key, client_id));
    v1::EnrollResponse response;
    const grpc::Status status = api_->Enroll("192.0.2.10", request, response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return PeerCertificate(
        pki::Certificate::FromDer(response.certificate().certificate_der())->ToPem());
  }

  // A poll that the coordinator may park; its answer (or refusal) lands in `answers_`.
  void Poll(const PeerCertificate& peer) {
    v1::PollTaskRequest request;
    request.mutable_max_wait()->set_seconds(30);
    const size_t slot = answers_.size();
    answers_.emplace_back();
    api_->PollTask(
        peer, request,
        [this, slot](absl::StatusOr<v1::PollTaskResponse> answer) {
          answers_[slot] = answer.status();
        },
        [] { return false; });
  }

  grpc::Status Status(const PeerCertificate& peer) {
    v1::GetStatusResponse response;
    return api_->GetStatus(peer, v1::GetStatusRequest(), response);
  }

  fedmoe::testing::TempDir dir_;
  // Before the core: its poll hub answers the parked polls as it is destroyed.
  std::vector<std::optional<absl::Status>> answers_;
  std::unique_ptr<CoordinatorCore> core_;
  std::unique_ptr<CoordinatorApi> api_;
  PeerCertificate admin_{""};
  PeerCertificate nobody_{""};
};

TEST_F(ApiRefusalsTest, APeerWithoutACertificateGetsOnlyTheEnrollmentPort) {
  const grpc::Status status = Status(nobody_);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(absl::StrContains(status.error_message(), "mutual TLS")) << status.error_message();
  v1::AdvertiseKeysRequest advertise;
  v1::StageAck ack;
  EXPECT_EQ(api_->AdvertiseKeys(nobody_, advertise, ack).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  Poll(nobody_);
  ASSERT_TRUE(answers_[0].has_value());
  EXPECT_TRUE(absl::IsUnauthenticated(*answers_[0])) << *answers_[0];
}

TEST_F(ApiRefusalsTest, AClientIsNoAdminAndTheAdminIsNoClient) {
  const PeerCertificate site = Enroll("site-1");
  const grpc::Status as_admin = Status(site);
  EXPECT_EQ(as_admin.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(absl::StrContains(as_admin.error_message(), "may not call admin methods"))
      << as_admin.error_message();
  EXPECT_TRUE(Status(admin_).ok());
  Poll(admin_);
  ASSERT_TRUE(answers_[0].has_value());
  EXPECT_TRUE(absl::IsPermissionDenied(*answers_[0])) << *answers_[0];
  EXPECT_TRUE(absl::StrContains(answers_[0]->message(), "is not a client identity"));
}

TEST_F(ApiRefusalsTest, ARevokedClientIsRefusedWithTheReason) {
  const PeerCertificate site = Enroll("site-1");
  v1::RevokeClientRequest revoke;
  revoke.set_client_id("site-1");
  revoke.set_reason("left the consortium");
  v1::RevokeClientResponse revoked;
  ASSERT_TRUE(api_->RevokeClient(admin_, revoke, revoked).ok());
  Poll(site);
  ASSERT_TRUE(answers_[0].has_value());
  EXPECT_TRUE(absl::IsPermissionDenied(*answers_[0])) << *answers_[0];
  EXPECT_TRUE(absl::StrContains(answers_[0]->message(), "client 'site-1' is revoked"));
}

TEST_F(ApiRefusalsTest, AGuessingPeerIsStoppedBeforeItsTokensAreLookedAt) {
  v1::EnrollRequest guess;
  guess.set_token(absl::StrCat(std::string(16, 'a'), ".", std::string(64, 'b')));
  v1::EnrollResponse response;
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(api_->Enroll("198.51.100.7", guess, response).error_code(),
              grpc::StatusCode::UNAUTHENTICATED)
        << i;
  }
  const grpc::Status stopped = api_->Enroll("198.51.100.7", guess, response);
  EXPECT_EQ(stopped.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(absl::StrContains(stopped.error_message(),
                                "too many failed enrollments from "
                                "198.51.100.7"))
      << stopped.error_message();
  // Another address has a budget of its own.
  EXPECT_EQ(api_->Enroll("203.0.113.9", guess, response).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(ApiRefusalsTest, AClientsThirdOpenPollIsRefusedAndTheTwoOthersStayParked) {
  const PeerCertificate site = Enroll("site-1");
  Poll(site);
  Poll(site);
  Poll(site);
  EXPECT_FALSE(answers_[0].has_value());
  EXPECT_FALSE(answers_[1].has_value());
  ASSERT_TRUE(answers_[2].has_value());
  EXPECT_TRUE(absl::IsResourceExhausted(*answers_[2])) << *answers_[2];
  EXPECT_TRUE(absl::StrContains(answers_[2]->message(), "limits.polls_per_client"));
  // Another client has its own share.
  const PeerCertificate other = Enroll("site-2");
  Poll(other);
  EXPECT_FALSE(answers_[3].has_value());
}

}  // namespace
}  // namespace fedmoe::coordinator
