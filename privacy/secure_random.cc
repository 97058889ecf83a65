#include "privacy/secure_random.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <cstring>
#include <string>

namespace fedmoe::privacy {

absl::StatusOr<SecureRandom> SecureRandom::FromKey(const unsigned char* key) {
  std::unique_ptr<EVP_CIPHER_CTX, CipherDeleter> cipher(EVP_CIPHER_CTX_new());
  static constexpr unsigned char kZeroIv[16] = {};
  if (cipher == nullptr ||
      EVP_EncryptInit_ex(cipher.get(), EVP_aes_256_ctr(), nullptr, key, kZeroIv) != 1) {
    return absl::InternalError("AES-256-CTR setup failed");
  }
  return SecureRandom(std::move(cipher));
}

absl::StatusOr<SecureRandom> SecureRandom::FromSystem() {
  unsigned char key[32];
  if (RAND_priv_bytes(key, sizeof(key)) != 1) {
    return absl::InternalError("OpenSSL's random generator failed");
  }
  absl::StatusOr<SecureRandom> random = FromKey(key);
  OPENSSL_cleanse(key, sizeof(key));
  return random;
}

absl::StatusOr<SecureRandom> SecureRandom::FromSeed(std::string_view seed,
                                                    std::string_view purpose) {
  if (seed.size() != 32) {
    return absl::InvalidArgumentError("a seed is 32 bytes");
  }
  std::string material(purpose);
  material.push_back('\0');
  material.append(seed);
  unsigned char key[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(material.data()), material.size(), key);
  absl::StatusOr<SecureRandom> random = FromKey(key);
  OPENSSL_cleanse(key, sizeof(key));
  OPENSSL_cleanse(material.data(), material.size());
  return random;
}

void SecureRandom::Refill() {
  // The keystream is the encryption of zeros.
  std::memset(buffer_.data(), 0, sizeof(buffer_));
  int written = 0;
  auto* bytes = reinterpret_cast<unsigned char*>(buffer_.data());
  EVP_EncryptUpdate(cipher_.get(), bytes, &written, bytes, static_cast<int>(sizeof(buffer_)));
  position_ = 0;
}

namespace {
__extension__ using Uint128 = unsigned __int128;
}  // namespace

uint64_t SecureRandom::UniformBelow(uint64_t bound) {
  // Lemire's multiply-and-reject: unbiased, and almost never rejects.
  uint64_t x = (*this)();
  Uint128 product = static_cast<Uint128>(x) * bound;
  auto low = static_cast<uint64_t>(product);
  if (low < bound) {
    const uint64_t threshold = (0 - bound) % bound;
    while (low < threshold) {
      x = (*this)();
      product = static_cast<Uint128>(x) * bound;
      low = static_cast<uint64_t>(product);
    }
  }
  return static_cast<uint64_t>(product >> 64);
}

}  // namespace fedmoe::privacy
