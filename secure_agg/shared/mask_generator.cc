#include "secure_agg/shared/mask_generator.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/kdf.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "secure_agg/shared/hkdf.h"

namespace fedmoe::secure_agg {
namespace {

constexpr char kInfoLabel[] = "fedmoe/v1/prg";
// Values expanded per EVP call: large enough to amortise the call, small enough for L1/L2.
constexpr size_t kChunkValues = 8192;

// HKDF-SHA256 → 16-byte AES key ‖ 16-byte initial counter block.
absl::StatusOr<std::string> DeriveKeyAndCounter(std::string_view seed, const MaskDomain& domain) {
  std::string info(kInfoLabel);
  AppendBigEndian(domain.round_id, 8, info);
  info.push_back(static_cast<char>(domain.purpose));
  AppendBigEndian(domain.first_participant, 4, info);
  AppendBigEndian(domain.second_participant, 4, info);
  AppendBigEndian(domain.length, 8, info);
  AppendBigEndian(static_cast<uint64_t>(domain.bits), 1, info);

  return HkdfSha256(seed, domain.session_id, info, 32);
}

}  // namespace

absl::StatusOr<MaskGenerator> MaskGenerator::Create(std::string_view seed,
                                                    const MaskDomain& domain) {
  if (seed.size() != 32) {
    return absl::InvalidArgumentError(absl::StrCat("a mask seed is 32 bytes, not ", seed.size()));
  }
  if (domain.session_id.size() != 32) {
    return absl::InvalidArgumentError(
        absl::StrCat("a session id is 32 bytes, not ", domain.session_id.size()));
  }
  if (domain.bits < 16 || domain.bits > 62) {
    return absl::InvalidArgumentError(
        absl::StrCat("ring bits must be between 16 and 62, not ", domain.bits));
  }
  absl::StatusOr<std::string> key_and_counter = DeriveKeyAndCounter(seed, domain);
  if (!key_and_counter.ok()) return key_and_counter.status();
  std::unique_ptr<EVP_CIPHER_CTX, CipherDeleter> cipher(EVP_CIPHER_CTX_new());
  const auto* material = reinterpret_cast<const unsigned char*>(key_and_counter->data());
  const int initialised = cipher == nullptr ? 0
                                            : EVP_EncryptInit_ex(cipher.get(), EVP_aes_128_ctr(),
                                                                 nullptr, material, material + 16);
  OPENSSL_cleanse(key_and_counter->data(), key_and_counter->size());
  if (initialised != 1) return absl::InternalError("AES-128-CTR setup failed");
  return MaskGenerator(std::move(cipher), domain);
}

absl::Status MaskGenerator::Add(std::span<uint64_t> values) { return Apply(values, false); }

absl::Status MaskGenerator::Subtract(std::span<uint64_t> values) { return Apply(values, true); }

absl::Status MaskGenerator::Apply(std::span<uint64_t> values, bool subtract) {
  if (values.size() > length_ - position_) {
    return absl::OutOfRangeError(absl::StrCat("mask of ", length_, " values has ",
                                              length_ - position_, " left, not ", values.size()));
  }
  const uint64_t mask = (uint64_t{1} << bits_) - 1;
  const size_t word_bytes = bits_ <= 32 ? 4 : 8;
  // One scratch buffer per thread, not per generator: a client holds a generator per
  // neighbour, and only one expands at a time.
  thread_local std::vector<unsigned char> keystream;
  keystream.resize(kChunkValues * 8);
  for (size_t done = 0; done < values.size();) {
    const size_t count = std::min(kChunkValues, values.size() - done);
    const size_t bytes = count * word_bytes;
    // The keystream is the encryption of zeros.
    std::memset(keystream.data(), 0, bytes);
    int written = 0;
    if (EVP_EncryptUpdate(cipher_.get(), keystream.data(), &written, keystream.data(),
                          static_cast<int>(bytes)) != 1 ||
        static_cast<size_t>(written) != bytes) {
      return absl::InternalError("AES-128-CTR keystream failed");
    }
    uint64_t* out = values.data() + done;
    if (word_bytes == 4) {
      for (size_t i = 0; i < count; ++i) {
        uint32_t word = 0;
        std::memcpy(&word, keystream.data() + 4 * i, 4);
        out[i] = (subtract ? out[i] - word : out[i] + word) & mask;
      }
    } else {
      for (size_t i = 0; i < count; ++i) {
        uint64_t word = 0;
        std::memcpy(&word, keystream.data() + 8 * i, 8);
        out[i] = (subtract ? out[i] - word : out[i] + word) & mask;
      }
    }
    done += count;
  }
  position_ += values.size();
  return absl::OkStatus();
}

absl::StatusOr<std::string> Aes128CtrKeystream(std::string_view key, std::string_view counter,
                                               size_t bytes) {
  if (key.size() != 16 || counter.size() != 16) {
    return absl::InvalidArgumentError("AES-128-CTR takes a 16-byte key and counter block");
  }
  std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> cipher(EVP_CIPHER_CTX_new(),
                                                                         &EVP_CIPHER_CTX_free);
  std::string stream(bytes, '\0');
  int written = 0;
  auto* data = reinterpret_cast<unsigned char*>(stream.data());
  if (cipher == nullptr ||
      EVP_EncryptInit_ex(cipher.get(), EVP_aes_128_ctr(), nullptr,
                         reinterpret_cast<const unsigned char*>(key.data()),
                         reinterpret_cast<const unsigned char*>(counter.data())) != 1 ||
      EVP_EncryptUpdate(cipher.get(), data, &written, data, static_cast<int>(bytes)) != 1 ||
      static_cast<size_t>(written) != bytes) {
    return absl::InternalError("AES-128-CTR keystream failed");
  }
  return stream;
}

}  // namespace fedmoe::secure_agg
