// Random bits for the privacy mechanisms: the AES-256-CTR keystream of OpenSSL's EVP, keyed
// either from OpenSSL's CSPRNG (the noise and rounding of a real update) or from a 32-byte
// seed and a purpose string (the public rotation signs of a round, which every client and the
// coordinator must derive alike, and reproducible tests), and AES-128-CTR forks of such a
// stream for bulk private bits. A composition of OpenSSL primitives, not a generator of our
// own.
//
// Satisfies UniformRandomBitGenerator, so <random> distributions can draw from it. A draw cannot
// return an error, so a keystream failure is sticky instead: status() reports it from then on,
// and every consumer (encoding, central noise, rotation signs, forks) checks it before its
// output is used. The words drawn after a failure are not random and must be discarded.
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
  // Keyed by SHA-256(purpose ‖ 0 ‖ seed), so one seed gives independent streams per purpose.
  // Part of the protocol where the seed is public (the rotation signs): do not change it.
  static absl::StatusOr<SecureRandom> FromSeed(std::string_view seed, std::string_view purpose);

  // A stream of its own, AES-128-CTR keyed by the next 16 bytes of this one: for the bulk
  // private bits of an encoding (about 10 MB for a 1M-value update), where a 128-bit key is the
  // security level of the masks' own AES-128-CTR and a quarter faster than AES-256.
  absl::StatusOr<SecureRandom> Fork();

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

  // Ok while every keystream block so far came from the cipher; Internal after a failure, for
  // good.
  absl::Status status() const;

  // Resets the cipher context, so that the next keystream block fails in OpenSSL itself: for
  // tests of the failure path, which real hardware does not produce on demand.
  void BreakCipherForTesting();

  // Uniform in [0, 1), with 53 random bits.
  double UniformDouble() { return static_cast<double>((*this)() >> 11) * 0x1.0p-53; }
  // Uniform in [0, bound), without modulo bias. bound ≥ 1.
  uint64_t UniformBelow(uint64_t bound);
  bool Bernoulli(double probability) { return UniformDouble() < probability; }

 private:
  static constexpr size_t kForkKeyBytes = 16;
  struct CipherDeleter {
    void operator()(EVP_CIPHER_CTX* context) const { EVP_CIPHER_CTX_free(context); }
  };
  explicit SecureRandom(std::unique_ptr<EVP_CIPHER_CTX, CipherDeleter> cipher)
      : cipher_(std::move(cipher)) {}
  // AES-128-CTR for a 16-byte key, AES-256-CTR for a 32-byte one.
  static absl::StatusOr<SecureRandom> FromKey(std::span<const unsigned char> key);
  void Refill();
  void WriteKeystream(std::span<uint64_t> words);

  static constexpr size_t kBufferWords = 512;
  std::unique_ptr<EVP_CIPHER_CTX, CipherDeleter> cipher_;
  std::array<uint64_t, kBufferWords> buffer_{};
  size_t position_ = kBufferWords;
  bool failed_ = false;
};

}  // namespace fedmoe::privacy

#endif  // FEDMOE_PRIVACY_SECURE_RANDOM_H_
