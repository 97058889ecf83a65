// coordinator.yaml and `init`: the state directory a new federation starts from.
#include "coordinator/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>

#include "pki/certificate.h"
#include "pki/private_key.h"
#include "tests/testing_temp_dir.h"

namespace fedmoe::coordinator {
namespace {

using ::fedmoe::testing::TempDir;
using ::testing::HasSubstr;

mode_t Mode(const std::filesystem::path& path) {
  struct stat info {};
  ::stat(path.c_str(), &info);
  return info.st_mode & 0777;
}

std::string Message(const absl::Status& status) { return std::string(status.message()); }

absl::StatusOr<CoordinatorConfig> LoadText(const TempDir& dir, const std::string& text) {
  const auto path = dir.path() / "c.yaml";
  std::ofstream(path) << text;
  return CoordinatorConfig::Load(path);
}

TEST(InitStateDirTest, AnExistingCaOfTheSameFederationIsUsedAndAnotherRefused) {
  TempDir dir;
  InitOptions first;
  first.federation = "acme";
  first.state_dir = dir.path() / "first";
  auto created = InitStateDir(first);
  ASSERT_TRUE(created.ok()) << created.status();

  InitOptions imported = first;
  imported.state_dir = dir.path() / "second";
  imported.ca_certificate = first.state_dir / "ca.pem";
  imported.ca_key = first.state_dir / "ca.key";
  auto second = InitStateDir(imported);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->ca_fingerprint, created->ca_fingerprint);
  // The new server certificate chains to the imported CA.
  auto ca = pki::Certificate::ReadFile(imported.state_dir / "ca.pem");
  auto server = pki::Certificate::ReadFile(imported.state_dir / "server.pem");
  ASSERT_TRUE(ca.ok() && server.ok());
  EXPECT_TRUE(pki::VerifyPeer(*server, *ca, "acme", pki::Purpose::kServer).ok());

  imported.state_dir = dir.path() / "third";
  imported.federation = "globex";
  EXPECT_THAT(InitStateDir(imported).status().message(),
              HasSubstr("is for federation 'acme', not 'globex'"));
  imported.federation = "acme";
  imported.ca_key.clear();
  EXPECT_THAT(InitStateDir(imported).status().message(), HasSubstr("go together"));
}

TEST(InitStateDirTest, CreatesAWorkingFederation) {
  TempDir dir;
  InitOptions options;
  options.federation = "acme-fed";
  options.state_dir = dir.path() / "state";
  auto result = InitStateDir(options);
  ASSERT_TRUE(result.ok()) << result.status();
  const StateDir& state = result->config.state_dir;

  EXPECT_EQ(Mode(state.root), 0700);
  for (const auto& key : {state.ca_key(), state.server_key(), state.admin_key()}) {
    EXPECT_EQ(Mode(key), 0600) << key;
    EXPECT_TRUE(pki::PrivateKey::ReadFile(key).ok()) << key;
  }
  EXPECT_EQ(Mode(state.config()), 0600);

  auto ca = pki::Certificate::ReadFile(state.ca_certificate());
  ASSERT_TRUE(ca.ok());
  EXPECT_EQ(result->ca_fingerprint, ca->Sha256Fingerprint());
  auto server = pki::Certificate::ReadFile(state.server_certificate());
  auto admin = pki::Certificate::ReadFile(state.admin_certificate());
  EXPECT_TRUE(pki::VerifyPeer(*server, *ca, "acme-fed", pki::Purpose::kServer).ok());
  auto admin_id = pki::VerifyPeer(*admin, *ca, "acme-fed", pki::Purpose::kClient);
  ASSERT_TRUE(admin_id.ok());
  EXPECT_EQ(admin_id->ToUri(), "spiffe://acme-fed/admin/operator");

  // The written config loads back as what init meant.
  auto loaded = CoordinatorConfig::Load(state.config());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->federation, "acme-fed");
  EXPECT_EQ(loaded->state_dir.root, state.root);
  EXPECT_EQ(loaded->listen, "127.0.0.1:7443");
  EXPECT_EQ(loaded->client_certificate_validity, absl::Hours(720));
  EXPECT_EQ(loaded->poll_max_wait, absl::Seconds(30));

  auto again = InitStateDir(options);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Message(again.status()), HasSubstr("already holds a federation"));
}

TEST(InitStateDirTest, RefusesBadOptions) {
  TempDir dir;
  InitOptions options;
  options.state_dir = dir.path();
  options.federation = "Acme";
  EXPECT_THAT(Message(InitStateDir(options).status()), HasSubstr("lower-case"));
  options.federation = "acme";
  options.listen = "127.0.0.1";
  EXPECT_THAT(Message(InitStateDir(options).status()), HasSubstr("not host:port"));
}

TEST(CoordinatorConfigTest, ReportsEveryProblemWithItsLine) {
  TempDir dir;
  auto config = LoadText(dir,
                         "federation: acme\n"
                         "state_dir: /tmp/x\n"
                         "listen: 127.0.0.1:99999\n"
                         "limits:\n"
                         "  poll_max_wait: soon\n"
                         "  max_concurent_streams: 5\n"
                         "log_level: loud\n");
  ASSERT_FALSE(config.ok());
  const std::string message = Message(config.status());
  EXPECT_THAT(message, HasSubstr("c.yaml:3: listen: address '127.0.0.1:99999' has no port"));
  EXPECT_THAT(message, HasSubstr("c.yaml:5: limits.poll_max_wait: expected a duration"));
  EXPECT_THAT(message, HasSubstr("c.yaml:6: limits.max_concurent_streams: unknown key"));
  EXPECT_THAT(message, HasSubstr("c.yaml:7: log_level: unknown log level 'loud'"));
}

TEST(CoordinatorConfigTest, RequiredKeysAndSyntaxErrors) {
  TempDir dir;
  EXPECT_THAT(Message(LoadText(dir, "listen: 127.0.0.1:1\n").status()),
              HasSubstr("federation: is required"));
  EXPECT_THAT(Message(LoadText(dir, "federation: [unclosed\n").status()),
              HasSubstr("not valid YAML"));
  EXPECT_THAT(Message(LoadText(dir, "- a\n- b\n").status()), HasSubstr("must be a mapping"));
  EXPECT_THAT(Message(LoadText(dir,
                               "federation: acme\nstate_dir: /x\n"
                               "certificates:\n  client_validity: 10000h\n")
                          .status()),
              HasSubstr("certificates.client_validity: must be between 1h and 9552h"));
  EXPECT_EQ(CoordinatorConfig::Load(dir.path() / "missing.yaml").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace fedmoe::coordinator
