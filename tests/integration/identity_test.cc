// Enrollment, mutual TLS, revocation and restarts, with real fedmoe-coordinator and
// fedmoe-client processes over loopback.
#include <gmock/gmock.h>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/stat.h>

#include <algorithm>
#include <csignal>
#include <fstream>
#include <future>

#include "absl/strings/str_cat.h"
#include "client/tls_probe.h"
#include "coordinator/state/store.h"
#include "fedmoe/v1/admin.grpc.pb.h"
#include "fedmoe/v1/federation.grpc.pb.h"
#include "pki/certificate_authority.h"
#include "pki/private_key.h"
#include "tests/integration/coordinator_fixture.h"
#include "tests/integration/process_harness.h"
#include "tests/testing_temp_dir.h"

namespace fedmoe::testing {
namespace {

using ::testing::HasSubstr;

mode_t Mode(const std::filesystem::path& path) {
  struct stat info {};
  ::stat(path.c_str(), &info);
  return info.st_mode & 0777;
}

// A coordinator started for every test.
class FederationTest : public CoordinatorFixture {
 protected:
  void SetUp() override {
    InitCoordinator();
    StartCoordinator();
  }

  v1::ListClientsResponse ListClients() {
    CommandResult result = Coordinator({"clients", "list", "--all", "--json"});
    v1::ListClientsResponse clients;
    EXPECT_EQ(result.exit_code, 0) << result.err;
    EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(result.out, &clients).ok());
    return clients;
  }

  bool IsOnline(const std::string& client_id) {
    const v1::ListClientsResponse clients = ListClients();
    for (const auto& client : clients.clients()) {
      if (client.client_id() == client_id) return client.online();
    }
    return false;
  }

  // The client's mTLS channel, built the way the daemon builds it.
  std::shared_ptr<grpc::Channel> ClientChannel(const std::filesystem::path& state_dir) {
    grpc::SslCredentialsOptions tls;
    tls.pem_root_certs = ReadFile(state_dir / "ca.pem");
    tls.pem_private_key = ReadFile(state_dir / "client.key");
    tls.pem_cert_chain = ReadFile(state_dir / "client.pem");
    return grpc::CreateChannel(mtls_address_, grpc::SslCredentials(tls));
  }

  void ExpectCoordinatorUp() {
    EXPECT_TRUE(coordinator_->running()) << coordinator_->Log();
    EXPECT_EQ(Coordinator({"status"}).exit_code, 0);
  }
};

TEST_F(FederationTest, SighupReloadsTheLogLevelAndABadConfigChangesNothing) {
  const std::filesystem::path config = state_ / "coordinator.yaml";
  const std::string good = ReadFile(config);
  ASSERT_TRUE(ReplaceInFile(config, "log_level: info", "log_level: debug"));
  coordinator_->Signal(SIGHUP);
  ASSERT_TRUE(
      WaitFor([&] { return coordinator_->Log().find("\"config_reloaded\"") != std::string::npos; },
              absl::Seconds(10)));
  EXPECT_THAT(coordinator_->Log(), HasSubstr("\"log_level\":\"debug\""));
  // A broken file is reported in one line and the coordinator keeps serving.
  WriteFile(config, "federation: [unclosed\n");
  coordinator_->Signal(SIGHUP);
  ASSERT_TRUE(
      WaitFor([&] { return coordinator_->Log().find("config_reload_failed") != std::string::npos; },
              absl::Seconds(10)));
  WriteFile(config, good);
  ExpectCoordinatorUp();
}

TEST_F(FederationTest, RenewedServerAndAdminCertificatesServeAfterARestart) {
  const auto state_dir = dir_.path() / "bank-1";
  ASSERT_EQ(Enroll(CreateToken("bank-1"), state_dir).exit_code, 0);
  auto daemon = StartClient(state_dir);
  ASSERT_TRUE(WaitFor([&] { return IsOnline("bank-1"); }, absl::Seconds(15))) << daemon->Log();
  const std::string old_server = ReadFile(state_ / "server.pem");
  const std::string old_admin = ReadFile(state_ / "admin.pem");

  CommandResult renewed = Coordinator({"certificates", "renew"});
  ASSERT_EQ(renewed.exit_code, 0) << renewed.err;
  EXPECT_THAT(renewed.out, HasSubstr("for localhost, 127.0.0.1, ::1"));
  EXPECT_NE(ReadFile(state_ / "server.pem"), old_server);
  EXPECT_NE(ReadFile(state_ / "admin.pem"), old_admin);
  EXPECT_EQ(Mode(state_ / "server.key"), 0600);
  EXPECT_EQ(Mode(state_ / "admin.key"), 0600);
  // The new admin certificate works against the running coordinator at once.
  EXPECT_EQ(Coordinator({"status"}).exit_code, 0);

  // After a restart the coordinator serves the new server certificate, and the client, which
  // trusts the CA rather than one certificate, reconnects by itself.
  coordinator_->Signal(SIGTERM);
  ASSERT_EQ(coordinator_->Wait(absl::Seconds(20)), 0);
  StartCoordinator();
  absl::StatusOr<std::vector<pki::Certificate>> chain =
      client::FetchServerChain(mtls_address_, absl::Seconds(5));
  ASSERT_TRUE(chain.ok()) << chain.status();
  absl::StatusOr<pki::Certificate> served =
      pki::Certificate::FromPem(ReadFile(state_ / "server.pem"));
  ASSERT_TRUE(served.ok());
  EXPECT_EQ(chain->front().SerialHex(), served->SerialHex());
  EXPECT_TRUE(WaitFor([&] { return IsOnline("bank-1"); }, absl::Seconds(30))) << daemon->Log();
}

// A state directory that lost its store refuses to serve, with one line that names the file and
// the way back, instead of starting an empty federation that has forgotten every client,
// revocation and ledger entry (#31 item 3).
TEST_F(FederationTest, AMissingOrEmptyStoreRefusesToServeAndNamesRestore) {
  coordinator_->Signal(SIGTERM);
  ASSERT_TRUE(coordinator_->Wait(absl::Seconds(20)).has_value());
  const std::filesystem::path store = state_ / "state.db";
  for (const bool empty : {false, true}) {
    for (const char* suffix : {"", "-wal", "-shm"}) {
      std::filesystem::remove(store.string() + suffix);
    }
    if (empty) std::ofstream{store};
    const CommandResult serve = RunCommand({BinaryPath("fedmoe-coordinator"), "serve", "--config",
                                            (state_ / "coordinator.yaml").string()});
    EXPECT_NE(serve.exit_code, 0);
    EXPECT_THAT(serve.err, HasSubstr(store.string())) << serve.err;
    EXPECT_THAT(serve.err, HasSubstr(empty ? "is empty" : "is missing"));
    EXPECT_THAT(serve.err, HasSubstr("fedmoe-coordinator restore"));
    EXPECT_EQ(std::count(serve.err.begin(), serve.err.end(), '\n'), 1) << serve.err;
    EXPECT_EQ(std::filesystem::exists(store), empty) << "refusing must not create a store";
  }
}

TEST_F(FederationTest, EnrolledClientRunsAndIsListedOnline) {
  const Token token = CreateToken("bank-1");
  const auto state_dir = dir_.path() / "bank-1";
  CommandResult enrolled = Enroll(token, state_dir);
  ASSERT_EQ(enrolled.exit_code, 0) << enrolled.err;
  EXPECT_THAT(enrolled.out, HasSubstr("enrolled as 'bank-1' in federation 'acme'"));

  EXPECT_EQ(Mode(state_dir), 0700);
  EXPECT_EQ(Mode(state_dir / "client.key"), 0600);
  EXPECT_EQ(Mode(state_ / "ca.key"), 0600);
  EXPECT_EQ(Mode(state_ / "admin.key"), 0600);
  EXPECT_EQ(Mode(state_ / "server.key"), 0600);

  auto daemon = StartClient(state_dir);
  EXPECT_TRUE(WaitFor([&] { return IsOnline("bank-1"); }, absl::Seconds(15))) << daemon->Log();
  const auto clients = ListClients();
  ASSERT_EQ(clients.clients_size(), 1);
  EXPECT_EQ(clients.clients(0).spiffe_id(), "spiffe://acme/client/bank-1");
  EXPECT_EQ(clients.clients(0).state(), v1::ClientInfo::STATE_ACTIVE);

  CommandResult status = RunCommand(
      {BinaryPath("fedmoe-client"), "status", "--state-dir", state_dir.string(), "--json"});
  EXPECT_EQ(status.exit_code, 0);
  EXPECT_THAT(status.out, HasSubstr("\"client_id\":\"bank-1\""));

  // SIGTERM: a clean stop, and the daemon says so.
  daemon->Signal(SIGTERM);
  EXPECT_EQ(daemon->Wait(absl::Seconds(10)), 0) << daemon->Log();
  EXPECT_THAT(daemon->Log(), HasSubstr("daemon_stopped"));

  // The store holds the token's hash, never the token.
  std::string store_bytes;
  for (const auto& entry : std::filesystem::directory_iterator(state_)) {
    if (entry.path().filename().string().rfind("state.db", 0) == 0) {
      store_bytes += ReadFile(entry.path());
    }
  }
  ASSERT_FALSE(store_bytes.empty());
  const std::string secret = token.token.substr(token.token.find('.') + 1);
  EXPECT_EQ(store_bytes.find(secret), std::string::npos);
  // Nor do the logs.
  EXPECT_EQ(coordinator_->Log().find(secret), std::string::npos);
  EXPECT_EQ(coordinator_->Log().find("PRIVATE KEY"), std::string::npos);
}

TEST_F(FederationTest, ReusedAndExpiredTokensAreRefused) {
  const Token token = CreateToken("bank-1");
  ASSERT_EQ(Enroll(token, dir_.path() / "first").exit_code, 0);
  CommandResult reused = Enroll(token, dir_.path() / "second");
  EXPECT_EQ(reused.exit_code, 1);
  EXPECT_THAT(reused.err, HasSubstr("enrollment token was already used"));
  EXPECT_FALSE(std::filesystem::exists(dir_.path() / "second" / "client.key"));

  const Token short_lived = CreateToken("bank-2", "1s");
  absl::SleepFor(absl::Milliseconds(1500));
  CommandResult expired = Enroll(short_lived, dir_.path() / "third");
  EXPECT_EQ(expired.exit_code, 1);
  EXPECT_THAT(expired.err, HasSubstr("enrollment token expired"));
  ExpectCoordinatorUp();
}

TEST_F(FederationTest, AWrongCaFingerprintIsRefusedByTheClient) {
  Token token = CreateToken("bank-1");
  token.fingerprint = std::string(64, 'a');
  CommandResult result = Enroll(token, dir_.path() / "bank-1");
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.err, HasSubstr("does not include the CA with the pinned fingerprint"));
  EXPECT_FALSE(std::filesystem::exists(dir_.path() / "bank-1" / "client.key"));
  // The token was never sent, so it still works.
  token.fingerprint = CreateToken("bank-2").fingerprint;
  EXPECT_EQ(Enroll(token, dir_.path() / "bank-1").exit_code, 0);
}

TEST_F(FederationTest, ACertificateFromAnotherCaIsRefused) {
  const auto state_dir = EnrollClient("bank-1");
  // Same federation name, same client id, but a different CA: an impostor.
  auto impostor_ca = pki::CertificateAuthority::Create("acme", absl::Hours(24));
  auto key = pki::PrivateKey::GenerateP256();
  auto certificate =
      impostor_ca->IssueFromCsr(*pki::MakeCsr(*key, "bank-1"),
                                {"acme", pki::IdentityKind::kClient, "bank-1"}, absl::Hours(1));
  ASSERT_TRUE(certificate.ok());
  ASSERT_TRUE(key->WriteFile(state_dir / "client.key").ok());
  ASSERT_TRUE(certificate->WriteFile(state_dir / "client.pem").ok());

  auto daemon = StartClient(state_dir);
  EXPECT_TRUE(WaitFor(
      [&] {
        return daemon->Log().find("did not accept this client's certificate") != std::string::npos;
      },
      absl::Seconds(15)))
      << daemon->Log();
  EXPECT_THAT(daemon->Log(), HasSubstr("not valid under the federation CA it enrolled with: "
                                       "certificate rejected: unable to get local issuer"));
  ExpectCoordinatorUp();
}

TEST_F(FederationTest, NoClientCertificateIsRefusedOnTheMtlsPort) {
  absl::Status probe = client::ProbeMutualTls(mtls_address_, nullptr, nullptr, absl::Seconds(5));
  EXPECT_EQ(probe.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(probe.message()),
              HasSubstr("did not accept a connection without a client certificate"));

  // Through gRPC, with server-only TLS, the call never reaches a service.
  grpc::SslCredentialsOptions tls;
  tls.pem_root_certs = ReadFile(state_ / "ca.pem");
  auto stub =
      v1::Federation::NewStub(grpc::CreateChannel(mtls_address_, grpc::SslCredentials(tls)));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::PollTaskResponse response;
  EXPECT_EQ(stub->PollTask(&context, {}, &response).error_code(), grpc::StatusCode::UNAVAILABLE);
  ExpectCoordinatorUp();
}

TEST_F(FederationTest, ARevokedClientIsRefusedAtItsNextRpc) {
  // Polls held for 30 s on both sides: the one open at the revocation must not run to its end.
  coordinator_->Signal(SIGTERM);
  ASSERT_TRUE(coordinator_->Wait(absl::Seconds(20)).has_value());
  ASSERT_TRUE(
      ReplaceInFile(state_ / "coordinator.yaml", "poll_max_wait: 2s", "poll_max_wait: 30s"));
  StartCoordinator();
  const auto state_dir = EnrollClient("bank-1");
  ASSERT_TRUE(ReplaceInFile(state_dir / "client.yaml", "max_wait: 2s", "max_wait: 30s"));
  auto daemon = StartClient(state_dir);
  ASSERT_TRUE(WaitFor([&] { return IsOnline("bank-1"); }, absl::Seconds(15))) << daemon->Log();
  // Its first long poll is parked by now.
  absl::SleepFor(absl::Seconds(1));

  const absl::Time revoking = absl::Now();
  CommandResult revoked = Coordinator({"clients", "revoke", "bank-1", "--reason", "offboarded"});
  ASSERT_EQ(revoked.exit_code, 0) << revoked.err;
  // The poll in flight ends at the revocation, refused; the daemon stops as revoked.
  EXPECT_EQ(daemon->Wait(absl::Seconds(15)), 3) << daemon->Log();
  EXPECT_LT(absl::Now() - revoking, absl::Seconds(10)) << "the open poll ran on";
  EXPECT_THAT(daemon->Log(), HasSubstr("client 'bank-1' is revoked"));

  const auto clients = ListClients();
  ASSERT_EQ(clients.clients_size(), 1);
  EXPECT_EQ(clients.clients(0).state(), v1::ClientInfo::STATE_REVOKED);
  EXPECT_EQ(clients.clients(0).revocation_reason(), "offboarded");
  EXPECT_THAT(Coordinator({"token", "create", "--client-id", "bank-1"}).err,
              HasSubstr("revoked; enroll under a new id"));
  ExpectCoordinatorUp();
}

TEST_F(FederationTest, MalformedAndOversizedMessagesAreRefusedAndTheServerStaysUp) {
  const auto state_dir = EnrollClient("bank-1");
  grpc::GenericStub stub(ClientChannel(state_dir));
  auto call = [&](const std::string& payload) {
    grpc::Slice slice(payload);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    std::promise<grpc::Status> done;
    stub.UnaryCall(&context, "/fedmoe.v1.Federation/PollTask", grpc::StubOptions(), &request,
                   &response, [&](const grpc::Status& status) { done.set_value(status); });
    return done.get_future().get();
  };
  const grpc::Status garbage = call(std::string("\x0f\xff\xff garbage", 11));
  EXPECT_EQ(garbage.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(garbage.error_message(), HasSubstr("malformed fedmoe.v1.PollTaskRequest: 11 bytes"));

  const grpc::Status oversized = call(std::string(5 << 20, 'x'));
  EXPECT_EQ(oversized.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << oversized.error_message();
  EXPECT_THAT(oversized.error_message(), HasSubstr("larger than max"));

  // A well-formed call on the same channel still works.
  v1::PollTaskRequest request;
  request.mutable_max_wait()->set_seconds(0);
  const grpc::Status good = call(request.SerializeAsString());
  EXPECT_TRUE(good.ok()) << good.error_message();
  ExpectCoordinatorUp();
}

TEST_F(FederationTest, TheRegistrySurvivesKill9AndClientsReconnectOnTheirOwn) {
  const auto first = EnrollClient("bank-1");
  const auto second = EnrollClient("bank-2");
  auto daemon_1 = StartClient(first);
  auto daemon_2 = StartClient(second);
  ASSERT_TRUE(WaitFor([&] { return IsOnline("bank-1") && IsOnline("bank-2"); }, absl::Seconds(15)));

  coordinator_->Signal(SIGKILL);
  EXPECT_EQ(coordinator_->Wait(absl::Seconds(5)), 128 + SIGKILL);
  EXPECT_TRUE(WaitFor([&] { return daemon_1->Log().find("disconnected") != std::string::npos; },
                      absl::Seconds(10)));
  StartCoordinator();

  const auto clients = ListClients();
  ASSERT_EQ(clients.clients_size(), 2);
  EXPECT_EQ(clients.clients(0).client_id(), "bank-1");
  EXPECT_EQ(clients.clients(1).client_id(), "bank-2");
  EXPECT_TRUE(WaitFor([&] { return IsOnline("bank-1") && IsOnline("bank-2"); }, absl::Seconds(20)))
      << daemon_1->Log() << daemon_2->Log();
  EXPECT_TRUE(daemon_1->running());
  EXPECT_TRUE(daemon_2->running());
}

TEST_F(FederationTest, AdminMethodsNeedAnAdminCertificate) {
  const auto state_dir = EnrollClient("bank-1");
  auto stub = v1::Admin::NewStub(ClientChannel(state_dir));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::RevokeClientRequest request;
  request.set_client_id("bank-1");
  v1::RevokeClientResponse response;
  const grpc::Status status = stub->RevokeClient(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(status.error_message(), HasSubstr("an admin certificate"));
  EXPECT_EQ(ListClients().clients(0).state(), v1::ClientInfo::STATE_ACTIVE);
}

TEST_F(FederationTest, AnAdminIsAddedListedAndRevokedAtItsNextRpcEvenAfterARestart) {
  const std::filesystem::path auditor = dir_.path() / "auditor";
  CommandResult added = Coordinator({"admins", "add", "auditor", "--out", auditor.string()});
  ASSERT_EQ(added.exit_code, 0) << added.err;
  EXPECT_EQ(Mode(auditor / "admin.key"), 0600u);
  // The new operator needs nothing of the coordinator's state directory.
  const std::vector<std::string> as_auditor = {BinaryPath("fedmoe-coordinator"), "status",
                                               "--admin-dir", auditor.string()};
  CommandResult status = RunCommand(as_auditor);
  ASSERT_EQ(status.exit_code, 0) << status.err;

  CommandResult listed = Coordinator({"admins", "list", "--json"});
  ASSERT_EQ(listed.exit_code, 0) << listed.err;
  v1::ListAdminsResponse admins;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(listed.out, &admins).ok());
  ASSERT_EQ(admins.admins_size(), 2) << listed.out;
  EXPECT_EQ(admins.admins(0).name(), "auditor");
  EXPECT_EQ(admins.admins(0).added_by(), "operator");
  EXPECT_TRUE(admins.admins(0).has_last_seen_at());
  EXPECT_EQ(admins.admins(1).name(), "operator");
  EXPECT_FALSE(admins.admins(1).revoked());

  // A name is never issued twice, and no admin can lock the federation out by revoking itself.
  CommandResult again =
      Coordinator({"admins", "add", "auditor", "--out", (dir_.path() / "again").string()});
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_THAT(again.err, HasSubstr("admin 'auditor' already exists"));
  CommandResult self = RunCommand({BinaryPath("fedmoe-coordinator"), "admins", "revoke", "auditor",
                                   "--admin-dir", auditor.string()});
  EXPECT_EQ(self.exit_code, 1);
  EXPECT_THAT(self.err, HasSubstr("may not revoke itself"));
  EXPECT_EQ(Coordinator({"admins", "revoke", "nobody"}).exit_code, 1);

  CommandResult revoked = Coordinator({"admins", "revoke", "auditor", "--reason", "left"});
  ASSERT_EQ(revoked.exit_code, 0) << revoked.err;
  status = RunCommand(as_auditor);
  EXPECT_EQ(status.exit_code, 1);
  EXPECT_THAT(status.err, HasSubstr("admin 'auditor' is revoked: left"));
  EXPECT_EQ(Coordinator({"status"}).exit_code, 0);

  // The revocation is in the store, not in memory.
  coordinator_->Signal(SIGKILL);
  coordinator_->Wait(absl::Seconds(10));
  StartCoordinator();
  status = RunCommand(as_auditor);
  EXPECT_EQ(status.exit_code, 1);
  EXPECT_THAT(status.err, HasSubstr("admin 'auditor' is revoked"));
  CommandResult readded =
      Coordinator({"admins", "add", "auditor", "--out", (dir_.path() / "readded").string()});
  EXPECT_THAT(readded.err, HasSubstr("already exists and is revoked"));
}

TEST_F(FederationTest, ClientRenewsItsCertificateWhenAThirdOfItsLifetimeIsLeft) {
  const auto state_dir = EnrollClient("bank-1");
  auto key = pki::PrivateKey::ReadFile(state_dir / "client.key");
  const pki::Certificate aging = AgeClientCertificate(state_dir, "bank-1");

  auto daemon = StartClient(state_dir);
  ASSERT_TRUE(
      WaitFor([&] { return daemon->Log().find("certificate_renewed") != std::string::npos; },
              absl::Seconds(15)))
      << daemon->Log();
  auto renewed = pki::Certificate::ReadFile(state_dir / "client.pem");
  ASSERT_TRUE(renewed.ok());
  EXPECT_NE(renewed->SerialHex(), aging.SerialHex());
  EXPECT_GT(renewed->NotAfter(), absl::Now() + absl::Hours(24 * 29));
  // A new key pair came with it, still 0600, and the daemon keeps polling with it.
  EXPECT_NE(*pki::PrivateKey::ReadFile(state_dir / "client.key")->PublicKeyDer(),
            *key->PublicKeyDer());
  EXPECT_EQ(Mode(state_dir / "client.key"), 0600);
  EXPECT_FALSE(std::filesystem::exists(state_dir / "client.key.next"));
  EXPECT_TRUE(WaitFor([&] { return IsOnline("bank-1"); }, absl::Seconds(10)));
  const auto clients = ListClients();
  EXPECT_EQ(clients.clients(0).certificate_serial(), renewed->SerialHex());
  EXPECT_TRUE(daemon->running());
}

TEST_F(FederationTest, BothPortsServeTheStandardHealthService) {
  const auto state_dir = EnrollClient("bank-1");
  grpc::SslCredentialsOptions tls;
  tls.pem_root_certs = ReadFile(state_ / "ca.pem");
  for (const auto& channel : {grpc::CreateChannel(enroll_address_, grpc::SslCredentials(tls)),
                              ClientChannel(state_dir)}) {
    grpc::GenericStub stub(channel);
    grpc::Slice empty("");
    grpc::ByteBuffer request(&empty, 1);  // HealthCheckRequest{service: ""}
    grpc::ByteBuffer response;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    std::promise<grpc::Status> done;
    stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                   &response, [&](const grpc::Status& status) { done.set_value(status); });
    const grpc::Status status = done.get_future().get();
    ASSERT_TRUE(status.ok()) << status.error_message();
    std::vector<grpc::Slice> slices;
    ASSERT_TRUE(response.Dump(&slices).ok());
    std::string bytes;
    for (const auto& slice : slices)
      bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
    EXPECT_EQ(bytes, std::string("\x08\x01", 2)) << "HealthCheckResponse{status: SERVING}";
  }
}

// Both ports speak TLS 1.3 only.
TEST_F(FederationTest, Tls12IsRefusedOnBothPorts) {
  for (const std::string& address : {enroll_address_, mtls_address_}) {
    const size_t colon = address.rfind(':');
    BIO* bio = BIO_new_connect(address.c_str());
    ASSERT_EQ(BIO_do_connect(bio), 1) << address;
    SSL_CTX* context = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_max_proto_version(context, TLS1_2_VERSION);
    SSL* ssl = SSL_new(context);
    SSL_set_bio(ssl, bio, bio);
    EXPECT_NE(SSL_connect(ssl), 1) << address.substr(0, colon) << " accepted TLS 1.2";
    ERR_clear_error();
    SSL_free(ssl);
    SSL_CTX_free(context);
  }
  // The same connection with TLS 1.3 is accepted.
  EXPECT_TRUE(client::FetchServerChain(enroll_address_, absl::Seconds(5)).ok());
}

}  // namespace
}  // namespace fedmoe::testing
