// Distributed DP encoding of a client's update for the SecAgg ring (DESIGN §4, Kairouz, Liu,
// Steinke 2021): clip to L2 norm C, rotate (randomized Hadamard), scale by γ, round to integers
// with conditional randomized rounding, add this client's share of integer noise, and reduce
// mod 2^b. The coordinator decodes the ring sum of all survivors' encodings: centre it in
// (-2^(b-1), 2^(b-1)], divide by γ and rotate back.
#ifndef FEDMOE_PRIVACY_RING_ENCODER_H_
#define FEDMOE_PRIVACY_RING_ENCODER_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "privacy/hadamard.h"
#include "privacy/noise.h"
#include "privacy/secure_random.h"

namespace fedmoe::privacy {

// Scales `values` down so that their L2 norm is at most `clip_norm`; returns the norm before.
double ClipToL2Norm(std::span<float> values, double clip_norm);

// The largest L2 norm that conditional randomized rounding lets through for a vector of this
// L2 norm and dimension (KLS21): min{(norm + √d)², norm² + d/4 + √(2 ln(1/β))·(norm + √d/2)},
// square-rooted. β = 0 leaves only the first, unconditional bound.
double RoundedNormBound(double norm, size_t dimension, double beta);

struct RingEncoding {
  // C: the L2 norm each update is clipped to.
  double clip_norm = 1.0;
  // γ: values are multiplied by this before rounding.
  double scale = 1.0;
  // β of conditional randomized rounding, in [0, 1).
  double rounding_beta = 0.0;
  NoiseMechanism mechanism = NoiseMechanism::kNone;
  // Variance of this client's integer noise, in scaled units.
  double local_noise_variance = 0.0;
  // b: the ring is Z_(2^b), 16 ≤ b ≤ 62.
  int ring_bits = 32;
  // Seeds the rotation signs; 32 bytes, public, fresh per round.
  std::string rotation_seed = std::string(32, '\0');
  // R of a block-diagonal rotation (RotationBlockFor), or 0: the whole vector, padded to a
  // power of two, is one block.
  uint64_t rotation_block = 0;
};

class RingEncoder {
 public:
  static absl::StatusOr<RingEncoder> Create(size_t dimension, RingEncoding encoding);
  // The largest γ·C an encoder of this padded dimension takes: its rotation runs in 64-bit
  // fixed point, 2^62/n. Far above what a 32-bit ring needs; a plan for a wide ring without
  // noise must stay below it.
  static double LargestScaledNorm(size_t padded_dimension);

  size_t dimension() const { return rotation_.dimension(); }
  // The length of an encoding: the dimension padded to a power of two, or to a multiple of the
  // rotation block.
  size_t encoded_dimension() const { return rotation_.padded_dimension(); }
  const RingEncoding& encoding() const { return encoding_; }

  absl::StatusOr<std::vector<uint64_t>> Encode(std::span<const float> update,
                                               SecureRandom& random) const;
  // The same into `encoded`, of encoded_dimension() values, which a caller can reuse.
  absl::Status EncodeInto(std::span<const float> update, SecureRandom& random,
                          std::span<uint64_t> encoded) const;
  absl::StatusOr<std::vector<double>> DecodeSum(std::span<const uint64_t> sum) const;

  // sum[i] = (sum[i] + values[i]) mod 2^bits.
  static absl::Status AddInRing(std::span<uint64_t> sum, std::span<const uint64_t> values,
                                int bits);

  // Central DP (PrivacySpec MODE_CENTRAL): adds an exact discrete Gaussian draw of this variance
  // (scaled units) to every coordinate of a ring sum, mod 2^bits, before it is decoded. Integer
  // noise from TabulatedNoise rather than floating-point Gaussian noise, whose rounding can
  // betray the value it is added to (Mironov 2012), and whose distance from its law the ledger
  // could not bound.
  static absl::Status AddCentralNoise(std::span<uint64_t> sum, int bits, double variance,
                                      SecureRandom& random);

 private:
  RingEncoder(RandomizedHadamard rotation, RingEncoding encoding)
      : rotation_(std::move(rotation)), encoding_(std::move(encoding)) {}

  // This client's integer noise, a draw per value.
  void FillNoise(std::span<int64_t> noise, SecureRandom& random) const;

  RandomizedHadamard rotation_;
  RingEncoding encoding_;
  // Built once for the encoding's variance, for the mechanism it has: a table for the
  // discrete Gaussian and for Skellam at large means, PTRS for smaller Skellam means, neither
  // without noise.
  std::shared_ptr<const TabulatedNoise> table_;
  std::shared_ptr<const PoissonSampler> poisson_;
};

}  // namespace fedmoe::privacy

#endif  // FEDMOE_PRIVACY_RING_ENCODER_H_
