// The pseudo-random masks of SecAgg+ (DESIGN §3): y = x + PRG(b) + Σ ±PRG(s_uv) mod 2^bits.
//
// A mask is the AES-128-CTR keystream (OpenSSL EVP, AES-NI where the CPU has it) under a key
// and initial counter derived by HKDF-SHA256 from the 32-byte seed (a self-mask seed b, or a
// pairwise X25519 agreement s_uv), salted with the session id, and bound by the info string to
// the round, the purpose, both participants, the vector length and the bit width. A seed can
// therefore never produce the same keystream for two different uses. The keystream is read in
// 32-bit words for bits ≤ 32 and 64-bit words above; keeping the low `bits` bits of a uniform
// word is exactly uniform in Z_(2^bits).
//
// A generator streams: each Apply() continues where the last stopped, so a vector can be masked
// or unmasked chunk by chunk without holding the whole mask.
#ifndef FEDMOE_SECURE_AGG_SHARED_MASK_GENERATOR_H_
#define FEDMOE_SECURE_AGG_SHARED_MASK_GENERATOR_H_

#include <openssl/evp.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace fedmoe::secure_agg {

enum class MaskPurpose : uint8_t { kSelfMask = 1, kPairwiseMask = 2 };

struct MaskDomain {
  // 32 bytes that bind the mask to one round's session (SecAggParameters.session_id).
  std::string session_id;
  uint64_t round_id = 0;
  MaskPurpose purpose = MaskPurpose::kSelfMask;
  // The participant whose mask this is and, for a pairwise mask, the peer; the smaller id comes
  // first for pairwise masks, so both ends derive the same stream.
  uint32_t first_participant = 0;
  uint32_t second_participant = 0;
  // Values in the vector, and the ring's bit width (16..62).
  uint64_t length = 0;
  int bits = 32;
};

class MaskGenerator {
 public:
  static absl::StatusOr<MaskGenerator> Create(std::string_view seed, const MaskDomain& domain);

  MaskGenerator(MaskGenerator&&) noexcept = default;
  MaskGenerator& operator=(MaskGenerator&&) noexcept = default;

  // values[i] = values[i] ± mask[next + i] mod 2^bits, for the next values.size() mask values.
  // OutOfRange past the domain's length.
  absl::Status Add(std::span<uint64_t> values);
  absl::Status Subtract(std::span<uint64_t> values);

  uint64_t position() const { return position_; }

 private:
  struct CipherDeleter {
    void operator()(EVP_CIPHER_CTX* context) const { EVP_CIPHER_CTX_free(context); }
  };
  MaskGenerator(std::unique_ptr<EVP_CIPHER_CTX, CipherDeleter> cipher, const MaskDomain& domain)
      : cipher_(std::move(cipher)), length_(domain.length), bits_(domain.bits) {}
  absl::Status Apply(std::span<uint64_t> values, bool subtract);

  std::unique_ptr<EVP_CIPHER_CTX, CipherDeleter> cipher_;
  uint64_t length_;
  int bits_;
  uint64_t position_ = 0;
};

// The raw AES-128-CTR keystream for a key and 16-byte initial counter block, for known-answer
// tests against NIST SP 800-38A.
absl::StatusOr<std::string> Aes128CtrKeystream(std::string_view key, std::string_view counter,
                                               size_t bytes);

}  // namespace fedmoe::secure_agg

#endif  // FEDMOE_SECURE_AGG_SHARED_MASK_GENERATOR_H_
