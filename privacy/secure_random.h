// Random bits for the privacy mechanisms: the AES-128-CTR keystream of OpenSSL's EVP,
// keyed either from OpenSSL's CSPRNG (the noise and rounding of a real update) or from a
// 32-byte seed and a purpose string (the public rotation signs of a round, and reproducible
// tests). A composition of OpenSSL primitives, not a generator of our own. AES-128 rather
// than AES-256: 128-bit keys are the security level of the masks' own AES-128-CTR streams,
// and the noise of a 1M-value update takes about 10 MB of keystream, a quarter faster so.
//
// Satisfies UniformRandomBitGenerator, so <random> distributions can draw from it.
#ifndef FEDMOE_PRIVACY_SECURE_RANDOM_H_
#define FEDMOE_PRIVACY_SECURE_RANDOM_H_

#include <openssl/evp.h>

#include <array>
#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <string_view>

#include "absl/status/statusor.h"

namespace fedmoe::privacy {

class SecureRandom {
 public:
  using result_type = uint64_t;

  // Keyed from RAND_priv_bytes: unpredictable to everyone, this process included.
  static absl::StatusOr<SecureRandom> FromSystem();
  // Keyed by the first 16 bytes of SHA-256(purpose ‖ 0 ‖ seed), so one seed gives independent
  // streams per purpose.
  static absl::StatusOr<SecureRandom> FromSeed(std::string_view seed, std::string_view purpose);

  SecureRandom(SecureRandom&&) noexcept = default;
  SecureRandom& operator=(SecureRandom&&) noexcept = default;

  static constexpr result_type min() { return 0; }
  static constexpr result_type max() { return std::numeric_limits<result_type>::max(); }
  // Inline: the samplers call these several times per value.
  result_type operator()() {
    if (position_ == kBufferWords) Refill();
    return buffer_[position_++];
  }

  // words[i] = (*this)(), for every i: the same stream, written in bulk.
  void Fill(std::span<uint64_t> words);

  // Uniform in [0, 1), with 53 random bits.
  double UniformDouble() { return static_cast<double>((*this)() >> 11) * 0x1.0p-53; }
  // Uniform in [0, bound), without modulo bias. bound ≥ 1.
  uint64_t UniformBelow(uint64_t bound);
  bool Bernoulli(double probability) { return UniformDouble() < probability; }

 private:
  static constexpr size_t kKeyBytes = 16;
  struct CipherDeleter {
    void operator()(EVP_CIPHER_CTX* context) const { EVP_CIPHER_CTX_free(context); }
  };
  explicit SecureRandom(std::unique_ptr<EVP_CIPHER_CTX, CipherDeleter> cipher)
      : cipher_(std::move(cipher)) {}
  static absl::StatusOr<SecureRandom> FromKey(const unsigned char* key);
  void Refill();
  void WriteKeystream(std::span<uint64_t> words);

  static constexpr size_t kBufferWords = 512;
  std::unique_ptr<EVP_CIPHER_CTX, CipherDeleter> cipher_;
  std::array<uint64_t, kBufferWords> buffer_{};
  size_t position_ = kBufferWords;
};

}  // namespace fedmoe::privacy

#endif  // FEDMOE_PRIVACY_SECURE_RANDOM_H_
