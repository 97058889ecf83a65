// The randomized Hadamard rotation of distributed DP (DESIGN §4): x ↦ H·D·x / √n, where D
// holds seeded random signs, H is the n×n Walsh–Hadamard matrix and n the dimension padded to a
// power of two. It is orthonormal, so it keeps L2 norms, and it spreads a vector's energy
// evenly over the coordinates, which keeps per-coordinate rounding and modular wrap-around
// small. The seed is public and fresh per round.
//
// A large vector may instead be rotated block-diagonally: padded to a multiple of a block of
// R = 2^k values and each block rotated by its own R×R transform (one sign vector D over the
// whole). Padding to a power of two can nearly double what is sent (35.7M values take 2^26);
// to a multiple of R ≤ d/16 it adds at most 1/16. The price is that the energy spreads within a
// block only: a vector whose energy sits in one block has coordinates of about ‖x‖/√R, which
// the coordinator's choice of scale allows for (ChooseScale).
#ifndef FEDMOE_PRIVACY_HADAMARD_H_
#define FEDMOE_PRIVACY_HADAMARD_H_

#include <bit>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace fedmoe::privacy {

// In place, unnormalised, O(n log n). n must be a power of two.
void FastWalshHadamard(std::span<double> data);

// Some levels of that transform over data[0, size): for half = first_half, 2·first_half, …
// below end_half, the butterflies (a, b) → (a + b, a - b) of elements `half` apart. The levels
// commute, so a caller may split them to keep its working set in cache: each 2^k-block alone
// (halves 1 … 2^(k-1)), then across blocks. For double and uint64_t (two's-complement
// integers, whose sums wrap exactly as int64 sums do).
template <typename T>
void WalshHadamardLevels(T* data, size_t size, size_t first_half, size_t end_half);

// The smallest block a block-diagonal rotation takes (the encoder's cache block).
inline constexpr size_t kMinRotationBlock = 2048;

// The length a coordinator plans an update of `dimension` values to be encoded at: up to 2^20
// values the next power of two (one block, as before blocks existed); beyond, a multiple of the
// largest power of two R ≤ dimension/16, so that padding adds less than 1/16.
size_t EncodedLength(size_t dimension);

// The rotation block of an EncodedLength: the whole length up to 2^20 or when it is a power of
// two, else the largest power of two ≤ length/16. Planning code that knows only the length
// derives the block from it.
size_t RotationBlockOf(size_t encoded_length);

// The dimension padded for a rotation of that block (0: to a power of two).
size_t PaddedDimension(size_t dimension, size_t block);

class RandomizedHadamard {
 public:
  // `seed` is 32 bytes (PrivacySpec.rotation_seed). `block` is R, a power of two of at least
  // kMinRotationBlock, or 0: one block of the dimension padded to a power of two. A block no
  // smaller than that is the same one block.
  static absl::StatusOr<RandomizedHadamard> Create(size_t dimension, std::string_view seed,
                                                   size_t block = 0);

  size_t dimension() const { return dimension_; }
  size_t padded_dimension() const { return padded_dimension_; }
  // R: each block of this many values is rotated alone.
  size_t block() const { return block_; }

  // `input` has dimension() values, `output` padded_dimension().
  absl::Status Rotate(std::span<const double> input, std::span<double> output) const;
  // The input of the transform in fixed point, for out.size() coordinates from `begin`:
  // out[k] = trunc(D·multiplier·input/√R · 2^fraction_bits) at begin + k, as a two's-complement
  // int64, and 0 in the padding. FastWalshHadamard of each block of these, which a caller may
  // run in pieces with WalshHadamardLevels, is then the rotation of multiplier·input in fixed
  // point: exact in integers, its only rounding here.
  void FixedPointBlock(std::span<const float> input, size_t begin, double multiplier,
                       int fraction_bits, std::span<uint64_t> out) const;

  // The inverse: `input` has padded_dimension() values, `output` dimension() (the padding,
  // which a rotated sum fills with noise, is dropped).
  // The same inverse on a padded vector, in place; `values` is shrunk to the dimension (its
  // capacity stays), so decoding a large sum needs no second copy of it.
  absl::Status UnrotateInPlace(std::vector<double>& values) const;
  absl::Status Unrotate(std::span<const double> input, std::span<double> output) const;

 private:
  RandomizedHadamard(size_t dimension, size_t padded, size_t block, std::vector<uint64_t> sign_bits)
      : dimension_(dimension),
        padded_dimension_(padded),
        block_(block),
        sign_bits_(std::move(sign_bits)) {}
  // FastWalshHadamard of each block.
  void TransformBlocks(std::span<double> data) const;
  // value · (±1) by flipping the IEEE sign bit: the signs are random, so a branch would be
  // mispredicted half the time.
  double ApplySign(size_t i, double value) const {
    const uint64_t flip = ((sign_bits_[i / 64] >> (i % 64)) & 1) << 63;
    return std::bit_cast<double>(std::bit_cast<uint64_t>(value) ^ flip);
  }

  size_t dimension_;
  size_t padded_dimension_;
  size_t block_;
  std::vector<uint64_t> sign_bits_;
};

}  // namespace fedmoe::privacy

#endif  // FEDMOE_PRIVACY_HADAMARD_H_
