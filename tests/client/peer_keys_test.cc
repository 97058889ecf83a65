// Peer keys trusted on first use: a changed key is accepted only behind key changes signed by
// the pinned key, for that peer, and the pins survive a reload.
#include "client/peer_keys.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>

#include "pki/key_change.h"
#include "pki/private_key.h"
#include "tests/testing_temp_dir.h"

namespace fedmoe::client {
namespace {

using ::testing::HasSubstr;

const pki::SpiffeId kBank2{"acme", pki::IdentityKind::kClient, "bank-2"};
const pki::SpiffeId kBank3{"acme", pki::IdentityKind::kClient, "bank-3"};

struct Key {
  pki::PrivateKey private_key;
  std::string public_der;
};

Key NewKey() {
  pki::PrivateKey key = *pki::PrivateKey::GenerateP256();
  std::string der = *key.PublicKeyDer();
  return {std::move(key), std::move(der)};
}

class PeerKeyPinsTest : public ::testing::Test {
 protected:
  PeerKeyPins Load() { return *PeerKeyPins::Load(dir_.path() / "peer-keys"); }
  fedmoe::testing::TempDir dir_;
};

TEST_F(PeerKeyPinsTest, TheFirstKeyIsPinnedAndTheSameKeyIsKnownAfterAReload) {
  const Key first = NewKey();
  PeerKeyPins pins = Load();
  EXPECT_EQ(*pins.Check(kBank2, first.public_der, {}), PeerKeyPins::Outcome::kPinned);
  ASSERT_TRUE(pins.Save().ok());
  PeerKeyPins reloaded = Load();
  EXPECT_EQ(reloaded.pins().at("bank-2"), pki::PublicKeyFingerprint(first.public_der));
  EXPECT_EQ(*reloaded.Check(kBank2, first.public_der, {}), PeerKeyPins::Outcome::kKnown);
}

TEST_F(PeerKeyPinsTest, ADifferentKeyWithoutASignedChangeIsRefusedNamingThePeer) {
  const Key first = NewKey();
  const Key minted = NewKey();
  PeerKeyPins pins = Load();
  ASSERT_TRUE(pins.Check(kBank2, first.public_der, {}).ok());
  absl::StatusOr<PeerKeyPins::Outcome> swapped = pins.Check(kBank2, minted.public_der, {});
  ASSERT_EQ(swapped.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(swapped.status().message()), HasSubstr("peer 'bank-2' presents key"));
  EXPECT_THAT(std::string(swapped.status().message()), HasSubstr("peers forget bank-2"));
  // The refusal leaves the pin where it was.
  EXPECT_EQ(pins.pins().at("bank-2"), pki::PublicKeyFingerprint(first.public_der));

  // A change signed by the minted key itself, or one signed for another peer, proves nothing.
  const pki::KeyChange self_signed =
      *pki::SignKeyChange(minted.private_key, kBank2, minted.public_der);
  EXPECT_FALSE(pins.Check(kBank2, minted.public_der, {self_signed}).ok());
  pki::KeyChange for_bank3 = *pki::SignKeyChange(first.private_key, kBank3, minted.public_der);
  EXPECT_FALSE(pins.Check(kBank2, minted.public_der, {for_bank3}).ok());
  // A genuine signature whose new key was swapped in transit does not verify.
  pki::KeyChange tampered = *pki::SignKeyChange(first.private_key, kBank2, NewKey().public_der);
  tampered.new_public_key_der = minted.public_der;
  EXPECT_FALSE(pins.Check(kBank2, minted.public_der, {tampered}).ok());
}

TEST_F(PeerKeyPinsTest, AChainOfRenewalsFromThePinnedKeyMovesThePin) {
  const Key first = NewKey();
  const Key second = NewKey();
  const Key third = NewKey();
  PeerKeyPins pins = Load();
  ASSERT_TRUE(pins.Check(kBank2, first.public_der, {}).ok());
  // The site missed a renewal: the chain from its pin passes through a key it never saw, and
  // links from before its pin are skipped.
  const std::vector<pki::KeyChange> chain = {
      *pki::SignKeyChange(NewKey().private_key, kBank2, first.public_der),
      *pki::SignKeyChange(first.private_key, kBank2, second.public_der),
      *pki::SignKeyChange(second.private_key, kBank2, third.public_der)};
  EXPECT_EQ(*pins.Check(kBank2, third.public_der, chain), PeerKeyPins::Outcome::kChanged);
  EXPECT_EQ(pins.pins().at("bank-2"), pki::PublicKeyFingerprint(third.public_der));
  // A chain that stops short of the presented key does not reach it.
  EXPECT_FALSE(pins.Check(kBank2, NewKey().public_der, chain).ok());
}

TEST_F(PeerKeyPinsTest, ForgettingAPeerTrustsItsNextKeyOnFirstUse) {
  PeerKeyPins pins = Load();
  ASSERT_TRUE(pins.Check(kBank2, NewKey().public_der, {}).ok());
  ASSERT_TRUE(pins.Forget("bank-2").ok());
  EXPECT_EQ(pins.Forget("bank-2").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(*pins.Check(kBank2, NewKey().public_der, {}), PeerKeyPins::Outcome::kPinned);
}

TEST_F(PeerKeyPinsTest, ACorruptFileIsRefusedWithItsLine) {
  ASSERT_TRUE(PeerKeyPins::Load(dir_.path() / "peer-keys").ok());
  {
    std::ofstream out(dir_.path() / "peer-keys");
    out << "# comment\nbank-2 " << std::string(64, 'a') << "\nbank-3 not-a-fingerprint\n";
  }
  absl::StatusOr<PeerKeyPins> pins = PeerKeyPins::Load(dir_.path() / "peer-keys");
  ASSERT_FALSE(pins.ok());
  EXPECT_THAT(std::string(pins.status().message()), HasSubstr("peer-keys:3:"));
}

}  // namespace
}  // namespace fedmoe::client
