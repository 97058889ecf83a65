#include "privacy/ring_encoder.h"

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
// β = e^-0.5 about one attempt in ten fails at a real ring's scale, and this many in a row
// means the parameters are wrong.
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

// An OpenMP SIMD reduction, so that the loop vectorises (the order of the additions is free).
double SumOfSquares(std::span<const float> values) {
  double sum = 0;
  // Over a pointer: GCC's simd loops take no iterator classes.
  const float* data = values.data();
  const size_t count = values.size();
#pragma omp simd reduction(+ : sum)
  for (size_t i = 0; i < count; ++i) sum += static_cast<double>(data[i]) * data[i];
  return sum;
}

// The rotation runs in two sweeps over memory: the levels inside blocks of this many
// coordinates (16 KiB, in L1 cache), then the levels across blocks, a slab of columns at a
// time copied into a scratch of about kSlabBytes (in L2 cache).
constexpr size_t kRotationBlock = kMinRotationBlock;
constexpr size_t kSlabBytes = size_t{1} << 19;

// Fraction bits F of the fixed-point rotation. Every value the transform computes is a signed
// sum of the inputs q_i = trunc(u_i·2^F), so it is at most Σ|q_i| ≤ 2^F·Σ|u_i| + n, and
// Σ|u_i| ≤ √n·‖u‖ = the scaled norm. F is the largest that keeps that below 2^62.
int FixedPointFractionBits(double scaled_norm, size_t padded_dimension) {
  if (!(scaled_norm > 0)) return 62;
  const double room = std::ldexp(1.0, 62) - static_cast<double>(padded_dimension);
  return std::clamp(static_cast<int>(std::floor(std::log2(room / scaled_norm))), 0, 62);
}

// Conditional randomized rounding, noise and wrap of fixed-point values with F fraction bits.
struct FixedPointLayout {
  int fraction_bits;
  uint64_t fraction_mask;
  // The fraction's top 16 bits are (fraction >> below_top) << above.
  int below_top;
  int above;
  uint64_t ring_mask;
};

FixedPointLayout LayoutOf(int fraction_bits, int ring_bits) {
  return {fraction_bits, fraction_bits == 0 ? 0 : ~uint64_t{0} >> (64 - fraction_bits),
          std::max(fraction_bits - 16, 0), std::max(16 - fraction_bits, 0), RingMask(ring_bits)};
}

// out[i] = (r + noise[i]) mod 2^b, where r is fixed[i] rounded: ⌊v⌋ + 1 when uniforms[i] is
// below the fraction's top 16 bits, else ⌊v⌋. Ties of those 16 bits are flagged for the caller
// to settle. Adds r² to `squares` and returns the number of ties. Unaliased pointers and an
// OpenMP SIMD reduction, so that the loop vectorises.
size_t RoundNoiseAndWrap(const FixedPointLayout layout, const uint64_t* __restrict fixed,
                         const uint16_t* __restrict uniforms, const int64_t* __restrict noise,
                         size_t count, uint64_t* __restrict out, uint8_t* __restrict ties,
                         double& squares) {
  size_t tie_count = 0;
  double sum = 0;
#pragma omp simd reduction(+ : sum, tie_count)
  for (size_t i = 0; i < count; ++i) {
    const uint64_t top = ((fixed[i] & layout.fraction_mask) >> layout.below_top) << layout.above;
    const uint64_t up = uniforms[i] < top ? 1 : 0;
    const uint64_t tie = uniforms[i] == top ? 1 : 0;
    const int64_t rounded =
        (static_cast<int64_t>(fixed[i]) >> layout.fraction_bits) + static_cast<int64_t>(up);
    ties[i] = static_cast<uint8_t>(tie);
    tie_count += tie;
    // Two's complement makes the reduction mod 2^b a mask, for negative values too.
    out[i] = (static_cast<uint64_t>(rounded) + static_cast<uint64_t>(noise[i])) & layout.ring_mask;
    const auto value = static_cast<double>(rounded);
    sum += value * value;
  }
  squares += sum;
  return tie_count;
}

}  // namespace

double ClipToL2Norm(std::span<float> values, double clip_norm) {
  const double norm = std::sqrt(SumOfSquares(values));
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

double RingEncoder::LargestScaledNorm(size_t padded_dimension) {
  // The fixed-point rotation keeps at least log2(n) fraction bits, so that its truncation moves
  // no coordinate by more than one scaled unit (see FixedPointFractionBits), with a margin for
  // the rounding of this bound.
  const auto n = static_cast<double>(padded_dimension);
  return (std::ldexp(1.0, 62) - n) / n * (1.0 - 0x1.0p-20);
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
      RandomizedHadamard::Create(dimension, encoding.rotation_seed, encoding.rotation_block);
  if (!rotation.ok()) return rotation.status();
  const double widest = LargestScaledNorm(rotation->padded_dimension());
  if (!(encoding.scale * encoding.clip_norm <= widest)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scale × clip norm is ", encoding.scale * encoding.clip_norm, ": the rotation of ",
        rotation->padded_dimension(), " values in 64-bit fixed point holds at most ", widest));
  }
  RingEncoder encoder(std::move(*rotation), std::move(encoding));
  const double variance = encoder.encoding_.local_noise_variance;
  if (encoder.encoding_.mechanism == NoiseMechanism::kDiscreteGaussian) {
    encoder.table_ =
        std::make_shared<const TabulatedNoise>(TabulatedNoise::DiscreteGaussian(variance));
  }
  // Skellam of variance σ² is the difference of two Poisson(σ²/2) draws.
  if (encoder.encoding_.mechanism == NoiseMechanism::kSkellam) {
    if (variance / 2.0 >= TabulatedNoise::kMinTabulatedSkellamMean) {
      absl::StatusOr<TabulatedNoise> skellam = TabulatedNoise::Skellam(variance / 2.0);
      if (!skellam.ok()) return skellam.status();
      encoder.table_ = std::make_shared<const TabulatedNoise>(*std::move(skellam));
    } else {
      encoder.poisson_ = std::make_shared<const PoissonSampler>(variance / 2.0);
    }
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
  // The levels across cache blocks stay within each rotation block of this many rows.
  const size_t group_rows = rotation_.block() / block;

  // Every phase runs in shards on all cores, each drawing from its own fork of the caller's
  // stream.
  const size_t shards = ShardCount(size);
  std::vector<SecureRandom> streams;
  streams.reserve(shards);
  for (size_t s = 0; s < shards; ++s) {
    absl::StatusOr<SecureRandom> stream = random.Fork();
    if (!stream.ok()) return stream.status();
    streams.push_back(std::move(*stream));
  }
  std::vector<double> shard_squares(shards);
  std::barrier phase_end(static_cast<std::ptrdiff_t>(shards));
  bool within_bound = false;  // written by shard 0 between barriers

  // Rounds, noises and wraps `fixed` (rows of `width` fixed-point values), writing row r to
  // row_start(r). Returns the sum of the squares of the rounded values.
  auto round_into_rows = [this](std::span<const uint64_t> fixed, size_t width,
                                const FixedPointLayout& layout, SecureRandom& stream,
                                const auto& row_start) {
    constexpr size_t kChunk = 1024;
    std::array<uint64_t, kChunk / 4> words;
    std::array<uint16_t, kChunk> uniforms;
    std::array<int64_t, kChunk> noise;
    std::array<uint8_t, kChunk> ties;
    double squares = 0;
    for (size_t start = 0; start < fixed.size(); start += kChunk) {
      const size_t count = std::min(kChunk, fixed.size() - start);
      stream.Fill(std::span(words.data(), (count + 3) / 4));
      std::memcpy(uniforms.data(), words.data(), count * sizeof(uint16_t));
      FillNoise(std::span(noise.data(), count), stream);
      size_t tie_count = 0;
      // The chunk in pieces that stay within a row.
      for (size_t i = start; i < start + count;) {
        const size_t row = i / width;
        const size_t piece = std::min(start + count, (row + 1) * width) - i;
        tie_count += RoundNoiseAndWrap(
            layout, fixed.data() + i, uniforms.data() + (i - start), noise.data() + (i - start),
            piece, row_start(row) + i % width, ties.data() + (i - start), squares);
        i += piece;
      }
      // A tie of the top 16 bits: the uniform is below the fraction when its next bits are
      // below the fraction's rest (none left, and it is not).
      if (tie_count == 0 || layout.below_top == 0) continue;
      const uint64_t rest_mask = (uint64_t{1} << layout.below_top) - 1;
      for (size_t k = 0; k < count; ++k) {
        const size_t i = start + k;
        if (ties[k] == 0 || (fixed[i] & rest_mask) <= (stream() >> (64 - layout.below_top))) {
          continue;
        }
        uint64_t& out = row_start(i / width)[i % width];
        out = (out + 1) & layout.ring_mask;
        const auto rounded =
            static_cast<double>(static_cast<int64_t>(fixed[i]) >> layout.fraction_bits);
        squares += 2 * rounded + 1;
      }
    }
    return squares;
  };

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
    const FixedPointLayout layout = LayoutOf(fraction_bits, encoding_.ring_bits);
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
      // Each slab: the levels across blocks, then rounding, this client's share of the noise
      // and the reduction mod 2^b, written back row by row. The noise goes in before the norm
      // check, which is on the rounded values: should the check fail, the noise is thrown away
      // with the rounding, and drawn afresh.
      const Range columns = ShardOf(s, shards, slabs);
      double rounded_squares = 0;
      for (size_t slab = columns.begin; slab < columns.end; ++slab) {
        const size_t first_column = slab * slab_width;
        for (size_t r = 0; r < rows; ++r) {
          std::copy_n(encoded.begin() + static_cast<std::ptrdiff_t>(r * block + first_column),
                      slab_width, scratch.begin() + static_cast<std::ptrdiff_t>(r * slab_width));
        }
        WalshHadamardLevels(scratch.data(), scratch.size(), slab_width, group_rows * slab_width);
        rounded_squares += round_into_rows(scratch, slab_width, layout, stream, [&](size_t r) {
          return encoded.data() + r * block + first_column;
        });
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
  };
  std::vector<std::thread> threads;
  threads.reserve(shards - 1);
  for (size_t s = 1; s < shards; ++s) threads.emplace_back(run_shard, s);
  run_shard(0);
  for (std::thread& thread : threads) thread.join();
  // Rounding and noise from a failed keystream would be no noise at all: the encoding is
  // discarded, and with it the round, never sent.
  for (const SecureRandom& stream : streams) {
    if (absl::Status status = stream.status(); !status.ok()) return status;
  }
  if (!within_bound) {
    return absl::InternalError(
        "conditional randomized rounding never met its norm bound: check scale and beta");
  }
  return absl::OkStatus();
}

void RingEncoder::FillNoise(std::span<int64_t> noise, SecureRandom& random) const {
  // Create built the sampler the mechanism needs, or none for no noise.
  if (table_ != nullptr) {
    table_->Fill(noise, random);
  } else if (poisson_ != nullptr) {
    for (int64_t& x : noise) x = poisson_->Sample(random) - poisson_->Sample(random);
  } else {
    std::fill(noise.begin(), noise.end(), int64_t{0});
  }
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

absl::Status RingEncoder::AddCentralNoise(std::span<uint64_t> sum, int bits, double variance,
                                          SecureRandom& random) {
  if (!(variance > 0) || !std::isfinite(variance)) {
    return absl::InvalidArgumentError(
        absl::StrCat("central noise needs a positive variance, not ", variance));
  }
  if (bits < 16 || bits > 62) {
    return absl::InvalidArgumentError(
        absl::StrCat("ring bits must be between 16 and 62, not ", bits));
  }
  const TabulatedNoise table = TabulatedNoise::DiscreteGaussian(variance);
  const uint64_t mask = RingMask(bits);
  constexpr size_t kChunk = 4096;
  std::array<int64_t, kChunk> noise;
  for (size_t start = 0; start < sum.size(); start += kChunk) {
    const size_t count = std::min(kChunk, sum.size() - start);
    table.Fill(std::span(noise.data(), count), random);
    for (size_t i = 0; i < count; ++i) {
      // Two's complement makes the reduction mod 2^b a mask, for negative noise too.
      sum[start + i] = (sum[start + i] + static_cast<uint64_t>(noise[i])) & mask;
    }
  }
  // The caller discards the sum, and aborts the round, rather than decode it without noise.
  return random.status();
}

}  // namespace fedmoe::privacy
