// The keys of a SecAgg+ round (DESIGN §3): each participant's two X25519 key pairs (one to
// encrypt shares to it, one for pairwise masks), the agreement between two participants, and
// the AES-256-GCM sealing of the share bundles the coordinator relays. All OpenSSL 3 EVP.
#ifndef FEDMOE_SECURE_AGG_SHARED_KEY_AGREEMENT_H_
#define FEDMOE_SECURE_AGG_SHARED_KEY_AGREEMENT_H_

#include <openssl/evp.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace fedmoe::secure_agg {

class X25519KeyPair {
 public:
  static absl::StatusOr<X25519KeyPair> Generate();
  // From a raw 32-byte private key (RFC 7748 test vectors; a dropped client's mask key
  // recovered from Shamir shares).
  static absl::StatusOr<X25519KeyPair> FromPrivateKey(std::string_view private_key);

  X25519KeyPair(X25519KeyPair&&) noexcept = default;
  X25519KeyPair& operator=(X25519KeyPair&&) noexcept = default;

  // 32 bytes each. The private key is a secret: it leaves only as Shamir shares.
  const std::string& public_key() const { return public_key_; }
  absl::StatusOr<std::string> PrivateKey() const;

  // The 32-byte X25519 shared secret with a peer's public key. InvalidArgument for a malformed
  // or low-order peer key (an all-zero result).
  absl::StatusOr<std::string> Agree(std::string_view peer_public_key) const;

 private:
  struct KeyDeleter {
    void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
  };
  // Takes a key and reads its public half.
  static absl::StatusOr<X25519KeyPair> Adopt(std::unique_ptr<EVP_PKEY, KeyDeleter> key);
  X25519KeyPair(std::unique_ptr<EVP_PKEY, KeyDeleter> key, std::string public_key)
      : key_(std::move(key)), public_key_(std::move(public_key)) {}

  std::unique_ptr<EVP_PKEY, KeyDeleter> key_;
  std::string public_key_;
};

// HKDF-SHA256 of an X25519 agreement into a 32-byte key for one purpose, bound to the session,
// the round and the unordered pair of participants, so that both ends derive the same key.
absl::StatusOr<std::string> DerivePairKey(std::string_view shared_secret,
                                          std::string_view session_id, uint64_t round_id,
                                          std::string_view purpose, uint32_t participant_a,
                                          uint32_t participant_b);

// AES-256-GCM with a fresh random 12-byte nonce: nonce ‖ ciphertext ‖ 16-byte tag.
absl::StatusOr<std::string> Seal(std::string_view key, std::string_view plaintext,
                                 std::string_view associated_data);
// Unauthenticated when the tag does not verify (tampered ciphertext, wrong key, or associated
// data that differs, e.g. a share replayed into another round or to another recipient).
absl::StatusOr<std::string> Open(std::string_view key, std::string_view sealed,
                                 std::string_view associated_data);

}  // namespace fedmoe::secure_agg

#endif  // FEDMOE_SECURE_AGG_SHARED_KEY_AGREEMENT_H_
