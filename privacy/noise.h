// Noise for differential privacy: the exact discrete Gaussian of Canonne, Kamath and Steinke
// (2020) and the Skellam distribution (a difference of two Poissons), both drawn from
// SecureRandom. Central DP adds discrete Gaussian noise too, in the ring (ring_encoder.h).
#ifndef FEDMOE_PRIVACY_NOISE_H_
#define FEDMOE_PRIVACY_NOISE_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "privacy/secure_random.h"

namespace fedmoe::privacy {

// The integer noise a client adds in distributed DP.
enum class NoiseMechanism { kNone, kDiscreteGaussian, kSkellam };

// Bernoulli(exp(-gamma)) for gamma ≥ 0: a 53-bit uniform compared with e^-γ in double
// precision. CKS20's Algorithm 1 builds the same draw from Bernoulli(γ/k) draws to stay in
// exact arithmetic; with double-precision uniforms that buys no exactness, and it costs three
// uniforms where this costs one.
bool SampleBernoulliExpMinus(double gamma, SecureRandom& random);

// The discrete Gaussian N_Z(0, σ²): P(x) ∝ exp(-x²/(2σ²)) on the integers, by CKS20's
// Algorithm 3: a discrete Laplace proposal of scale t = ⌊σ⌋ + 1 (Algorithm 2) accepted with
// probability exp(-(|y| - σ²/t)²/(2σ²)). The algorithm is exact given exact Bernoulli draws;
// here each Bernoulli compares a 53-bit uniform with a probability in double precision, so
// each draw follows the law to within about 2^-52.
//
// Built once per σ², which it tabulates (e^(-u/t) for the proposal's u < t, and e^-1), so a
// draw costs a handful of uniforms and one exp().
class DiscreteGaussianSampler {
 public:
  // σ² > 0.
  explicit DiscreteGaussianSampler(double sigma_squared);
  int64_t Sample(SecureRandom& random) const;
  // The proposal alone: P(x) ∝ exp(-|x|/t).
  int64_t SampleDiscreteLaplace(SecureRandom& random) const;

 private:
  double sigma_squared_;
  int64_t t_;
  double center_;
  // e^(-u/t) for u < t, when t is small enough to tabulate; computed otherwise.
  std::vector<double> exp_minus_u_over_t_;
};

// G(ν) = log P(0) - log P(ν) of a symmetric law on the integers, as the even polynomial
// c2·ν² + c4·ν⁴ + c6·ν⁶; increasing in |ν| over the range a table covers.
struct EvenLogWeight {
  double c2 = 0;
  double c4 = 0;
  double c6 = 0;
  long double At(long double nu) const {
    const long double square = nu * nu;
    return square *
           (static_cast<long double>(c2) + square * (static_cast<long double>(c4) + square * c6));
  }
};

// A symmetric integer noise drawn in bulk, at about one 64-bit random word per value, for the
// noise of a whole update: the discrete Gaussian, and the Skellam at the large means of real
// rings. The integers are cut into cells of t = 2^k consecutive values, with t the largest
// power of two at most σ/`cells_per_sigma` (t = 1 for small σ), and the cells out to 12σ are
// tabulated with weights e^-G(m), m being a cell's value nearest zero. A draw takes a cell from
// an alias table and a uniform offset in it, and keeps the value x with probability
// e^-(G(x) - G(m)): cell weight times acceptance is proportional to e^-G(x), which is the law.
// At the default resolution about 99% of draws are kept.
//
// How near it is: the ledger charges every draw's distance from the law to δ
// (NoiseDrawTotalVariation), and N draws are within N times it, so a draw must be far nearer
// than double precision: N reaches 2^40 over a federation's life. Everything that decides a
// draw is exact or in 113-bit quad precision:
//   - the cell weights e^-G(m) are computed in quad, with a compensated total, and held as
//     integers with 112 fraction bits per column, which the alias table splits exactly;
//   - an alias coin is compared with its column's 112-bit threshold bit for bit;
//   - the acceptance e^-γ is decided by bounds in double with a 2^-45 margin where they are
//     clear, and otherwise by a 128-bit uniform against e^-γ in quad;
//   - the cut at 12σ drops mass below 2^-107.
// So each draw is within 2^-105 of the law G describes in total variation (against about 2^-52
// for DiscreteGaussianSampler's double-precision Bernoulli draws).
//
// Most draws are decided by the first word (cell, alias coin, acceptance and offset bits),
// in a loop without branches that compilers vectorise; the rest (an alias coin or an
// acceptance too close to call on 12 bits, a rejection, or a cell wider than 2^28 values)
// are finished one at a time with more words.
class TabulatedNoise {
 public:
  // The discrete Gaussian N_Z(0, σ²), σ² > 0: G(ν) = ν²/(2σ²). 1 ≤ cells_per_sigma ≤ 64
  // (tests pick coarse cells to exercise the acceptance).
  // How draws are decided: kFast takes the shortcuts above; kExact decides every alias coin on
  // all its 112 bits and every acceptance against e^-γ in quad, which is the law by
  // construction, for tests to check that the shortcuts do not change it.
  enum class Decisions { kFast, kExact };

  static TabulatedNoise DiscreteGaussian(double sigma_squared, double cells_per_sigma = 64,
                                         Decisions decisions = Decisions::kFast);

  // Skellam(μ, μ), P(ν) = e^(-2μ) I_|ν|(2μ), for μ ≥ kMinTabulatedSkellamMean. With z = 2μ,
  // Debye's uniform expansion of I_ν(z) gives
  //   G(ν) = ν²/(2z) + ν²/(4z²) + (13/48)·ν²/z³ - ν⁴/(24z³) - ν⁴/(8z⁴) + ν⁶/(80z⁵),
  // whose first omitted terms, of order ν⁸/z⁷ and ν⁶/z⁶, are below 10^-13 at that smallest
  // mean over |ν| ≤ 12√z and shrink as z^-3. (PoissonSampler's PTRS, which the smaller means
  // keep, is within about 5√μ·2^-53 per draw, 2^-38 at that mean.)
  static absl::StatusOr<TabulatedNoise> Skellam(double mu);
  static constexpr double kMinTabulatedSkellamMean = 0x1.0p24;

  int64_t Sample(SecureRandom& random) const;
  // out[i] = a fresh draw, for every i.
  void Fill(std::span<int64_t> out, SecureRandom& random) const;

  // t, the cell width.
  int64_t cell_width() const { return int64_t{1} << cell_bits_; }
  const EvenLogWeight& log_weight() const { return log_weight_; }
  // The bound on one draw's total variation from its law (see the class comment).
  static constexpr double kDrawTotalVariation = 0x1.0p-105;

 private:
  static_assert(__SIZEOF_FLOAT128__ == 16, "the table's weights need GCC's or Clang's __float128");
  __extension__ using Float128 = __float128;
  __extension__ using Uint128 = unsigned __int128;
  // G's coefficients in quad, which define the law; log_weight_ holds them rounded to double
  // for the vectorised first pass, whose decisions keep a margin far wider than that rounding.
  struct ExactLogWeight {
    Float128 c2 = 0;
    Float128 c4 = 0;
    Float128 c6 = 0;
  };

  // σ sets the cells and the cut at 12σ.
  TabulatedNoise(ExactLogWeight exact, double sigma, double cells_per_sigma, Decisions decisions);

  struct Candidate {
    int64_t value;
    // The value of its cell nearest zero, m.
    int64_t nearest;
    // e^-gamma is the probability of keeping the value (γ in double).
    double gamma;
  };
  Candidate CandidateOf(uint64_t cell, uint64_t offset) const;
  // Whether to keep `candidate` (at `offset` in its cell) when the acceptance uniform starts with
  // these 12 bits, drawing the rest as the bounds of e^-γ need them.
  bool Keep(const Candidate& candidate, uint64_t offset, uint64_t accept_prefix,
            SecureRandom& random) const;
  // Whether the alias coin that starts with these 12 bits keeps the column's own cell, drawing
  // its other 100 bits if they are needed.
  bool CoinKeepsColumn(uint64_t column, uint64_t coin, SecureRandom& random) const;
  // Finishes the draw that starts with `word`, drawing more words as it needs them.
  int64_t Finish(uint64_t word, SecureRandom& random) const;

  ExactLogWeight exact_;
  EvenLogWeight log_weight_;
  int cell_bits_;
  // Cells are [j·t, j·t + t) for j in [-negative_cells_, negative_cells_): column c of the
  // alias table is the cell j = c - negative_cells_.
  int64_t negative_cells_;
  int column_bits_;
  // Column c keeps its own cell when a 112-bit coin is below threshold_[c] (at most 2^112),
  // else takes its alias; full columns are their own alias.
  std::vector<Uint128> threshold_;
  // (threshold >> 100) | alias << 16: the alias, and what the first word's 12 coin bits need,
  // in one load.
  std::vector<uint64_t> packed_;
  // Whether the offset fits in the first word beside the other fields.
  bool one_word_;
  Decisions decisions_;
};

// Poisson(μ), μ > 0. Small means multiply uniforms until the product falls below e^-μ (Knuth);
// large ones use Hörmann's transformed rejection with squeeze (PTRS, 1993), which accepts most
// draws after two uniforms and no logarithm. Built once per μ, which it prepares PTRS's
// constants for.
//
// PTRS maps a 53-bit uniform through a continuous transform onto k, so each k gets about
// 2^53/(2.5·√μ) of the uniform's values and its probability is off by one value in that many:
// a draw is within about 5√μ·2^-53 of the Poisson law in total variation, 2^-38 at μ = 2^24
// but only 2^-23 at μ = 10^16 (σ ≈ 10^8, the scale a 32-bit ring gives). The encoder draws
// Skellam noise from TabulatedNoise::Skellam from μ = 2^24 up.
//
// The rarer draws that neither squeeze decides compare log v + log(1/α) − log(a/u_s² + b)
// with log P(k), and rounding in either side moves each k's acceptance, so its probability, by
// a factor e^(±Δ), Δ the comparison's worst error; the law then moves by at most 2Δ in total
// variation. The left side is at most 0 and, unless v or u_s is 0 (then k is refused or
// accepted whatever the rounding), at least −(37 + 74 + log a) (v, u_s ≥ 2^-53), above −130
// for μ up to 10^16. So only log P(k) ≥ −130 matters, and there PoissonLogProbability keeps
// every term's magnitude below 140 and loses at most 32 ulps of it (3·10^-13); with the left
// side's own few ulps of at most 130, Δ < 2^-40, hence kPtrsAcceptanceTotalVariation. The textbook
// −μ + k·log μ − lgamma(k + 1) cancels terms of about μ·log μ (10^8 at μ = 2^23) and errs by up to
// 10^-8.
class PoissonSampler {
 public:
  explicit PoissonSampler(double mu);
  int64_t Sample(SecureRandom& random) const;

 private:
  double mu_;
  double limit_;
  double log_mu_;
  double b_;
  double a_;
  double log_inverse_alpha_;
  double v_r_;
};

// log P(X = k) for X ~ Poisson(μ), μ ≥ 10, k ≥ 0, within 2^-40 absolutely wherever it is at
// least −130: Stirling's series with the μ·log μ terms cancelled analytically (see
// PoissonSampler).
double PoissonLogProbability(int64_t k, double mu);

// What rounding in PTRS's acceptance test may add to one draw's total variation (2Δ, Δ < 2^-40).
inline constexpr double kPtrsAcceptanceTotalVariation = 0x1.0p-39;

// An upper bound on the total variation between one draw of the noise RingEncoder adds for
// `mechanism` at this variance and the law the accountant prices; 0 without noise. It follows
// the encoder's choice of sampler: the table for the discrete Gaussian; for Skellam, the table
// from a mean of TabulatedNoise::kMinTabulatedSkellamMean up and two PoissonSampler draws below.
// N draws are within N times this, which the ledger charges to δ (RdpToEpsilon).
double NoiseDrawTotalVariation(NoiseMechanism mechanism, double variance);

// Skellam(μ, μ) = Poisson(μ) - Poisson(μ): mean 0, variance 2μ. μ > 0. For many draws, take
// two from one PoissonSampler.
int64_t SampleSkellam(double mu, SecureRandom& random);

}  // namespace fedmoe::privacy

#endif  // FEDMOE_PRIVACY_NOISE_H_
