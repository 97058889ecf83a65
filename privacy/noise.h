// Noise for differential privacy: the exact discrete Gaussian of Canonne, Kamath and Steinke
// (2020), the Skellam distribution (a difference of two Poissons), and the continuous Gaussian
// of central DP. All draw from SecureRandom.
#ifndef FEDMOE_PRIVACY_NOISE_H_
#define FEDMOE_PRIVACY_NOISE_H_

#include <cstdint>
#include <span>
#include <vector>

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

// One draw; prefer a DiscreteGaussianSampler for many draws with the same σ².
int64_t SampleDiscreteGaussian(double sigma_squared, SecureRandom& random);

// Skellam(μ, μ) = Poisson(μ) - Poisson(μ): mean 0, variance 2μ. μ > 0.
int64_t SampleSkellam(double mu, SecureRandom& random);

// N(0, σ²) on the reals, for central DP.
double SampleGaussian(double sigma, SecureRandom& random);

// The central Gaussian mechanism: adds N(0, σ²) to every coordinate of a decoded sum, on the
// coordinator, after unmasking (PrivacySpec MODE_CENTRAL). σ = z·C for noise multiplier z.
void AddCentralGaussianNoise(std::span<double> sum, double sigma, SecureRandom& random);

}  // namespace fedmoe::privacy

#endif  // FEDMOE_PRIVACY_NOISE_H_
