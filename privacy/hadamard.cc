#include "privacy/hadamard.h"

#include <bit>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "privacy/secure_random.h"

namespace fedmoe::privacy {

void FastWalshHadamard(std::span<double> data) {
  const size_t n = data.size();
  for (size_t half = 1; half < n; half *= 2) {
    for (size_t block = 0; block < n; block += 2 * half) {
      double* left = data.data() + block;
      double* right = left + half;
      for (size_t i = 0; i < half; ++i) {
        const double a = left[i];
        const double b = right[i];
        left[i] = a + b;
        right[i] = a - b;
      }
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

absl::Status RandomizedHadamard::Rotate(std::span<const double> input,
                                        std::span<double> output) const {
  if (input.size() != dimension_ || output.size() != padded_dimension_) {
    return absl::InvalidArgumentError(
        absl::StrCat("rotation of dimension ", dimension_, " (padded ", padded_dimension_, ") got ",
                     input.size(), " values in and room for ", output.size()));
  }
  for (size_t i = 0; i < dimension_; ++i) output[i] = Sign(i) * input[i];
  for (size_t i = dimension_; i < padded_dimension_; ++i) output[i] = 0.0;
  FastWalshHadamard(output);
  const double scale = 1.0 / std::sqrt(static_cast<double>(padded_dimension_));
  for (double& value : output) value *= scale;
  return absl::OkStatus();
}

absl::Status RandomizedHadamard::Unrotate(std::span<const double> input,
                                          std::span<double> output) const {
  if (input.size() != padded_dimension_ || output.size() != dimension_) {
    return absl::InvalidArgumentError(
        absl::StrCat("inverse rotation of dimension ", dimension_, " (padded ", padded_dimension_,
                     ") got ", input.size(), " values in and room for ", output.size()));
  }
  // H is symmetric and H·H = n·I, so the inverse of H·D/√n is D·H/√n.
  std::vector<double> work(input.begin(), input.end());
  FastWalshHadamard(work);
  const double scale = 1.0 / std::sqrt(static_cast<double>(padded_dimension_));
  for (size_t i = 0; i < dimension_; ++i) output[i] = Sign(i) * work[i] * scale;
  return absl::OkStatus();
}

}  // namespace fedmoe::privacy
