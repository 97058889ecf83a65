#include "privacy/secure_random.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <string>

namespace fedmoe::privacy {

absl::StatusOr<SecureRandom> SecureRandom::FromKey(std::span<const unsigned char> key) {
  std::unique_ptr<EVP_CIPHER_CTX, CipherDeleter> cipher(EVP_CIPHER_CTX_new());
  static constexpr unsigned char kZeroIv[16] = {};
  const bool short_key = key.size() == kForkKeyBytes;
  if (cipher == nullptr ||
      EVP_EncryptInit_ex(cipher.get(), short_key ? EVP_aes_128_ctr() : EVP_aes_256_ctr(), nullptr,
                         key.data(), kZeroIv) != 1) {
    return absl::InternalError(short_key ? "AES-128-CTR setup failed" : "AES-256-CTR setup failed");
  }
  return SecureRandom(std::move(cipher));
}

absl::StatusOr<SecureRandom> SecureRandom::Fork() {
  std::array<unsigned char, kForkKeyBytes> key;
  for (size_t half = 0; half < 2; ++half) {
    const uint64_t word = (*this)();
    std::memcpy(key.data() + 8 * half, &word, 8);
  }
  if (!status().ok()) {
    OPENSSL_cleanse(key.data(), key.size());
    return status();
  }
  absl::StatusOr<SecureRandom> child = FromKey(key);
  OPENSSL_cleanse(key.data(), key.size());
  return child;
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

void SecureRandom::WriteKeystream(std::span<uint64_t> words) {
  // The keystream is the encryption of zeros; CTR mode continues it across calls.
  constexpr size_t kChunkWords = size_t{1} << 16;
  for (size_t done = 0; done < words.size(); done += kChunkWords) {
    const std::span<uint64_t> chunk =
        words.subspan(done, std::min(kChunkWords, words.size() - done));
    std::memset(chunk.data(), 0, chunk.size_bytes());
    auto* bytes = reinterpret_cast<unsigned char*>(chunk.data());
    int written = 0;
    if (EVP_EncryptUpdate(cipher_.get(), bytes, &written, bytes,
                          static_cast<int>(chunk.size_bytes())) != 1 ||
        static_cast<size_t>(written) != chunk.size_bytes()) {
      failed_ = true;
    }
  }
}

absl::Status SecureRandom::status() const {
  if (!failed_) return absl::OkStatus();
  return absl::InternalError(
      "OpenSSL's AES-CTR keystream failed: the random bits drawn since are not random");
}

void SecureRandom::BreakCipherForTesting() {
  EVP_CIPHER_CTX_reset(cipher_.get());
  position_ = kBufferWords;
}

void SecureRandom::Refill() {
  WriteKeystream(buffer_);
  position_ = 0;
}

void SecureRandom::Fill(std::span<uint64_t> words) {
  const size_t done = std::min(words.size(), kBufferWords - position_);
  std::copy_n(buffer_.begin() + static_cast<std::ptrdiff_t>(position_), done, words.begin());
  position_ += done;
  // The rest straight from the cipher, leaving the buffer empty: the same words as refilling
  // and draining it.
  WriteKeystream(words.subspan(done));
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
