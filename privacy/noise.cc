#include "privacy/noise.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace fedmoe::privacy {

bool SampleBernoulliExpMinus(double gamma, SecureRandom& random) {
  const double v = random.UniformDouble();
  // Squeeze: 1 - γ ≤ e^-γ ≤ 1/(1 + γ) decides most draws without an exp().
  if (v < 1.0 - gamma) return true;
  if (v * (1.0 + gamma) >= 1.0) return false;
  return v < std::exp(-gamma);
}

namespace {

const double kExpMinusOne = std::exp(-1.0);
// Scales up to this are tabulated: a table of 2^20 doubles is 8 MiB.
constexpr int64_t kMaxTabulatedScale = int64_t{1} << 20;

}  // namespace

DiscreteGaussianSampler::DiscreteGaussianSampler(double sigma_squared)
    : sigma_squared_(sigma_squared),
      t_(static_cast<int64_t>(std::floor(std::sqrt(sigma_squared))) + 1),
      center_(sigma_squared / static_cast<double>(t_)) {
  if (t_ <= kMaxTabulatedScale) {
    exp_minus_u_over_t_.resize(static_cast<size_t>(t_));
    for (int64_t u = 0; u < t_; ++u) {
      exp_minus_u_over_t_[static_cast<size_t>(u)] =
          std::exp(-static_cast<double>(u) / static_cast<double>(t_));
    }
  }
}

int64_t DiscreteGaussianSampler::SampleDiscreteLaplace(SecureRandom& random) const {
  while (true) {
    const auto u = static_cast<int64_t>(random.UniformBelow(static_cast<uint64_t>(t_)));
    const double keep = exp_minus_u_over_t_.empty()
                            ? std::exp(-static_cast<double>(u) / static_cast<double>(t_))
                            : exp_minus_u_over_t_[static_cast<size_t>(u)];
    if (!(random.UniformDouble() < keep)) continue;
    int64_t v = 0;  // Geometric: P(v ≥ k) = e^-k.
    while (random.UniformDouble() < kExpMinusOne) ++v;
    const int64_t magnitude = u + t_ * v;
    const bool negative = random.Bernoulli(0.5);
    if (negative && magnitude == 0) continue;  // Zero would otherwise be drawn twice as often.
    return negative ? -magnitude : magnitude;
  }
}

int64_t DiscreteGaussianSampler::Sample(SecureRandom& random) const {
  while (true) {
    const int64_t y = SampleDiscreteLaplace(random);
    const double distance = std::abs(static_cast<double>(y)) - center_;
    if (SampleBernoulliExpMinus(distance * distance / (2.0 * sigma_squared_), random)) return y;
  }
}

namespace {

// The first word of a tabulated draw, from the top: column bits, then these fields, then the
// offset in the cell.
constexpr int kCoinBits = 12;
constexpr int kAcceptBits = 12;
constexpr int kMaxColumnBits = 12;
// Cells reach this many σ on each side; the mass beyond, below 2^-107, is never drawn.
constexpr double kTableSigmas = 12.0;
// The alias table's weights: each column holds 2^112 units, in 128-bit integers.
constexpr int kThresholdBits = 112;
// Decisions taken in double keep this far from the bound they compare with, far wider than
// double rounding of γ and of e^-γ; nearer ones are taken in quad.
constexpr double kMargin = 0x1.0p-45;

// γ = G(x) - G(m) for |x| = |m| + offset, without the cancellation of a difference: x² - m²
// = offset·(2|m| + offset), times c2 + c4·(x² + m²) + c6·(x⁴ + x²m² + m⁴). In double for the
// fast paths, in quad for the exact one. kQuadratic: c4 = c6 = 0 (the discrete Gaussian),
// which the vectorised pass keeps lean.
template <bool kQuadratic = false, typename Real, typename Weight>
Real GammaOf(const Weight& weight, Real nearest, Real offset) {
  const Real squares = offset * (Real{2} * nearest + offset);
  if constexpr (kQuadratic) return squares * weight.c2;
  const Real far = nearest + offset;
  const Real far_squared = far * far;
  const Real near_squared = nearest * nearest;
  const Real quartic_sum =
      far_squared * far_squared + far_squared * near_squared + near_squared * near_squared;
  return squares * (weight.c2 + weight.c4 * (far_squared + near_squared) + weight.c6 * quartic_sum);
}

// 1 - γ + γ²/2 - γ³/6 ≤ e^-γ ≤ 1 - γ + γ²/2 for γ ≥ 0 (alternating Taylor remainders).
double KeepAtLeast(double gamma) { return 1.0 - gamma * (1.0 - gamma * (0.5 - gamma / 6.0)); }
double KeepAtMost(double gamma) { return 1.0 - gamma * (1.0 - gamma * 0.5); }

}  // namespace

// libquadmath's exponential (GCC's runtime library). Declared here rather than through
// <quadmath.h>, which sits in GCC's own include directory, out of Clang's sight.
extern "C" __float128 expq(__float128 x) noexcept;

TabulatedNoise TabulatedNoise::DiscreteGaussian(double sigma_squared, double cells_per_sigma,
                                                Decisions decisions) {
  // 1/(2σ²) rounded down, not to nearest: the law drawn then has a variance of at least σ²,
  // which the accountant's price at σ² covers (its bounds fall as the variance grows), and the
  // rounding costs no total variation.
  double c2 = 1.0 / (2.0 * sigma_squared);
  if (std::fma(c2, 2.0 * sigma_squared, -1.0) > 0.0) c2 = std::nextafter(c2, 0.0);
  return TabulatedNoise({.c2 = c2}, std::sqrt(sigma_squared), cells_per_sigma, decisions);
}

absl::StatusOr<TabulatedNoise> TabulatedNoise::Skellam(double mu) {
  if (!(mu >= kMinTabulatedSkellamMean)) {
    return absl::InvalidArgumentError(
        absl::StrCat("the tabulated Skellam needs a mean of at least 2^24, not ", mu,
                     ": below it the series for log I_ν(2μ) is not exact enough"));
  }
  const Float128 z = Float128{2} * mu;
  const Float128 z2 = z * z;
  const Float128 z3 = z2 * z;
  const ExactLogWeight weight{.c2 = 1 / (2 * z) + 1 / (4 * z2) + 13 / (48 * z3),
                              .c4 = -1 / (24 * z3) - 1 / (8 * z2 * z2),
                              .c6 = 1 / (80 * z3 * z2)};
  return TabulatedNoise(weight, std::sqrt(2.0 * mu), 64, Decisions::kFast);
}

TabulatedNoise::TabulatedNoise(ExactLogWeight exact, double sigma, double cells_per_sigma,
                               Decisions decisions)
    : exact_(exact),
      log_weight_{.c2 = static_cast<double>(exact.c2),
                  .c4 = static_cast<double>(exact.c4),
                  .c6 = static_cast<double>(exact.c6)},
      decisions_(decisions) {
  // t = 2^k ≤ σ/cells_per_sigma, at least 1.
  const double widest = sigma / std::clamp(cells_per_sigma, 1.0, 64.0);
  cell_bits_ = widest < 2.0 ? 0 : static_cast<int>(std::floor(std::log2(widest)));
  cell_bits_ = std::min(cell_bits_, 62);
  const int64_t width = cell_width();
  negative_cells_ =
      static_cast<int64_t>(std::ceil(kTableSigmas * sigma / static_cast<double>(width))) + 1;
  column_bits_ = std::bit_width(static_cast<uint64_t>(2 * negative_cells_ - 1));
  const size_t columns = size_t{1} << column_bits_;
  one_word_ =
      column_bits_ <= kMaxColumnBits && cell_bits_ <= 64 - column_bits_ - kCoinBits - kAcceptBits;

  // Cell weights e^-G(m) in quad, then as integers that sum to exactly columns·2^112, so that
  // the alias table below is built without rounding.
  std::vector<Float128> weights(columns, 0);
  // The total by Neumaier's compensated sum: its error would otherwise grow with the ~3000
  // terms and land, through the integer residue below, on the heaviest cell.
  Float128 total = 0;
  Float128 compensation = 0;
  for (size_t c = 0; c < static_cast<size_t>(2 * negative_cells_); ++c) {
    const auto nearest = static_cast<Float128>(CandidateOf(c, 0).value);
    weights[c] = expq(-GammaOf(exact_, Float128{0}, nearest));
    const Float128 sum = total + weights[c];
    const Float128 larger = total >= weights[c] ? total : weights[c];
    const Float128 smaller = total >= weights[c] ? weights[c] : total;
    compensation += (larger - sum) + smaller;
    total = sum;
  }
  total += compensation;
  const Uint128 capacity = Uint128{1} << kThresholdBits;
  const Float128 units = static_cast<Float128>(columns) * static_cast<Float128>(capacity);
  std::vector<Uint128> integer_weights(columns);
  Uint128 assigned = 0;
  size_t heaviest = 0;
  for (size_t c = 0; c < columns; ++c) {
    integer_weights[c] = static_cast<Uint128>(weights[c] / total * units);
    assigned += integer_weights[c];
    if (integer_weights[c] > integer_weights[heaviest]) heaviest = c;
  }
  // The residue, a few thousand units of 2^124 (each share is rounded in quad, then truncated),
  // can be of either sign; arithmetic mod 2^128 adds it to the heaviest column, which holds far
  // more, correctly either way.
  integer_weights[heaviest] += static_cast<Uint128>(columns) * capacity - assigned;

  // Vose's alias method: a light column is topped up from a heavy one, which may turn light.
  threshold_.assign(columns, capacity);
  std::vector<uint64_t> alias(columns);
  for (size_t c = 0; c < columns; ++c) alias[c] = c;
  std::vector<size_t> light;
  std::vector<size_t> heavy;
  for (size_t c = 0; c < columns; ++c) {
    (integer_weights[c] < capacity ? light : heavy).push_back(c);
  }
  while (!light.empty() && !heavy.empty()) {
    const size_t short_column = light.back();
    light.pop_back();
    const size_t donor = heavy.back();
    threshold_[short_column] = integer_weights[short_column];
    alias[short_column] = donor;
    integer_weights[donor] -= capacity - integer_weights[short_column];
    if (integer_weights[donor] < capacity) {
      heavy.pop_back();
      light.push_back(donor);
    }
  }
  // What is left holds exactly one column's weight (the integers sum exactly), so it keeps
  // its own cell whatever the coin: its threshold is the whole 2^112, whose top is 4096, above
  // every 12-bit coin.
  packed_.resize(columns);
  for (size_t c = 0; c < columns; ++c) {
    packed_[c] =
        static_cast<uint64_t>(threshold_[c] >> (kThresholdBits - kCoinBits)) | (alias[c] << 16);
  }
}

TabulatedNoise::Candidate TabulatedNoise::CandidateOf(uint64_t cell, uint64_t offset) const {
  const int64_t j = static_cast<int64_t>(cell) - negative_cells_;
  const int64_t width = cell_width();
  // A negative cell counts its offset from its end nearest zero: x = j·t + (t - 1 - offset).
  const bool negative = j < 0;
  const auto from_start = static_cast<int64_t>(negative ? (width - 1) - offset : offset);
  const int64_t value = j * width + from_start;
  const int64_t nearest = negative ? (-j - 1) * width + 1 : j * width;
  return {value, nearest,
          GammaOf(log_weight_, static_cast<double>(nearest), static_cast<double>(offset))};
}

bool TabulatedNoise::CoinKeepsColumn(uint64_t column, uint64_t coin, SecureRandom& random) const {
  // 12 bits settle every coin but one in 4096, unless every coin is to be drawn in full; then
  // 100 more bits are compared with the threshold. A coin equal to it is not below it.
  const uint64_t threshold_top = packed_[column] & 0xffff;
  if (decisions_ == Decisions::kFast && coin != threshold_top) return coin < threshold_top;
  constexpr int kRestBits = kThresholdBits - kCoinBits;
  const uint64_t first = random();
  const uint64_t second = random();
  const Uint128 drawn = (static_cast<Uint128>(coin) << kRestBits) |
                        (static_cast<Uint128>(first) << (kRestBits - 64)) |
                        (second >> (128 - kRestBits));
  return drawn < threshold_[column];
}

bool TabulatedNoise::Keep(const Candidate& candidate, uint64_t offset, uint64_t accept_prefix,
                          SecureRandom& random) const {
  // The uniform's first 12 bits decide most draws against bounds of e^-γ, 64 more bits most of
  // the rest against e^-γ in double, and the few within 2^-45 of it are decided in quad.
  const bool fast = decisions_ == Decisions::kFast;
  const double gamma = candidate.gamma;
  const auto prefix = static_cast<double>(accept_prefix);
  if (fast && (prefix + 1.0) * 0x1.0p-12 < KeepAtLeast(gamma) - kMargin) return true;
  if (fast && prefix * 0x1.0p-12 > KeepAtMost(gamma) + kMargin) return false;
  const uint64_t more = random();
  const double uniform = (prefix + static_cast<double>(more) * 0x1.0p-64) * 0x1.0p-12;
  const double keep = std::exp(-gamma);
  if (fast && uniform < keep - kMargin) return true;
  if (fast && uniform > keep + kMargin) return false;
  const Float128 exact_keep = expq(
      -GammaOf(exact_, static_cast<Float128>(candidate.nearest), static_cast<Float128>(offset)));
  if (exact_keep >= 1) return true;
  // Both as 128-bit fractions: the uniform's bits, and e^-γ rounded down.
  const Float128 two_to_64 = 0x1.0p64;
  const auto threshold = static_cast<Uint128>(exact_keep * two_to_64 * two_to_64);
  const Uint128 bits = (static_cast<Uint128>(accept_prefix) << 116) |
                       (static_cast<Uint128>(more) << 52) | (random() >> 12);
  return bits < threshold;
}

int64_t TabulatedNoise::Finish(uint64_t word, SecureRandom& random) const {
  const int accept_shift = 64 - column_bits_ - kCoinBits - kAcceptBits;
  while (true) {
    const uint64_t column = word >> (64 - column_bits_);
    const uint64_t coin = (word >> (64 - column_bits_ - kCoinBits)) & ((1U << kCoinBits) - 1);
    const uint64_t cell = CoinKeepsColumn(column, coin, random) ? column : packed_[column] >> 16;
    // A cell too wide to share the first word (then cell_bits_ > 28) takes a second one.
    const uint64_t offset =
        one_word_ ? word & ((uint64_t{1} << cell_bits_) - 1) : random() >> (64 - cell_bits_);
    const Candidate candidate = CandidateOf(cell, offset);
    if (Keep(candidate, offset, (word >> accept_shift) & ((1U << kAcceptBits) - 1), random)) {
      return candidate.value;
    }
    word = random();
  }
}

int64_t TabulatedNoise::Sample(SecureRandom& random) const { return Finish(random(), random); }

namespace {

// What the branch-free pass over first words needs of a TabulatedNoise.
struct FirstWordLayout {
  const uint64_t* packed;
  int column_bits;
  int coin_shift;
  int accept_shift;
  uint64_t offset_mask;
  int cell_bits;
  int64_t negative_cells;
  EvenLogWeight log_weight;
};

// TabulatedNoise::CandidateOf without branches, for the draws that 12 coin bits and
// 12 acceptance bits settle: a coin away from its column's threshold, and a uniform surely
// below a lower bound of e^-γ (by the margin). The others are flagged. A free function with
// unaliased pointers, so that the loop vectorises.
template <bool kQuadratic>
size_t SettleFirstWords(const FirstWordLayout layout, const uint64_t* __restrict words,
                        size_t count, int64_t* __restrict values, uint8_t* __restrict unsettled) {
  const uint64_t* __restrict packed = layout.packed;
  constexpr uint64_t kFieldMask = (uint64_t{1} << kCoinBits) - 1;
  static_assert(kCoinBits == kAcceptBits);
  size_t unsettled_count = 0;
#pragma omp simd reduction(+ : unsettled_count)
  for (size_t i = 0; i < count; ++i) {
    const uint64_t word = words[i];
    const uint64_t column = word >> (64 - layout.column_bits);
    const uint64_t coin = (word >> layout.coin_shift) & kFieldMask;
    const uint64_t entry = packed[column];
    const uint64_t threshold_top = entry & 0xffff;
    const uint64_t cell = coin < threshold_top ? column : entry >> 16;
    const auto j = static_cast<int64_t>(cell) - layout.negative_cells;
    const int64_t negative = j >> 63;  // all ones for a negative cell
    const auto offset = static_cast<int64_t>(word & layout.offset_mask);
    const auto mirror = static_cast<int64_t>(layout.offset_mask) & negative;
    // Cells are 2^cell_bits wide: shifts, not multiplications.
    const int64_t nearest = ((j ^ negative) << layout.cell_bits) + (negative & 1);
    const auto off = static_cast<double>(offset);
    const double gamma = GammaOf<kQuadratic>(layout.log_weight, static_cast<double>(nearest), off);
    const auto accept = static_cast<double>((word >> layout.accept_shift) & kFieldMask);
    values[i] =
        static_cast<int64_t>(static_cast<uint64_t>(j) << layout.cell_bits) + (offset ^ mirror);
    const double keep_at_least = KeepAtLeast(gamma);
    const bool open =
        (coin == threshold_top) | (accept + 1.0 > (keep_at_least - kMargin) * 0x1.0p12);
    unsettled[i] = static_cast<uint8_t>(open);
    unsettled_count += open ? 1 : 0;
  }
  return unsettled_count;
}

}  // namespace

void TabulatedNoise::Fill(std::span<int64_t> out, SecureRandom& random) const {
  if (!one_word_ || decisions_ == Decisions::kExact) {
    for (int64_t& value : out) value = Sample(random);
    return;
  }
  const int coin_shift = 64 - column_bits_ - kCoinBits;
  const FirstWordLayout layout{packed_.data(),
                               column_bits_,
                               coin_shift,
                               coin_shift - kAcceptBits,
                               (uint64_t{1} << cell_bits_) - 1,
                               cell_bits_,
                               negative_cells_,
                               log_weight_};
  const bool quadratic = log_weight_.c4 == 0 && log_weight_.c6 == 0;
  constexpr size_t kBatch = 1024;
  std::array<uint64_t, kBatch> words;
  std::array<uint8_t, kBatch> unsettled{};
  for (size_t start = 0; start < out.size(); start += kBatch) {
    const size_t count = std::min(kBatch, out.size() - start);
    random.Fill(std::span(words.data(), count));
    int64_t* batch = out.data() + start;
    size_t open =
        quadratic ? SettleFirstWords<true>(layout, words.data(), count, batch, unsettled.data())
                  : SettleFirstWords<false>(layout, words.data(), count, batch, unsettled.data());
    // Eight flags at a time: most batches have a few open draws, at most.
    for (size_t group = 0; open > 0 && group < count; group += 8) {
      uint64_t flags = 0;
      std::memcpy(&flags, unsettled.data() + group, 8);
      if (flags == 0) continue;
      for (size_t i = group; i < std::min(group + 8, count); ++i) {
        if (unsettled[i] == 0) continue;
        batch[i] = Finish(words[i], random);
        --open;
      }
    }
  }
}

namespace {

// g(x) = (1 + x)·log1p(x) − x, for x > −1, to a few ulps of g itself. Near 0 the two terms
// agree to many digits, so there the power series Σ_{n≥2} (−x)^n / (n(n−1)) is summed instead:
// at |x| ≤ 1/2 its terms fall by half or more and all are summed until they no longer move the
// sum. Beyond, (1 + x)·log1p(x) and x differ by at least a fifth of either, so their difference
// loses at most three bits.
double OnePlusXLogOnePlusXMinusX(double x) {
  if (std::abs(x) > 0.5) return (1.0 + x) * std::log1p(x) - x;
  double sum = 0.0;
  double power = x * x;  // (−x)^n for n = 2
  for (int n = 2; n < 80; ++n) {
    const double term = power / (static_cast<double>(n) * static_cast<double>(n - 1));
    const double next = sum + term;
    if (next == sum) break;
    sum = next;
    power *= -x;
  }
  return sum;
}

// log k! − (k·log k − k + ½·log(2πk)), Stirling's series, for k ≥ 10: the terms through k^-9,
// whose remainder is below the next one, 691/(360360·k^11) < 2·10^-14.
double StirlingCorrection(double k) {
  const double inverse = 1.0 / k;
  const double inverse_squared = inverse * inverse;
  return inverse * (1.0 / 12.0 +
                    inverse_squared *
                        (-1.0 / 360.0 +
                         inverse_squared * (1.0 / 1260.0 +
                                            inverse_squared * (-1.0 / 1680.0 +
                                                               inverse_squared * (1.0 / 1188.0)))));
}

}  // namespace

double PoissonLogProbability(int64_t k, double mu) {
  const auto kd = static_cast<double>(k);
  if (k < 10) return -mu + kd * std::log(mu) - std::lgamma(kd + 1.0);
  // −μ + k·log μ − log k! = −μ·g((k − μ)/μ) − ½·log(2πk) − StirlingCorrection(k): the terms of
  // about μ·log μ cancel on paper, not in floating point. k − μ is exact wherever P(k) matters
  // (Sterbenz: μ/2 ≤ k ≤ 2μ).
  constexpr double kLogTwoPi = 1.8378770664093454836;
  return -mu * OnePlusXLogOnePlusXMinusX((kd - mu) / mu) - 0.5 * (kLogTwoPi + std::log(kd)) -
         StirlingCorrection(kd);
}

PoissonSampler::PoissonSampler(double mu)
    : mu_(mu),
      limit_(std::exp(-mu)),
      log_mu_(std::log(mu)),
      b_(0.931 + 2.53 * std::sqrt(mu)),
      a_(-0.059 + 0.02483 * b_),
      log_inverse_alpha_(std::log(1.1239 + 1.1328 / (b_ - 3.4))),
      v_r_(0.9277 - 3.6224 / (b_ - 2.0)) {}

int64_t PoissonSampler::Sample(SecureRandom& random) const {
  if (mu_ < 10.0) {
    int64_t k = 0;
    double product = random.UniformDouble();
    while (product > limit_) {
      ++k;
      product *= random.UniformDouble();
    }
    return k;
  }
  while (true) {
    const double u = random.UniformDouble() - 0.5;
    const double v = random.UniformDouble();
    const double us = 0.5 - std::abs(u);
    const auto k = static_cast<int64_t>(std::floor((2.0 * a_ / us + b_) * u + mu_ + 0.43));
    if (us >= 0.07 && v <= v_r_) return k;
    if (k < 0 || (us < 0.013 && v > us)) continue;
    if (std::log(v) + log_inverse_alpha_ - std::log(a_ / (us * us) + b_) <=
        PoissonLogProbability(k, mu_)) {
      return k;
    }
  }
}

double NoiseDrawTotalVariation(NoiseMechanism mechanism, double variance) {
  switch (mechanism) {
    case NoiseMechanism::kNone:
      return 0.0;
    case NoiseMechanism::kDiscreteGaussian:
      return TabulatedNoise::kDrawTotalVariation;
    case NoiseMechanism::kSkellam: {
      const double mean = variance / 2.0;
      if (mean >= TabulatedNoise::kMinTabulatedSkellamMean) {
        // Plus Debye's series cut after ν⁶/z⁵: its remainder is within 10^-12 of log I_ν at
        // z = 2^25 (checked in the tests against the Bessel recurrence) and shrinks as z^-3.
        // Log-weights off by κ move a normalised law by at most 2κ(1 + κ) < 3κ.
        const double z = 2.0 * mean;
        return TabulatedNoise::kDrawTotalVariation + 3.0 * 1e-12 * std::pow(0x1.0p25 / z, 3);
      }
      // Two Poisson draws, each within 5√μ·2^-53 + 2^-39 by PTRS (PoissonSampler's comment);
      // below μ = 10 a product of at most a few dozen 53-bit uniforms, well within 2^-45.
      return 2.0 * (mean < 10.0
                        ? 0x1.0p-45
                        : 5.0 * std::sqrt(mean) * 0x1.0p-53 + kPtrsAcceptanceTotalVariation);
    }
  }
  return 1.0;
}

int64_t SampleSkellam(double mu, SecureRandom& random) {
  const PoissonSampler poisson(mu);
  return poisson.Sample(random) - poisson.Sample(random);
}

}  // namespace fedmoe::privacy
