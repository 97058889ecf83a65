#include "privacy/ring_encoder.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <array>
#include <barrier>
#include <bit>
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

// [begin, end) of shard s when `count` items are split in `shards`.
struct Range {
  size_t begin;
  size_t end;
};
Range ShardOf(size_t s, size_t shards, size_t count) {
  return {s * count / shards, (s + 1) * count / shards};
}

// In eight partial sums, so that the loop vectorises without reassociating additions.
template <typename T>
double SumOfSquares(std::span<const T> values) {
  constexpr size_t kLanes = 8;
  std::array<double, kLanes> partial{};
  const size_t whole = values.size() - values.size() % kLanes;
  for (size_t i = 0; i < whole; i += kLanes) {
    for (size_t lane = 0; lane < kLanes; ++lane) {
      const auto value = static_cast<double>(values[i + lane]);
      partial[lane] += value * value;
    }
  }
  for (size_t i = whole; i < values.size(); ++i) {
    partial[0] += static_cast<double>(values[i]) * static_cast<double>(values[i]);
  }
  return std::accumulate(partial.begin(), partial.end(), 0.0);
}

// The rotation runs in two sweeps over memory: the levels inside blocks of this many
// coordinates (16 KiB, in L1 cache), then the levels across blocks, a slab of columns at a
// time copied into a scratch of about kSlabBytes (in L2 cache).
constexpr size_t kRotationBlock = 2048;
constexpr size_t kSlabBytes = size_t{1} << 19;

// Fraction bits F of the fixed-point rotation. Every value the transform computes is a signed
// sum of the inputs q_i = trunc(u_i·2^F), so it is at most Σ|q_i| ≤ 2^F·Σ|u_i| + n, and
// Σ|u_i| ≤ √n·‖u‖ = the scaled norm. F is the largest that keeps that below 2^62.
int FixedPointFractionBits(double scaled_norm, size_t padded_dimension) {
  if (!(scaled_norm > 0)) return 62;
  const double room = std::ldexp(1.0, 62) - static_cast<double>(padded_dimension);
  return std::clamp(static_cast<int>(std::floor(std::log2(room / scaled_norm))), 0, 62);
}

// Randomized rounding of `count` fixed-point values with F fraction bits to integers: up with
// probability equal to the fraction. 16 random bits decide, and the 2^-16 of ties draw the
// rest. Writes two's-complement integers to `out` and returns the sum of their squares.
double RoundFixedPoint(const uint64_t* fixed, size_t count, int fraction_bits, SecureRandom& random,
                       uint64_t* out) {
  constexpr size_t kChunk = 1024;
  constexpr size_t kLanes = 8;
  static_assert(kChunk % (4 * kLanes) == 0);
  const uint64_t fraction_mask = fraction_bits == 0 ? 0 : ~uint64_t{0} >> (64 - fraction_bits);
  const int below_top = std::max(fraction_bits - 16, 0);
  const int above = std::max(16 - fraction_bits, 0);
  std::array<uint64_t, kChunk / 4> words;
  std::array<uint8_t, kChunk> tie;
  double squares = 0;
  for (size_t start = 0; start < count; start += kChunk) {
    const size_t n = std::min(kChunk, count - start);
    random.Fill(std::span(words.data(), (n + 3) / 4));
    const uint64_t* in = fixed + start;
    uint64_t* rounded = out + start;
    // Eight partial sums, so that the loop vectorises without reassociating additions.
    std::array<double, kLanes> partial{};
    const size_t whole = n - n % kLanes;
    auto round_one = [&](size_t i) {
      const uint64_t fraction = in[i] & fraction_mask;
      const uint64_t top = (fraction >> below_top) << above;
      const uint64_t uniform = (words[i / 4] >> (16 * (i % 4))) & 0xffff;
      const int64_t value =
          (static_cast<int64_t>(in[i]) >> fraction_bits) + (uniform < top ? 1 : 0);
      tie[i] = static_cast<uint8_t>(uniform == top);
      rounded[i] = static_cast<uint64_t>(value);
      return static_cast<double>(value);
    };
    for (size_t i = 0; i < whole; i += kLanes) {
      for (size_t lane = 0; lane < kLanes; ++lane) {
        const double value = round_one(i + lane);
        partial[lane] += value * value;
      }
    }
    for (size_t i = whole; i < n; ++i) {
      const double value = round_one(i);
      partial[0] += value * value;
    }
    // A tie of the top 16 bits: the uniform is below the fraction when its next bits are below
    // the fraction's rest (none left, and it is not).
    if (below_top > 0) {
      const uint64_t rest_mask = (uint64_t{1} << below_top) - 1;
      for (size_t i = 0; i < n; ++i) {
        if (tie[i] == 0 || (in[i] & rest_mask) <= (random() >> (64 - below_top))) continue;
        const auto value = static_cast<double>(static_cast<int64_t>(rounded[i]));
        rounded[i] += 1;
        partial[0] += 2 * value + 1;
      }
    }
    for (double p : partial) squares += p;
  }
  return squares;
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
  if (!(encoding.scale * encoding.clip_norm < std::ldexp(1.0, encoding.ring_bits))) {
    return absl::InvalidArgumentError(
        absl::StrCat("scale × clip norm is ", encoding.scale * encoding.clip_norm,
                     ": a clipped update would not fit the ring of 2^", encoding.ring_bits));
  }
  absl::StatusOr<RandomizedHadamard> rotation =
      RandomizedHadamard::Create(dimension, encoding.rotation_seed);
  if (!rotation.ok()) return rotation.status();
  RingEncoder encoder(std::move(*rotation), std::move(encoding));
  if (encoder.encoding_.mechanism == NoiseMechanism::kDiscreteGaussian) {
    encoder.discrete_gaussian_ =
        std::make_shared<const TabulatedDiscreteGaussian>(encoder.encoding_.local_noise_variance);
  }
  return encoder;
}

absl::StatusOr<std::vector<uint64_t>> RingEncoder::Encode(std::span<const float> update,
                                                          SecureRandom& random) const {
  std::vector<uint64_t> encoded(encoded_dimension());
  if (absl::Status status = EncodeInto(update, random, encoded); !status.ok()) return status;
  return encoded;
}

absl::Status RingEncoder::EncodeInto(std::span<const float> update, SecureRandom& random,
                                     std::span<uint64_t> encoded) const {
  if (update.size() != dimension()) {
    return absl::InvalidArgumentError(
        absl::StrCat("update has ", update.size(), " values; the encoder expects ", dimension()));
  }
  if (encoded.size() != encoded_dimension()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "room for ", encoded.size(), " encoded values; the encoding has ", encoded_dimension()));
  }
  const size_t size = encoded.size();
  const size_t block = std::min(size, kRotationBlock);
  const size_t rows = size / block;
  const size_t slab_width =
      std::clamp<size_t>(std::bit_floor(std::max<size_t>(kSlabBytes / 8 / rows, 1)),
                         std::min<size_t>(8, block), block);
  const size_t slabs = block / slab_width;

  // Every phase runs in shards on all cores, each drawing from its own stream keyed by 32 bytes
  // of the caller's stream.
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
  std::vector<double> shard_squares(shards);
  std::barrier phase_end(static_cast<std::ptrdiff_t>(shards));
  bool within_bound = false;  // written by shard 0 between barriers
  const uint64_t ring_mask = RingMask(encoding_.ring_bits);

  auto run_shard = [&](size_t s) {
    SecureRandom& stream = streams[s];
    const Range inputs = ShardOf(s, shards, update.size());
    shard_squares[s] = SumOfSquares(update.subspan(inputs.begin, inputs.end - inputs.begin));
    phase_end.arrive_and_wait();
    // Every shard derives the same clip, bound and fixed point from the same sums.
    const double norm = std::sqrt(std::accumulate(shard_squares.begin(), shard_squares.end(), 0.0));
    const double clip = norm > encoding_.clip_norm ? encoding_.clip_norm / norm : 1.0;
    const double scaled_norm = norm * clip * encoding_.scale;
    const double bound = RoundedNormBound(scaled_norm, size, encoding_.rounding_beta);
    const int fraction_bits = FixedPointFractionBits(scaled_norm, size);
    phase_end.arrive_and_wait();  // the sums are read; the rounding may overwrite them

    // Clipping and scaling by γ are one multiplier, folded into the fixed-point inputs.
    // Conditional randomized rounding tries again, with fresh bits, while the rounded norm
    // exceeds its bound; the rotation is recomputed, as rounding overwrites it.
    std::vector<uint64_t> scratch(rows * slab_width);
    for (int attempt = 0; attempt < kMaxRoundingAttempts; ++attempt) {
      const Range blocks = ShardOf(s, shards, rows);
      for (size_t b = blocks.begin; b < blocks.end; ++b) {
        const std::span<uint64_t> coordinates = encoded.subspan(b * block, block);
        rotation_.FixedPointBlock(update, b * block, clip * encoding_.scale, fraction_bits,
                                  coordinates);
        WalshHadamardLevels(coordinates.data(), block, 1, block);
      }
      phase_end.arrive_and_wait();
      const Range columns = ShardOf(s, shards, slabs);
      double rounded_squares = 0;
      for (size_t slab = columns.begin; slab < columns.end; ++slab) {
        const size_t first_column = slab * slab_width;
        for (size_t r = 0; r < rows; ++r) {
          std::copy_n(encoded.begin() + static_cast<std::ptrdiff_t>(r * block + first_column),
                      slab_width, scratch.begin() + static_cast<std::ptrdiff_t>(r * slab_width));
        }
        WalshHadamardLevels(scratch.data(), scratch.size(), slab_width, scratch.size());
        for (size_t r = 0; r < rows; ++r) {
          rounded_squares +=
              RoundFixedPoint(scratch.data() + r * slab_width, slab_width, fraction_bits, stream,
                              encoded.data() + r * block + first_column);
        }
      }
      shard_squares[s] = rounded_squares;
      phase_end.arrive_and_wait();
      if (s == 0) {
        within_bound =
            std::accumulate(shard_squares.begin(), shard_squares.end(), 0.0) <= bound * bound;
      }
      phase_end.arrive_and_wait();
      if (within_bound) break;
    }
    if (!within_bound) return;

    // This client's share of the noise, then the reduction mod 2^b: two's complement makes it
    // a mask, for negative values too.
    const Range values = ShardOf(s, shards, size);
    constexpr size_t kChunk = 1024;
    std::array<int64_t, kChunk> noise{};
    for (size_t start = values.begin; start < values.end; start += kChunk) {
      const std::span<int64_t> chunk(noise.data(), std::min(kChunk, values.end - start));
      switch (encoding_.mechanism) {
        case NoiseMechanism::kNone:
          break;
        case NoiseMechanism::kDiscreteGaussian:
          discrete_gaussian_->Fill(chunk, stream);
          break;
        case NoiseMechanism::kSkellam:
          for (int64_t& x : chunk) x = SampleSkellam(encoding_.local_noise_variance / 2.0, stream);
          break;
      }
      for (size_t k = 0; k < chunk.size(); ++k) {
        encoded[start + k] = (encoded[start + k] + static_cast<uint64_t>(chunk[k])) & ring_mask;
      }
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(shards - 1);
  for (size_t s = 1; s < shards; ++s) threads.emplace_back(run_shard, s);
  run_shard(0);
  for (std::thread& thread : threads) thread.join();
  if (!within_bound) {
    return absl::InternalError(
        "conditional randomized rounding never met its norm bound: check scale and beta");
  }
  return absl::OkStatus();
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
