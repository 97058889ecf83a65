#include "privacy/hadamard.h"

#include <algorithm>
#include <bit>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "privacy/secure_random.h"

namespace fedmoe::privacy {

namespace {

// Butterflies of one pass over [begin, begin + size), pairing elements `half` apart.
void Radix2Pass(double* data, size_t size, size_t half) {
  for (size_t block = 0; block < size; block += 2 * half) {
    double* left = data + block;
    double* right = left + half;
    for (size_t i = 0; i < half; ++i) {
      const double a = left[i];
      const double b = right[i];
      left[i] = a + b;
      right[i] = a - b;
    }
  }
}

// Two passes (strides `half` and 2·`half`) in one sweep over memory.
void Radix4Pass(double* data, size_t size, size_t half) {
  for (size_t block = 0; block < size; block += 4 * half) {
    double* p0 = data + block;
    double* p1 = p0 + half;
    double* p2 = p1 + half;
    double* p3 = p2 + half;
    for (size_t i = 0; i < half; ++i) {
      const double a = p0[i] + p1[i];
      const double b = p0[i] - p1[i];
      const double c = p2[i] + p3[i];
      const double d = p2[i] - p3[i];
      p0[i] = a + c;
      p1[i] = b + d;
      p2[i] = a - c;
      p3[i] = b - d;
    }
  }
}

// Passes with strides below this run block by block while the block is in L1/L2 cache.
constexpr size_t kCacheBlock = 2048;

}  // namespace

void FastWalshHadamard(std::span<double> data) {
  const size_t n = data.size();
  const size_t block = std::min(n, kCacheBlock);
  for (size_t start = 0; start < n; start += block) {
    for (size_t half = 1; half < block; half *= 2) Radix2Pass(data.data() + start, block, half);
  }
  // The wide strides stream through memory: two passes per sweep halve the traffic.
  for (size_t half = block; half < n;) {
    if (half * 4 <= n) {
      Radix4Pass(data.data(), n, half);
      half *= 4;
    } else {
      Radix2Pass(data.data(), n, half);
      half *= 2;
    }
  }
}

absl::StatusOr<RandomizedHadamard> RandomizedHadamard::Create(size_t dimension,
                                                              std::string_view seed) {
  if (dimension == 0) return absl::InvalidArgumentError("cannot rotate an empty vector");
  if (dimension > (size_t{1} << 40)) {
    return absl::InvalidArgumentError(absl::StrCat("dimension ", dimension, " is too large"));
  }
  absl::StatusOr<SecureRandom> random = SecureRandom::FromSeed(seed, "fedmoe/v1/rotation-signs");
  if (!random.ok()) return random.status();
  const size_t padded = std::bit_ceil(dimension);
  std::vector<uint64_t> bits((padded + 63) / 64);
  for (uint64_t& word : bits) word = (*random)();
  return RandomizedHadamard(dimension, padded, std::move(bits));
}

template <typename T>
absl::Status RandomizedHadamard::RotateImpl(std::span<const T> input, double multiplier,
                                            std::span<double> output) const {
  if (input.size() != dimension_ || output.size() != padded_dimension_) {
    return absl::InvalidArgumentError(
        absl::StrCat("rotation of dimension ", dimension_, " (padded ", padded_dimension_, ") got ",
                     input.size(), " values in and room for ", output.size()));
  }
  // 1/√n goes in before the transform, with the caller's multiplier: one pass fewer.
  const double scale = multiplier / std::sqrt(static_cast<double>(padded_dimension_));
  for (size_t i = 0; i < dimension_; ++i) {
    output[i] = ApplySign(i, scale * static_cast<double>(input[i]));
  }
  for (size_t i = dimension_; i < padded_dimension_; ++i) output[i] = 0.0;
  FastWalshHadamard(output);
  return absl::OkStatus();
}

absl::Status RandomizedHadamard::Rotate(std::span<const double> input,
                                        std::span<double> output) const {
  return RotateImpl(input, 1.0, output);
}

absl::Status RandomizedHadamard::RotateScaled(std::span<const float> input, double multiplier,
                                              std::span<double> output) const {
  return RotateImpl(input, multiplier, output);
}

absl::Status RandomizedHadamard::Unrotate(std::span<const double> input,
                                          std::span<double> output) const {
  if (output.size() != dimension_) {
    return absl::InvalidArgumentError(absl::StrCat("inverse rotation of dimension ", dimension_,
                                                   " got room for ", output.size(), " values"));
  }
  std::vector<double> work(input.begin(), input.end());
  if (absl::Status status = UnrotateInPlace(work); !status.ok()) return status;
  std::copy(work.begin(), work.end(), output.begin());
  return absl::OkStatus();
}

absl::Status RandomizedHadamard::UnrotateInPlace(std::vector<double>& values) const {
  if (values.size() != padded_dimension_) {
    return absl::InvalidArgumentError(absl::StrCat("inverse rotation of dimension ", dimension_,
                                                   " (padded ", padded_dimension_, ") got ",
                                                   values.size(), " values"));
  }
  // H is symmetric and H·H = n·I, so the inverse of H·D/√n is D·H/√n.
  FastWalshHadamard(values);
  const double scale = 1.0 / std::sqrt(static_cast<double>(padded_dimension_));
  values.resize(dimension_);
  for (size_t i = 0; i < dimension_; ++i) values[i] = ApplySign(i, values[i] * scale);
  return absl::OkStatus();
}

}  // namespace fedmoe::privacy
