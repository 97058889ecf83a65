#include "privacy/ring_encoder.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <thread>

#include "absl/strings/str_cat.h"
#include "privacy/noise.h"

namespace fedmoe::privacy {
namespace {

// Conditional randomized rounding tries again while the rounded norm exceeds the bound; with
// β = e^-0.5 a retry is rare, and this many in a row means the parameters are wrong.
constexpr int kMaxRoundingAttempts = 1000;

uint64_t RingMask(int bits) { return bits == 64 ? ~uint64_t{0} : (uint64_t{1} << bits) - 1; }

// Below this many values a second thread costs more than it saves.
constexpr size_t kMinValuesPerShard = size_t{1} << 15;

size_t ShardCount(size_t values) {
  const size_t cores = std::max(1U, std::thread::hardware_concurrency());
  return std::clamp<size_t>(values / kMinValuesPerShard, 1, std::min<size_t>(cores, 16));
}

// Runs work(0..shards-1), shard 0 on the calling thread.
template <typename Work>
void RunShards(size_t shards, Work& work) {
  std::vector<std::thread> threads;
  threads.reserve(shards - 1);
  for (size_t s = 1; s < shards; ++s) threads.emplace_back([&work, s] { work(s); });
  work(0);
  for (std::thread& thread : threads) thread.join();
}

}  // namespace

double ClipToL2Norm(std::span<float> values, double clip_norm) {
  double squared = 0;
  for (float value : values) squared += static_cast<double>(value) * value;
  const double norm = std::sqrt(squared);
  if (norm > clip_norm && norm > 0) {
    const auto factor = static_cast<float>(clip_norm / norm);
    for (float& value : values) value *= factor;
  }
  return norm;
}

double RoundedNormBound(double norm, size_t dimension, double beta) {
  const auto d = static_cast<double>(dimension);
  const double unconditional = norm + std::sqrt(d);
  if (beta <= 0.0) return unconditional;
  const double conditional_squared =
      norm * norm + d / 4.0 + std::sqrt(2.0 * std::log(1.0 / beta)) * (norm + std::sqrt(d) / 2.0);
  return std::min(unconditional, std::sqrt(conditional_squared));
}

absl::StatusOr<RingEncoder> RingEncoder::Create(size_t dimension, RingEncoding encoding) {
  if (!(encoding.clip_norm > 0) || !(encoding.scale > 0)) {
    return absl::InvalidArgumentError("clip norm and scale must be positive");
  }
  if (!(encoding.rounding_beta >= 0 && encoding.rounding_beta < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("rounding beta must be in [0, 1), not ", encoding.rounding_beta));
  }
  if (encoding.ring_bits < 16 || encoding.ring_bits > 62) {
    return absl::InvalidArgumentError(
        absl::StrCat("ring bits must be between 16 and 62, not ", encoding.ring_bits));
  }
  if (encoding.mechanism != NoiseMechanism::kNone && !(encoding.local_noise_variance > 0)) {
    return absl::InvalidArgumentError("a noise mechanism needs a positive noise variance");
  }
  absl::StatusOr<RandomizedHadamard> rotation =
      RandomizedHadamard::Create(dimension, encoding.rotation_seed);
  if (!rotation.ok()) return rotation.status();
  return RingEncoder(std::move(*rotation), std::move(encoding));
}

absl::StatusOr<std::vector<uint64_t>> RingEncoder::Encode(std::span<const float> update,
                                                          SecureRandom& random) const {
  if (update.size() != dimension()) {
    return absl::InvalidArgumentError(
        absl::StrCat("update has ", update.size(), " values; the encoder expects ", dimension()));
  }
  // Clipping and scaling by γ are one multiplier, folded into the rotation's first pass.
  double squared = 0;
  for (float value : update) squared += static_cast<double>(value) * value;
  const double norm = std::sqrt(squared);
  const double clip = norm > encoding_.clip_norm ? encoding_.clip_norm / norm : 1.0;
  std::vector<double> rotated(encoded_dimension());
  if (absl::Status status = rotation_.RotateScaled(update, clip * encoding_.scale, rotated);
      !status.ok()) {
    return status;
  }
  const double bound =
      RoundedNormBound(norm * clip * encoding_.scale, rotated.size(), encoding_.rounding_beta);

  // Rounding and noise run in shards on all cores, each shard drawing from its own stream
  // keyed by 32 bytes of the caller's stream.
  const size_t size = rotated.size();
  const size_t shards = ShardCount(size);
  std::vector<SecureRandom> streams;
  streams.reserve(shards);
  for (size_t s = 0; s < shards; ++s) {
    std::string seed(32, '\0');
    for (size_t w = 0; w < 4; ++w) {
      const uint64_t word = random();
      std::memcpy(seed.data() + 8 * w, &word, 8);
    }
    absl::StatusOr<SecureRandom> stream = SecureRandom::FromSeed(seed, "fedmoe/v1/encode-shard");
    OPENSSL_cleanse(seed.data(), seed.size());
    if (!stream.ok()) return stream.status();
    streams.push_back(std::move(*stream));
  }
  auto shard_begin = [&](size_t s) { return s * size / shards; };

  // Rounding needs no cryptographic precision: 32 random bits per coordinate decide it, two
  // coordinates per 64-bit draw. (The privacy guarantee rests on the norm bound, which is
  // checked, not on the rounding probabilities.)
  // Rounded values are kept as two's-complement words in the output, which noise and the
  // reduction mod 2^b then update in place.
  std::vector<uint64_t> encoded(size);
  std::vector<double> shard_squared(shards);
  auto round_shard = [&](size_t s) {
    SecureRandom& stream = streams[s];
    double rounded_squared = 0;
    uint64_t bits = 0;
    for (size_t i = shard_begin(s), k = 0; i < shard_begin(s + 1); ++i, ++k) {
      if (k % 2 == 0) bits = stream();
      const auto uniform = static_cast<double>((bits >> (32 * (k % 2))) & 0xffffffffU);
      const double floor = std::floor(rotated[i]);
      // Up with probability equal to the fractional part: unbiased.
      const bool up = uniform < (rotated[i] - floor) * 0x1.0p32;
      const int64_t value = static_cast<int64_t>(floor) + (up ? 1 : 0);
      encoded[i] = static_cast<uint64_t>(value);
      rounded_squared += static_cast<double>(value) * static_cast<double>(value);
    }
    shard_squared[s] = rounded_squared;
  };
  bool within_bound = false;
  for (int attempt = 0; attempt < kMaxRoundingAttempts && !within_bound; ++attempt) {
    RunShards(shards, round_shard);
    const double rounded_squared = std::accumulate(shard_squared.begin(), shard_squared.end(), 0.0);
    within_bound = rounded_squared <= bound * bound;
  }
  if (!within_bound) {
    return absl::InternalError(
        "conditional randomized rounding never met its norm bound: check scale and beta");
  }

  const uint64_t mask = RingMask(encoding_.ring_bits);
  const DiscreteGaussianSampler discrete_gaussian(
      encoding_.mechanism == NoiseMechanism::kDiscreteGaussian ? encoding_.local_noise_variance
                                                               : 1.0);
  auto noise_shard = [&](size_t s) {
    SecureRandom& stream = streams[s];
    for (size_t i = shard_begin(s); i < shard_begin(s + 1); ++i) {
      auto value = static_cast<int64_t>(encoded[i]);
      switch (encoding_.mechanism) {
        case NoiseMechanism::kNone:
          break;
        case NoiseMechanism::kDiscreteGaussian:
          value += discrete_gaussian.Sample(stream);
          break;
        case NoiseMechanism::kSkellam:
          value += SampleSkellam(encoding_.local_noise_variance / 2.0, stream);
          break;
      }
      // Two's complement makes the reduction mod 2^b a mask, for negative values too.
      encoded[i] = static_cast<uint64_t>(value) & mask;
    }
  };
  RunShards(shards, noise_shard);
  return encoded;
}

absl::StatusOr<std::vector<double>> RingEncoder::DecodeSum(std::span<const uint64_t> sum) const {
  if (sum.size() != encoded_dimension()) {
    return absl::InvalidArgumentError(
        absl::StrCat("sum has ", sum.size(), " values; encodings have ", encoded_dimension()));
  }
  const int bits = encoding_.ring_bits;
  const uint64_t mask = RingMask(bits);
  const uint64_t half = uint64_t{1} << (bits - 1);
  std::vector<double> centred(sum.size());
  for (size_t i = 0; i < sum.size(); ++i) {
    const uint64_t value = sum[i] & mask;
    const auto signed_value = value >= half ? static_cast<int64_t>(value) - (int64_t{1} << bits)
                                            : static_cast<int64_t>(value);
    centred[i] = static_cast<double>(signed_value) / encoding_.scale;
  }
  if (absl::Status status = rotation_.UnrotateInPlace(centred); !status.ok()) return status;
  return centred;
}

absl::Status RingEncoder::AddInRing(std::span<uint64_t> sum, std::span<const uint64_t> values,
                                    int bits) {
  if (sum.size() != values.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("adding ", values.size(), " values to a sum of ", sum.size()));
  }
  const uint64_t mask = RingMask(bits);
  for (size_t i = 0; i < sum.size(); ++i) sum[i] = (sum[i] + values[i]) & mask;
  return absl::OkStatus();
}

}  // namespace fedmoe::privacy
