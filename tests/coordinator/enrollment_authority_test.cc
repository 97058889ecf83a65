// Renewal keeps the old key's word for the new one, which SecAgg+ peers check against the key
// they pinned; admin names are issued once.
#include "coordinator/identity/enrollment_authority.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>

#include "pki/certificate_authority.h"
#include "pki/key_change.h"
#include "tests/testing_temp_dir.h"

namespace fedmoe::coordinator {
namespace {

using ::testing::HasSubstr;

class EnrollmentAuthorityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store_ = *Store::Open(dir_.path() / "state.db");
    pki::CertificateAuthority ca =
        *pki::CertificateAuthority::Create("acme", absl::Hours(24 * 365));
    pki::TrustBundle trust = *pki::TrustBundle::Create({ca.certificate()}, "acme");
    authority_ = std::make_unique<EnrollmentAuthority>(std::move(ca), std::move(trust),
                                                       store_.get(), absl::Hours(24 * 30));
  }

  std::string Csr(const pki::PrivateKey& key) { return *pki::MakeCsr(key, "bank-1"); }

  fedmoe::testing::TempDir dir_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<EnrollmentAuthority> authority_;
  const pki::SpiffeId id_{"acme", pki::IdentityKind::kClient, "bank-1"};
};

TEST_F(EnrollmentAuthorityTest, ARenewalNeedsTheOldKeysSignatureOverTheNewKey) {
  const pki::PrivateKey enrolled_key = *pki::PrivateKey::GenerateP256();
  auto token = authority_->CreateToken("bank-1", absl::Hours(1));
  ASSERT_TRUE(token.ok()) << token.status();
  auto enrolled = authority_->Enroll(token->token.ToString(), Csr(enrolled_key), "test");
  ASSERT_TRUE(enrolled.ok()) << enrolled.status();
  const std::string old_public = *enrolled_key.PublicKeyDer();

  const pki::PrivateKey new_key = *pki::PrivateKey::GenerateP256();
  const std::string new_public = *new_key.PublicKeyDer();
  EXPECT_THAT(
      std::string(authority_->Renew("bank-1", Csr(new_key), old_public, "").status().message()),
      HasSubstr("no key_change_signature"));
  // Signed by the new key itself (what a coordinator minting a key could produce).
  const pki::KeyChange self_signed = *pki::SignKeyChange(new_key, id_, new_public);
  EXPECT_THAT(
      std::string(authority_->Renew("bank-1", Csr(new_key), old_public, self_signed.signature)
                      .status()
                      .message()),
      HasSubstr("is not the current key's"));
  EXPECT_TRUE(store_->KeyChanges("bank-1", 64)->empty());

  const pki::KeyChange change = *pki::SignKeyChange(enrolled_key, id_, new_public);
  auto renewed = authority_->Renew("bank-1", Csr(new_key), old_public, change.signature);
  ASSERT_TRUE(renewed.ok()) << renewed.status();
  auto changes = store_->KeyChanges("bank-1", 64);
  ASSERT_TRUE(changes.ok());
  ASSERT_EQ(changes->size(), 1u);
  EXPECT_EQ((*changes)[0].old_public_key_der, old_public);
  EXPECT_EQ((*changes)[0].new_public_key_der, renewed->PublicKeyDer());
  EXPECT_TRUE(pki::VerifyKeyChange(id_, (*changes)[0]).ok());

  // A second renewal extends the chain, oldest first; the limit keeps the newest.
  const pki::PrivateKey third_key = *pki::PrivateKey::GenerateP256();
  const pki::KeyChange next = *pki::SignKeyChange(new_key, id_, *third_key.PublicKeyDer());
  ASSERT_TRUE(authority_->Renew("bank-1", Csr(third_key), new_public, next.signature).ok());
  ASSERT_EQ(store_->KeyChanges("bank-1", 64)->size(), 2u);
  EXPECT_EQ((*store_->KeyChanges("bank-1", 64))[1].old_public_key_der, new_public);
  ASSERT_EQ(store_->KeyChanges("bank-1", 1)->size(), 1u);
  EXPECT_EQ((*store_->KeyChanges("bank-1", 1))[0].old_public_key_der, new_public);
}

// The version string is the client's own words: stored as one printable line of at most 64
// bytes, so that newlines and terminal escapes never reach an operator's screen or the log.
TEST_F(EnrollmentAuthorityTest, TheClientVersionIsStoredAsOnePrintableLine) {
  auto token = authority_->CreateToken("bank-1", absl::Hours(1));
  ASSERT_TRUE(token.ok());
  const std::string version = "1.0\n\x1b[2J\x1b[31mowned" + std::string(100, 'x');
  ASSERT_TRUE(
      authority_->Enroll(token->token.ToString(), Csr(*pki::PrivateKey::GenerateP256()), version)
          .ok());
  const std::string stored = store_->GetClient("bank-1")->client_version;
  EXPECT_EQ(stored.size(), 64U);
  EXPECT_EQ(stored.rfind("1.0??[2J?[31mowned", 0), 0U) << stored;
  EXPECT_TRUE(
      std::all_of(stored.begin(), stored.end(), [](char c) { return c >= 0x20 && c <= 0x7e; }));
}

TEST_F(EnrollmentAuthorityTest, AnAdminNameIsIssuedOnceAndNeverAfterItsRevocation) {
  const pki::PrivateKey key = *pki::PrivateKey::GenerateP256();
  auto added =
      authority_->AddAdmin("auditor", *pki::MakeCsr(key, "auditor"), "operator", absl::Hours(24));
  ASSERT_TRUE(added.ok()) << added.status();
  EXPECT_EQ(added->Identity()->ToUri(), "spiffe://acme/admin/auditor");
  EXPECT_EQ(
      authority_->AddAdmin("auditor", *pki::MakeCsr(key, "auditor"), "operator", absl::Hours(24))
          .status()
          .code(),
      absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(authority_->AddAdmin("Bad Name", *pki::MakeCsr(key, "x"), "operator", absl::Hours(24))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);

  EXPECT_TRUE(store_->AuthorizeAdmin("auditor", added->SerialHex(), absl::Now()).ok());
  ASSERT_TRUE(store_->RevokeAdmin("auditor", "left", "operator", absl::Now()).ok());
  EXPECT_THAT(std::string(store_->AuthorizeAdmin("auditor", "any", absl::Now()).message()),
              HasSubstr("admin 'auditor' is revoked: left"));
  // The operator `init` made is known from its first call on.
  EXPECT_EQ(store_->RevokeAdmin("operator", "", "auditor", absl::Now()).status().code(),
            absl::StatusCode::kNotFound);
  ASSERT_TRUE(store_->AuthorizeAdmin("operator", "aa", absl::Now()).ok());
  auto admins = store_->ListAdmins();
  ASSERT_EQ(admins->size(), 2u);
  EXPECT_TRUE((*admins)[0].revoked());
  EXPECT_EQ((*admins)[0].revoked_by, "operator");
  EXPECT_FALSE((*admins)[1].revoked());
}

}  // namespace
}  // namespace fedmoe::coordinator
