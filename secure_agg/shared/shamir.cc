#include "secure_agg/shared/shamir.h"

#include <openssl/rand.h>

#include <array>
#include <set>

#include "absl/strings/str_cat.h"
#include "secure_agg/shared/hkdf.h"

namespace fedmoe::secure_agg {
namespace {

__extension__ using Uint128 = unsigned __int128;

constexpr int kLimbs = 5;
// Bytes of the secret in each limb, big-endian: 7 + 7 + 7 + 7 + 4 = 32.
constexpr std::array<int, kLimbs> kLimbBytes = {7, 7, 7, 7, 4};

uint64_t Reduce(Uint128 value) {
  // 2^61 ≡ 1 (mod p): fold the high bits onto the low ones, twice at most, then subtract.
  uint64_t folded =
      static_cast<uint64_t>(value & Field61::kModulus) + static_cast<uint64_t>(value >> 61);
  folded = (folded & Field61::kModulus) + (folded >> 61);
  return folded >= Field61::kModulus ? folded - Field61::kModulus : folded;
}

absl::StatusOr<uint64_t> RandomElement() {
  while (true) {
    uint64_t word = 0;
    if (RAND_bytes(reinterpret_cast<unsigned char*>(&word), sizeof(word)) != 1) {
      return absl::InternalError("OpenSSL's random generator failed");
    }
    word &= Field61::kModulus;
    if (word != Field61::kModulus) return word;  // Uniform on [0, p).
  }
}

std::array<uint64_t, kLimbs> SplitSecret(std::string_view secret) {
  std::array<uint64_t, kLimbs> limbs{};
  size_t offset = 0;
  for (int limb = 0; limb < kLimbs; ++limb) {
    for (int i = 0; i < kLimbBytes[limb]; ++i) {
      limbs[limb] = (limbs[limb] << 8) | static_cast<unsigned char>(secret[offset++]);
    }
  }
  return limbs;
}

absl::StatusOr<std::array<uint64_t, kLimbs>> ParseShare(const Share& share) {
  if (share.value.size() != kShamirShareBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("a share is ", kShamirShareBytes, " bytes, not ", share.value.size()));
  }
  std::array<uint64_t, kLimbs> limbs{};
  for (int limb = 0; limb < kLimbs; ++limb) {
    for (int i = 0; i < 8; ++i) {
      limbs[limb] = (limbs[limb] << 8) | static_cast<unsigned char>(share.value[8 * limb + i]);
    }
    if (limbs[limb] >= Field61::kModulus) {
      return absl::InvalidArgumentError("a share holds a value outside the field");
    }
  }
  return limbs;
}

absl::Status CheckPoints(std::span<const uint64_t> xs) {
  std::set<uint64_t> seen;
  for (uint64_t x : xs) {
    if (x == 0 || x >= Field61::kModulus) {
      return absl::InvalidArgumentError(absl::StrCat("share point ", x, " is not in [1, p)"));
    }
    if (!seen.insert(x).second) {
      return absl::InvalidArgumentError(absl::StrCat("share point ", x, " appears twice"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

uint64_t Field61::Add(uint64_t a, uint64_t b) {
  const uint64_t sum = a + b;
  return sum >= kModulus ? sum - kModulus : sum;
}

uint64_t Field61::Subtract(uint64_t a, uint64_t b) { return a >= b ? a - b : a + kModulus - b; }

uint64_t Field61::Multiply(uint64_t a, uint64_t b) { return Reduce(static_cast<Uint128>(a) * b); }

uint64_t Field61::Inverse(uint64_t a) {
  // Fermat: a^(p-2).
  uint64_t result = 1;
  uint64_t base = a;
  for (uint64_t exponent = kModulus - 2; exponent != 0; exponent >>= 1) {
    if (exponent & 1) result = Multiply(result, base);
    base = Multiply(base, base);
  }
  return result;
}

absl::StatusOr<std::vector<Share>> ShareSecret(std::string_view secret, int threshold,
                                               std::span<const uint64_t> holders) {
  if (secret.size() != kShamirSecretBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("a shared secret is 32 bytes, not ", secret.size()));
  }
  if (threshold < 1 || static_cast<size_t>(threshold) > holders.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("threshold ", threshold, " for ", holders.size(), " holders"));
  }
  if (absl::Status status = CheckPoints(holders); !status.ok()) return status;
  const std::array<uint64_t, kLimbs> limbs = SplitSecret(secret);
  // coefficients[limb][0] is the secret limb; the rest are random.
  std::vector<std::array<uint64_t, kLimbs>> coefficients(static_cast<size_t>(threshold));
  coefficients[0] = limbs;
  for (size_t degree = 1; degree < coefficients.size(); ++degree) {
    for (int limb = 0; limb < kLimbs; ++limb) {
      absl::StatusOr<uint64_t> random = RandomElement();
      if (!random.ok()) return random.status();
      coefficients[degree][limb] = *random;
    }
  }
  std::vector<Share> shares;
  shares.reserve(holders.size());
  for (uint64_t x : holders) {
    Share share{x, {}};
    share.value.reserve(kShamirShareBytes);
    for (int limb = 0; limb < kLimbs; ++limb) {
      // Horner's rule from the highest degree down.
      uint64_t y = 0;
      for (size_t degree = coefficients.size(); degree-- > 0;) {
        y = Field61::Add(Field61::Multiply(y, x), coefficients[degree][limb]);
      }
      AppendBigEndian(y, 8, share.value);
    }
    shares.push_back(std::move(share));
  }
  return shares;
}

absl::StatusOr<std::vector<uint64_t>> LagrangeAtZero(std::span<const uint64_t> xs) {
  if (absl::Status status = CheckPoints(xs); !status.ok()) return status;
  std::vector<uint64_t> coefficients(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) {
    // λ_i = Π_{j≠i} x_j / (x_j − x_i)
    uint64_t numerator = 1;
    uint64_t denominator = 1;
    for (size_t j = 0; j < xs.size(); ++j) {
      if (j == i) continue;
      numerator = Field61::Multiply(numerator, xs[j]);
      denominator = Field61::Multiply(denominator, Field61::Subtract(xs[j], xs[i]));
    }
    coefficients[i] = Field61::Multiply(numerator, Field61::Inverse(denominator));
  }
  return coefficients;
}

absl::StatusOr<std::string> RecoverSecret(std::span<const Share> shares,
                                          std::span<const uint64_t> coefficients) {
  if (shares.size() != coefficients.size() || shares.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(shares.size(), " shares for ", coefficients.size(), " coefficients"));
  }
  std::array<uint64_t, kLimbs> limbs{};
  for (size_t i = 0; i < shares.size(); ++i) {
    absl::StatusOr<std::array<uint64_t, kLimbs>> values = ParseShare(shares[i]);
    if (!values.ok()) return values.status();
    for (int limb = 0; limb < kLimbs; ++limb) {
      limbs[limb] = Field61::Add(limbs[limb], Field61::Multiply(coefficients[i], (*values)[limb]));
    }
  }
  std::string secret;
  secret.reserve(kShamirSecretBytes);
  for (int limb = 0; limb < kLimbs; ++limb) {
    const int bits = 8 * kLimbBytes[limb];
    if ((limbs[limb] >> bits) != 0) {
      // A limb that does not fit its bytes means the shares were not of one secret.
      return absl::DataLossError("the shares do not recover a secret: they are inconsistent");
    }
    for (int i = kLimbBytes[limb] - 1; i >= 0; --i) {
      secret.push_back(static_cast<char>((limbs[limb] >> (8 * i)) & 0xff));
    }
  }
  return secret;
}

absl::StatusOr<std::string> RecoverSecret(std::span<const Share> shares, int threshold) {
  if (threshold < 1 || shares.size() < static_cast<size_t>(threshold)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "recovering needs ", threshold, " shares, and only ", shares.size(), " are here"));
  }
  const std::span<const Share> used = shares.first(static_cast<size_t>(threshold));
  std::vector<uint64_t> xs;
  xs.reserve(used.size());
  for (const Share& share : used) xs.push_back(share.x);
  absl::StatusOr<std::vector<uint64_t>> coefficients = LagrangeAtZero(xs);
  if (!coefficients.ok()) return coefficients.status();
  return RecoverSecret(used, *coefficients);
}

}  // namespace fedmoe::secure_agg
