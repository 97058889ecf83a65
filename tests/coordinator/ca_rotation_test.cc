// CA rotation on a state directory (coordinator/identity/ca_rotation.h): the three steps, what each
// leaves on disk, a switch cut short by a crash at every point, and the trust bundle a client
// accepts from a coordinator.
#include "coordinator/identity/ca_rotation.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <string>
#include <vector>

#include "client/coordinator_channel.h"
#include "coordinator/config.h"
#include "pki/certificate.h"
#include "pki/certificate_authority.h"
#include "pki/private_key.h"
#include "storage/atomic_file.h"
#include "tests/testing_temp_dir.h"

namespace fedmoe::coordinator {
namespace {

namespace fs = std::filesystem;
using ::fedmoe::testing::TempDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string Message(const absl::Status& status) { return std::string(status.message()); }

class CaRotationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    InitOptions options;
    options.federation = "acme";
    options.state_dir = dir_.path() / "state";
    auto created = InitStateDir(options);
    ASSERT_TRUE(created.ok()) << created.status();
    config_ = created->config;
    old_ca_ = created->ca_fingerprint;
  }

  FederationTrust Trust() {
    auto trust = LoadFederationTrust(config_);
    EXPECT_TRUE(trust.ok()) << trust.status();
    return *std::move(trust);
  }

  // The server and admin certificates chain to the CA with `fingerprint`, and only to it.
  void ExpectCoordinatorCertificatesFrom(const std::string& fingerprint) {
    const FederationTrust trust = Trust();
    for (const fs::path& path : {dir().server_certificate(), dir().admin_certificate()}) {
      auto leaf = pki::Certificate::ReadFile(path);
      ASSERT_TRUE(leaf.ok());
      for (const pki::Certificate& ca : trust.bundle.certificates()) {
        const bool chains =
            pki::VerifyPeer(
                *leaf, ca, "acme",
                path == dir().server_certificate() ? pki::Purpose::kServer : pki::Purpose::kClient)
                .ok();
        EXPECT_EQ(chains, ca.Sha256Fingerprint() == fingerprint) << path;
      }
    }
  }

  const StateDir& dir() const { return config_.state_dir; }

  TempDir dir_;
  CoordinatorConfig config_;
  std::string old_ca_;
};

TEST_F(CaRotationTest, BeginSwitchAndRetireMoveTheIssuerAndTheTrust) {
  EXPECT_EQ(Trust().phase, CaRotationPhase::kNone);
  EXPECT_THAT(Trust().bundle.Fingerprints(), ElementsAre(old_ca_));
  EXPECT_THAT(Message(SwitchCa(config_, false).status()), HasSubstr("no CA rotation"));
  EXPECT_THAT(Message(RetireCa(config_, false).status()), HasSubstr("no CA rotation"));

  auto new_ca = BeginCaRotation(config_, {});
  ASSERT_TRUE(new_ca.ok()) << new_ca.status();
  EXPECT_EQ(Trust().phase, CaRotationPhase::kNewCaTrusted);
  EXPECT_THAT(Trust().bundle.Fingerprints(), ElementsAre(old_ca_, *new_ca));
  EXPECT_EQ(Trust().issuer.certificate().Sha256Fingerprint(), old_ca_);
  struct stat info {};
  ASSERT_EQ(::stat(dir().next_ca_key().c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);
  EXPECT_THAT(Message(BeginCaRotation(config_, {}).status()),
              HasSubstr("next step is `fedmoe-coordinator ca switch`"));
  EXPECT_THAT(Message(RetireCa(config_, false).status()), HasSubstr("does not issue yet"));
  ExpectCoordinatorCertificatesFrom(old_ca_);

  // No client is enrolled, so nobody holds the switch back.
  ASSERT_TRUE(SwitchCa(config_, false).ok());
  EXPECT_EQ(Trust().phase, CaRotationPhase::kNewCaIssuing);
  EXPECT_THAT(Trust().bundle.Fingerprints(), ElementsAre(*new_ca, old_ca_));
  EXPECT_EQ(Trust().issuer.certificate().Sha256Fingerprint(), *new_ca);
  EXPECT_FALSE(fs::exists(dir().next_ca_key()));
  EXPECT_FALSE(fs::exists(dir().next_ca_certificate()));
  ExpectCoordinatorCertificatesFrom(*new_ca);
  // The old CA's key is gone: ca.key is the new CA's.
  auto key = pki::PrivateKey::ReadFile(dir().ca_key());
  auto ca = pki::Certificate::ReadFile(dir().ca_certificate());
  ASSERT_TRUE(key.ok() && ca.ok());
  EXPECT_EQ(*key->PublicKeyDer(), ca->PublicKeyDer());
  EXPECT_THAT(Message(BeginCaRotation(config_, {}).status()),
              HasSubstr("`fedmoe-coordinator ca retire`"));

  auto retired = RetireCa(config_, false);
  ASSERT_TRUE(retired.ok()) << retired.status();
  EXPECT_EQ(*retired, old_ca_);
  EXPECT_EQ(Trust().phase, CaRotationPhase::kNone);
  EXPECT_THAT(Trust().bundle.Fingerprints(), ElementsAre(*new_ca));
  // And the next rotation may begin.
  EXPECT_TRUE(BeginCaRotation(config_, {}).ok());
}

// A crash may stop the switch after its marker at any rename; the next load finishes it.
TEST_F(CaRotationTest, ASwitchCutShortAtAnyRenameIsFinishedByTheNextLoad) {
  for (int renames_done = 0; renames_done <= 3; ++renames_done) {
    SCOPED_TRACE(renames_done);
    TempDir copy;
    CoordinatorConfig config = config_;
    config.state_dir.root = copy.path() / "state";
    fs::copy(dir().root, config.state_dir.root, fs::copy_options::recursive);
    const StateDir& state = config.state_dir;
    auto new_ca = BeginCaRotation(config, {});
    ASSERT_TRUE(new_ca.ok());
    ASSERT_TRUE(storage::WriteFileAtomically(state.ca_switch_marker(), *new_ca + "\n",
                                             fs::perms::owner_read | fs::perms::owner_write)
                    .ok());
    const std::pair<fs::path, fs::path> renames[] = {
        {state.ca_certificate(), state.previous_ca_certificate()},
        {state.next_ca_key(), state.ca_key()},
        {state.next_ca_certificate(), state.ca_certificate()}};
    for (int i = 0; i < renames_done; ++i) fs::rename(renames[i].first, renames[i].second);

    auto trust = LoadFederationTrust(config);
    ASSERT_TRUE(trust.ok()) << trust.status();
    EXPECT_EQ(trust->phase, CaRotationPhase::kNewCaIssuing);
    EXPECT_THAT(trust->bundle.Fingerprints(), ElementsAre(*new_ca, old_ca_));
    EXPECT_EQ(trust->issuer.certificate().Sha256Fingerprint(), *new_ca);
    EXPECT_FALSE(fs::exists(state.ca_switch_marker()));
  }
}

TEST_F(CaRotationTest, BeginTakesACeremonyCaOnlyIfItIsNewAndOfThisFederation) {
  TempDir ceremony;
  auto foreign = pki::CertificateAuthority::Create("globex", absl::Hours(24));
  ASSERT_TRUE(foreign.ok());
  ASSERT_TRUE(foreign->certificate().WriteFile(ceremony.path() / "globex.pem").ok());
  ASSERT_TRUE(foreign->key().WriteFile(ceremony.path() / "globex.key").ok());
  BeginCaRotationOptions options;
  options.ca_certificate = ceremony.path() / "globex.pem";
  options.ca_key = ceremony.path() / "globex.key";
  EXPECT_THAT(Message(BeginCaRotation(config_, options).status()),
              HasSubstr("is for federation 'globex', not 'acme'"));
  options.ca_certificate = dir().ca_certificate();
  options.ca_key = dir().ca_key();
  EXPECT_THAT(Message(BeginCaRotation(config_, options).status()),
              HasSubstr("is already this federation's CA"));
  options.ca_key.clear();
  EXPECT_THAT(Message(BeginCaRotation(config_, options).status()), HasSubstr("go together"));
  EXPECT_EQ(Trust().phase, CaRotationPhase::kNone);

  auto ours = pki::CertificateAuthority::Create("acme", absl::Hours(24 * 365));
  ASSERT_TRUE(ours.ok());
  ASSERT_TRUE(ours->certificate().WriteFile(ceremony.path() / "acme.pem").ok());
  ASSERT_TRUE(ours->key().WriteFile(ceremony.path() / "acme.key").ok());
  options.ca_certificate = ceremony.path() / "acme.pem";
  options.ca_key = ceremony.path() / "acme.key";
  auto begun = BeginCaRotation(config_, options);
  ASSERT_TRUE(begun.ok()) << begun.status();
  EXPECT_EQ(*begun, ours->certificate().Sha256Fingerprint());
}

// What a client accepts as its new trust bundle from a coordinator's reply.
TEST(ReceivedTrustBundleTest, RefusesWhatAClientMustNotTrust) {
  auto old_ca = pki::CertificateAuthority::Create("acme", absl::Hours(24));
  auto new_ca = pki::CertificateAuthority::Create("acme", absl::Hours(24));
  auto foreign = pki::CertificateAuthority::Create("globex", absl::Hours(24));
  auto key = pki::PrivateKey::GenerateP256();
  ASSERT_TRUE(old_ca.ok() && new_ca.ok() && foreign.ok() && key.ok());
  auto issued = new_ca->IssueFromCsr(*pki::MakeCsr(*key, "bank"),
                                     {"acme", pki::IdentityKind::kClient, "bank"}, absl::Hours(1));
  ASSERT_TRUE(issued.ok());
  auto received = [&](const std::vector<const pki::CertificateAuthority*>& cas) {
    google::protobuf::RepeatedPtrField<std::string> ders;
    for (const pki::CertificateAuthority* ca : cas) ders.Add(ca->certificate().ToDer());
    return client::ReceivedTrustBundle(ders, *issued, "acme");
  };
  auto none = received({});
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value()) << "an older coordinator sends none";
  auto both = received({&*new_ca, &*old_ca});
  ASSERT_TRUE(both.ok()) << both.status();
  EXPECT_THAT((*both)->Fingerprints(), ElementsAre(new_ca->certificate().Sha256Fingerprint(),
                                                   old_ca->certificate().Sha256Fingerprint()));
  EXPECT_THAT(Message(received({&*old_ca}).status()),
              HasSubstr("not valid under the coordinator's trust bundle"));
  EXPECT_THAT(Message(received({&*new_ca, &*foreign}).status()),
              HasSubstr("is a CA of federation 'globex', not 'acme'"));
  EXPECT_THAT(Message(received({&*new_ca, &*new_ca}).status()), HasSubstr("twice"));
  EXPECT_THAT(Message(received({&*new_ca, &*old_ca, &*old_ca, &*old_ca, &*old_ca}).status()),
              HasSubstr("at most 4"));
  google::protobuf::RepeatedPtrField<std::string> garbage;
  garbage.Add("not a certificate");
  EXPECT_EQ(client::ReceivedTrustBundle(garbage, *issued, "acme").status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedmoe::coordinator
