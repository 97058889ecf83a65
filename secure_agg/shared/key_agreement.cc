#include "secure_agg/shared/key_agreement.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "secure_agg/shared/hkdf.h"

namespace fedmoe::secure_agg {
namespace {

constexpr size_t kKeyBytes = 32;
constexpr size_t kNonceBytes = 12;
constexpr size_t kTagBytes = 16;

struct CipherDeleter {
  void operator()(EVP_CIPHER_CTX* context) const { EVP_CIPHER_CTX_free(context); }
};
struct PkeyContextDeleter {
  void operator()(EVP_PKEY_CTX* context) const { EVP_PKEY_CTX_free(context); }
};
const unsigned char* Bytes(std::string_view text) {
  return reinterpret_cast<const unsigned char*>(text.data());
}

}  // namespace

absl::StatusOr<X25519KeyPair> X25519KeyPair::Generate() {
  std::unique_ptr<EVP_PKEY, KeyDeleter> key(EVP_PKEY_Q_keygen(nullptr, nullptr, "X25519"));
  if (key == nullptr) return absl::InternalError("X25519 key generation failed");
  return Adopt(std::move(key));
}

absl::StatusOr<X25519KeyPair> X25519KeyPair::FromPrivateKey(std::string_view private_key) {
  if (private_key.size() != kKeyBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("an X25519 private key is 32 bytes, not ", private_key.size()));
  }
  std::unique_ptr<EVP_PKEY, KeyDeleter> key(
      EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nullptr, Bytes(private_key), kKeyBytes));
  if (key == nullptr) return absl::InvalidArgumentError("not a usable X25519 private key");
  return Adopt(std::move(key));
}

absl::StatusOr<X25519KeyPair> X25519KeyPair::Adopt(std::unique_ptr<EVP_PKEY, KeyDeleter> key) {
  std::string public_key(kKeyBytes, '\0');
  size_t length = public_key.size();
  if (EVP_PKEY_get_raw_public_key(key.get(), reinterpret_cast<unsigned char*>(public_key.data()),
                                  &length) != 1) {
    return absl::InternalError("X25519 public key export failed");
  }
  return X25519KeyPair(std::move(key), std::move(public_key));
}

absl::StatusOr<std::string> X25519KeyPair::PrivateKey() const {
  std::string private_key(kKeyBytes, '\0');
  size_t length = private_key.size();
  if (EVP_PKEY_get_raw_private_key(key_.get(), reinterpret_cast<unsigned char*>(private_key.data()),
                                   &length) != 1) {
    return absl::InternalError("X25519 private key export failed");
  }
  return private_key;
}

absl::StatusOr<std::string> X25519KeyPair::Agree(std::string_view peer_public_key) const {
  if (peer_public_key.size() != kKeyBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("an X25519 public key is 32 bytes, not ", peer_public_key.size()));
  }
  std::unique_ptr<EVP_PKEY, KeyDeleter> peer(
      EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, nullptr, Bytes(peer_public_key), kKeyBytes));
  std::unique_ptr<EVP_PKEY_CTX, PkeyContextDeleter> context(
      EVP_PKEY_CTX_new_from_pkey(nullptr, key_.get(), nullptr));
  std::string secret(kKeyBytes, '\0');
  size_t length = secret.size();
  // OpenSSL refuses an all-zero result, which low-order peer keys produce.
  if (peer == nullptr || context == nullptr || EVP_PKEY_derive_init(context.get()) != 1 ||
      EVP_PKEY_derive_set_peer(context.get(), peer.get()) != 1 ||
      EVP_PKEY_derive(context.get(), reinterpret_cast<unsigned char*>(secret.data()), &length) !=
          1) {
    return absl::InvalidArgumentError("X25519 agreement with this peer key failed");
  }
  return secret;
}

absl::StatusOr<std::string> DerivePairKey(std::string_view shared_secret,
                                          std::string_view session_id, uint64_t round_id,
                                          std::string_view purpose, uint32_t participant_a,
                                          uint32_t participant_b) {
  std::string info = absl::StrCat("fedmoe/v1/", std::string(purpose), "/");
  AppendBigEndian(round_id, 8, info);
  AppendBigEndian(std::min(participant_a, participant_b), 4, info);
  AppendBigEndian(std::max(participant_a, participant_b), 4, info);
  return HkdfSha256(shared_secret, session_id, info, kKeyBytes);
}

absl::StatusOr<std::string> Seal(std::string_view key, std::string_view plaintext,
                                 std::string_view associated_data) {
  if (key.size() != kKeyBytes) return absl::InvalidArgumentError("AES-256-GCM takes 32-byte keys");
  std::string sealed(kNonceBytes + plaintext.size() + kTagBytes, '\0');
  auto* out = reinterpret_cast<unsigned char*>(sealed.data());
  if (RAND_bytes(out, kNonceBytes) != 1) {
    return absl::InternalError("OpenSSL's random generator failed");
  }
  std::unique_ptr<EVP_CIPHER_CTX, CipherDeleter> cipher(EVP_CIPHER_CTX_new());
  int length = 0;
  if (cipher == nullptr ||
      EVP_EncryptInit_ex(cipher.get(), EVP_aes_256_gcm(), nullptr, Bytes(key), out) != 1 ||
      EVP_EncryptUpdate(cipher.get(), nullptr, &length, Bytes(associated_data),
                        static_cast<int>(associated_data.size())) != 1 ||
      EVP_EncryptUpdate(cipher.get(), out + kNonceBytes, &length, Bytes(plaintext),
                        static_cast<int>(plaintext.size())) != 1 ||
      EVP_EncryptFinal_ex(cipher.get(), out + kNonceBytes + length, &length) != 1 ||
      EVP_CIPHER_CTX_ctrl(cipher.get(), EVP_CTRL_GCM_GET_TAG, kTagBytes,
                          out + kNonceBytes + plaintext.size()) != 1) {
    return absl::InternalError("AES-256-GCM encryption failed");
  }
  return sealed;
}

absl::StatusOr<std::string> Open(std::string_view key, std::string_view sealed,
                                 std::string_view associated_data) {
  if (key.size() != kKeyBytes) return absl::InvalidArgumentError("AES-256-GCM takes 32-byte keys");
  if (sealed.size() < kNonceBytes + kTagBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("a sealed message is at least 28 bytes (nonce and tag), not ", sealed.size()));
  }
  const size_t body = sealed.size() - kNonceBytes - kTagBytes;
  std::string plaintext(body, '\0');
  std::string tag(sealed.substr(kNonceBytes + body));
  std::unique_ptr<EVP_CIPHER_CTX, CipherDeleter> cipher(EVP_CIPHER_CTX_new());
  int length = 0;
  auto* out = reinterpret_cast<unsigned char*>(plaintext.data());
  if (cipher == nullptr ||
      EVP_DecryptInit_ex(cipher.get(), EVP_aes_256_gcm(), nullptr, Bytes(key), Bytes(sealed)) !=
          1 ||
      EVP_DecryptUpdate(cipher.get(), nullptr, &length, Bytes(associated_data),
                        static_cast<int>(associated_data.size())) != 1 ||
      EVP_DecryptUpdate(cipher.get(), out, &length, Bytes(sealed) + kNonceBytes,
                        static_cast<int>(body)) != 1 ||
      EVP_CIPHER_CTX_ctrl(cipher.get(), EVP_CTRL_GCM_SET_TAG, kTagBytes, tag.data()) != 1) {
    return absl::InternalError("AES-256-GCM decryption setup failed");
  }
  if (EVP_DecryptFinal_ex(cipher.get(), out + length, &length) != 1) {
    OPENSSL_cleanse(plaintext.data(), plaintext.size());
    return absl::UnauthenticatedError(
        "sealed message does not authenticate: tampered, or sealed for another key or context");
  }
  return plaintext;
}

}  // namespace fedmoe::secure_agg
