#include "privacy/hadamard.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "privacy/secure_random.h"

namespace fedmoe::privacy {

namespace {

// Butterflies of one level over [0, size), pairing elements `half` apart.
template <typename T>
void Radix2Pass(T* data, size_t size, size_t half) {
  for (size_t block = 0; block < size; block += 2 * half) {
    T* left = data + block;
    T* right = left + half;
    for (size_t i = 0; i < half; ++i) {
      const T a = left[i];
      const T b = right[i];
      left[i] = a + b;
      right[i] = a - b;
    }
  }
}

// Sizes up to this run all their levels block by block, while the block is in L1 cache.
constexpr size_t kCacheBlock = 2048;

// The levels with halves below a vector's lane count pair lanes of one vector: a shuffle and a
// select each, in GCC/Clang vector extensions sized to what the target compiles for (so that
// no vector crosses a call with a different ABI).
#if defined(__AVX512F__)
constexpr size_t kVectorBytes = 64;
#elif defined(__AVX2__)
constexpr size_t kVectorBytes = 32;
#else
constexpr size_t kVectorBytes = 16;
#endif

template <typename T>
struct Lanes {
  using Vector [[gnu::vector_size(kVectorBytes)]] = T;
  using Mask [[gnu::vector_size(kVectorBytes)]] = int64_t;
  // For loads and stores at any element: a memcpy into a Vector may go through the stack in
  // halves, whose reload then stalls on store forwarding.
  using Unaligned [[gnu::vector_size(kVectorBytes), gnu::aligned(alignof(T)), gnu::may_alias]] = T;
  static constexpr size_t kCount = kVectorBytes / sizeof(T);

  static Vector Load(const T* p) { return *reinterpret_cast<const Unaligned*>(p); }
  static void Store(T* p, const Vector& v) { *reinterpret_cast<Unaligned*>(p) = v; }
};

template <typename T, size_t kHalf, size_t... kLane>
void InVectorLevel(typename Lanes<T>::Vector& v, std::index_sequence<kLane...> /*lanes*/) {
  const typename Lanes<T>::Vector partner = __builtin_shufflevector(v, v, (kLane ^ kHalf)...);
  const typename Lanes<T>::Mask upper = {((kLane & kHalf) != 0 ? int64_t{-1} : int64_t{0})...};
  v = upper ? partner - v : partner + v;
}

template <typename T, size_t kHalf = 1>
void InVectorLevels(typename Lanes<T>::Vector& v) {
  if constexpr (kHalf < Lanes<T>::kCount) {
    InVectorLevel<T, kHalf>(v, std::make_index_sequence<Lanes<T>::kCount>());
    InVectorLevels<T, kHalf * 2>(v);
  }
}

// The levels of halves 1 … lanes/2 over data[0, size), size a multiple of the lanes.
template <typename T>
void InVectorPass(T* data, size_t size) {
  using Vector = typename Lanes<T>::Vector;
  for (size_t i = 0; i < size; i += Lanes<T>::kCount) {
    Vector v = Lanes<T>::Load(data + i);
    InVectorLevels<T>(v);
    Lanes<T>::Store(data + i, v);
  }
}

// kLevels levels (halves `half` … 2^(kLevels-1)·`half`) in one sweep: each group of 2^kLevels
// vectors is loaded once and transformed in registers. `half` is a multiple of the lanes.
template <typename T, size_t kLevels>
void RadixPass(T* data, size_t size, size_t half) {
  using Vector = typename Lanes<T>::Vector;
  constexpr size_t kGroup = size_t{1} << kLevels;
  for (size_t block = 0; block < size; block += kGroup * half) {
    T* p = data + block;
    for (size_t i = 0; i < half; i += Lanes<T>::kCount) {
      Vector x[kGroup];
      for (size_t k = 0; k < kGroup; ++k) x[k] = Lanes<T>::Load(p + i + k * half);
      for (size_t stride = 1; stride < kGroup; stride *= 2) {
        for (size_t k = 0; k < kGroup; ++k) {
          if ((k & stride) != 0) continue;
          const Vector a = x[k];
          const Vector b = x[k + stride];
          x[k] = a + b;
          x[k + stride] = a - b;
        }
      }
      for (size_t k = 0; k < kGroup; ++k) Lanes<T>::Store(p + i + k * half, x[k]);
    }
  }
}

}  // namespace

template <typename T>
void WalshHadamardLevels(T* data, size_t size, size_t first_half, size_t end_half) {
  size_t half = first_half;
  if (half == 1 && end_half >= Lanes<T>::kCount && size % Lanes<T>::kCount == 0) {
    InVectorPass(data, size);
    half = Lanes<T>::kCount;
  }
  while (half < end_half) {
    if (half % Lanes<T>::kCount != 0) {
      Radix2Pass(data, size, half);
      half *= 2;
    } else if (half * 8 <= end_half) {
      RadixPass<T, 3>(data, size, half);
      half *= 8;
    } else if (half * 4 <= end_half) {
      RadixPass<T, 2>(data, size, half);
      half *= 4;
    } else {
      RadixPass<T, 1>(data, size, half);
      half *= 2;
    }
  }
}

template void WalshHadamardLevels(double*, size_t, size_t, size_t);
template void WalshHadamardLevels(uint64_t*, size_t, size_t, size_t);

void FastWalshHadamard(std::span<double> data) {
  const size_t n = data.size();
  const size_t block = std::min(n, kCacheBlock);
  for (size_t start = 0; start < n; start += block) {
    WalshHadamardLevels(data.data() + start, block, 1, block);
  }
  WalshHadamardLevels(data.data(), n, block, n);
}

namespace {
constexpr size_t kWholeUpTo = size_t{1} << 20;
}  // namespace

size_t EncodedLength(size_t dimension) {
  if (dimension <= kWholeUpTo) return std::bit_ceil(std::max<size_t>(dimension, 1));
  return PaddedDimension(dimension, std::bit_floor(dimension / 16));
}

size_t RotationBlockOf(size_t encoded_length) {
  // A length that is a power of two is rotated whole: blocks then save nothing, and a client
  // that predates rotation_block (and pads to a power of two) would otherwise take the same
  // length and encode it differently. With blocks the length is never a power of two, so such
  // a client's own length check refuses the round instead.
  if (encoded_length <= kWholeUpTo || std::has_single_bit(encoded_length)) {
    return std::bit_ceil(std::max<size_t>(encoded_length, 1));
  }
  return std::bit_floor(encoded_length / 16);
}

size_t PaddedDimension(size_t dimension, size_t block) {
  const size_t whole = std::bit_ceil(std::max<size_t>(dimension, 1));
  if (block == 0 || block >= whole) return whole;
  return (dimension + block - 1) / block * block;
}

absl::StatusOr<RandomizedHadamard> RandomizedHadamard::Create(size_t dimension,
                                                              std::string_view seed, size_t block) {
  if (dimension == 0) return absl::InvalidArgumentError("cannot rotate an empty vector");
  if (dimension > (size_t{1} << 40)) {
    return absl::InvalidArgumentError(absl::StrCat("dimension ", dimension, " is too large"));
  }
  if (block != 0 && (!std::has_single_bit(block) || block < kMinRotationBlock)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rotation block ", block, " is not a power of two of at least ", kMinRotationBlock));
  }
  absl::StatusOr<SecureRandom> random = SecureRandom::FromSeed(seed, "fedmoe/v1/rotation-signs");
  if (!random.ok()) return random.status();
  const size_t padded = PaddedDimension(dimension, block);
  std::vector<uint64_t> bits((padded + 63) / 64);
  for (uint64_t& word : bits) word = (*random)();
  if (absl::Status status = random->status(); !status.ok()) return status;
  return RandomizedHadamard(dimension, padded, std::min(padded, block == 0 ? padded : block),
                            std::move(bits));
}

void RandomizedHadamard::TransformBlocks(std::span<double> data) const {
  for (size_t start = 0; start < data.size(); start += block_) {
    FastWalshHadamard(data.subspan(start, block_));
  }
}

absl::Status RandomizedHadamard::Rotate(std::span<const double> input,
                                        std::span<double> output) const {
  if (input.size() != dimension_ || output.size() != padded_dimension_) {
    return absl::InvalidArgumentError(
        absl::StrCat("rotation of dimension ", dimension_, " (padded ", padded_dimension_, ") got ",
                     input.size(), " values in and room for ", output.size()));
  }
  // 1/√R goes in before the transform: one pass fewer.
  const double scale = 1.0 / std::sqrt(static_cast<double>(block_));
  for (size_t i = 0; i < dimension_; ++i) output[i] = ApplySign(i, scale * input[i]);
  for (size_t i = dimension_; i < padded_dimension_; ++i) output[i] = 0.0;
  TransformBlocks(output);
  return absl::OkStatus();
}

namespace {

// out[k] = ±trunc(scale·input[k]), negative where bit first_sign + k of `signs` is set. Unaliased
// pointers, so that the loop vectorises.
void SignedFixedPoint(const float* __restrict input, size_t count, const uint64_t* __restrict signs,
                      size_t first_sign, double scale, uint64_t* __restrict out) {
  for (size_t k = 0; k < count; ++k) {
    const size_t bit = first_sign + k;
    const bool negative = ((signs[bit / 64] >> (bit % 64)) & 1) != 0;
    const double value = scale * static_cast<double>(input[k]);
    out[k] = static_cast<uint64_t>(static_cast<int64_t>(negative ? -value : value));
  }
}

}  // namespace

void RandomizedHadamard::FixedPointBlock(std::span<const float> input, size_t begin,
                                         double multiplier, int fraction_bits,
                                         std::span<uint64_t> out) const {
  const double scale =
      std::ldexp(multiplier / std::sqrt(static_cast<double>(block_)), fraction_bits);
  const size_t inside = begin < dimension_ ? std::min(out.size(), dimension_ - begin) : 0;
  // Truncated, off by less than one unit of 2^-F; as two's complement, whose sums in the
  // transform wrap mod 2^64 exactly as int64 sums would.
  SignedFixedPoint(input.data() + begin, inside, sign_bits_.data(), begin, scale, out.data());
  std::fill(out.begin() + static_cast<std::ptrdiff_t>(inside), out.end(), uint64_t{0});
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
  // H is symmetric and H·H = n·I, so the inverse of H·D/√n is D·H/√n, block by block.
  TransformBlocks(values);
  const double scale = 1.0 / std::sqrt(static_cast<double>(block_));
  values.resize(dimension_);
  for (size_t i = 0; i < dimension_; ++i) values[i] = ApplySign(i, values[i] * scale);
  return absl::OkStatus();
}

}  // namespace fedmoe::privacy
