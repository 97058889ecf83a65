// X25519 against RFC 7748's test vector; pair keys; AES-256-GCM sealing and its refusals.
#include "secure_agg/shared/key_agreement.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/testing_hex.h"

namespace fedmoe::secure_agg {
namespace {

using ::fedmoe::testing::FromHex;

TEST(X25519Test, MatchesRfc7748Section6_1) {
  auto alice = X25519KeyPair::FromPrivateKey(
      FromHex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"));
  auto bob = X25519KeyPair::FromPrivateKey(
      FromHex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"));
  ASSERT_TRUE(alice.ok() && bob.ok());
  EXPECT_EQ(alice->public_key(),
            FromHex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"));
  EXPECT_EQ(bob->public_key(),
            FromHex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"));
  const std::string shared =
      FromHex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
  EXPECT_EQ(*alice->Agree(bob->public_key()), shared);
  EXPECT_EQ(*bob->Agree(alice->public_key()), shared);
}

TEST(X25519Test, GeneratedPairsAgreeAndKeysRoundTrip) {
  auto u = X25519KeyPair::Generate();
  auto v = X25519KeyPair::Generate();
  ASSERT_TRUE(u.ok() && v.ok());
  EXPECT_NE(u->public_key(), v->public_key());
  EXPECT_EQ(*u->Agree(v->public_key()), *v->Agree(u->public_key()));
  // A mask key recovered from its Shamir shares rebuilds the same pair.
  auto rebuilt = X25519KeyPair::FromPrivateKey(*u->PrivateKey());
  EXPECT_EQ(rebuilt->public_key(), u->public_key());
  EXPECT_FALSE(u->Agree("short").ok());
  EXPECT_FALSE(u->Agree(std::string(32, '\0')).ok()) << "a low-order point is refused";
}

TEST(PairKeyTest, BothEndsDeriveTheSameKeyAndContextsSeparate) {
  const std::string secret(32, 's');
  const std::string session(32, 'i');
  auto key = DerivePairKey(secret, session, 5, "share-encryption", 3, 9);
  ASSERT_TRUE(key.ok());
  EXPECT_EQ(key->size(), 32U);
  EXPECT_EQ(*DerivePairKey(secret, session, 5, "share-encryption", 9, 3), *key);
  EXPECT_NE(*DerivePairKey(secret, session, 6, "share-encryption", 3, 9), *key);
  EXPECT_NE(*DerivePairKey(secret, session, 5, "pairwise-mask", 3, 9), *key);
  EXPECT_NE(*DerivePairKey(secret, std::string(32, 'j'), 5, "share-encryption", 3, 9), *key);
  EXPECT_NE(*DerivePairKey(secret, session, 5, "share-encryption", 3, 10), *key);
}

TEST(SealTest, OpensOnlyWithTheSameKeyAndContext) {
  const std::string key(32, 'k');
  const std::string plaintext = "shares of b and s_sk for participant 9";
  auto sealed = Seal(key, plaintext, "round 5: 3 -> 9");
  ASSERT_TRUE(sealed.ok());
  EXPECT_EQ(sealed->size(), 12 + plaintext.size() + 16);
  EXPECT_EQ(*Open(key, *sealed, "round 5: 3 -> 9"), plaintext);
  EXPECT_NE(*Seal(key, plaintext, "round 5: 3 -> 9"), *sealed) << "fresh nonce every time";

  auto code = [&](const std::string& k, const std::string& s, const std::string& ad) {
    return Open(k, s, ad).status().code();
  };
  std::string tampered = *sealed;
  tampered[20] ^= 1;
  EXPECT_EQ(code(key, tampered, "round 5: 3 -> 9"), absl::StatusCode::kUnauthenticated);
  std::string bad_tag = *sealed;
  bad_tag.back() ^= 1;
  EXPECT_EQ(code(key, bad_tag, "round 5: 3 -> 9"), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(code(std::string(32, 'K'), *sealed, "round 5: 3 -> 9"),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(code(key, *sealed, "round 6: 3 -> 9"), absl::StatusCode::kUnauthenticated)
      << "a replay into another round is refused";
  EXPECT_EQ(code(key, sealed->substr(0, 20), "round 5: 3 -> 9"),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(Seal("short", plaintext, "").ok());
}

}  // namespace
}  // namespace fedmoe::secure_agg
