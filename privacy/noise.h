// Noise for differential privacy: the exact discrete Gaussian of Canonne, Kamath and Steinke
// (2020), the Skellam distribution (a difference of two Poissons), and the continuous Gaussian
// of central DP. All draw from SecureRandom.
#ifndef FEDMOE_PRIVACY_NOISE_H_
#define FEDMOE_PRIVACY_NOISE_H_

#include <cstdint>
#include <span>

#include "privacy/secure_random.h"

namespace fedmoe::privacy {

// The integer noise a client adds in distributed DP.
enum class NoiseMechanism { kNone, kDiscreteGaussian, kSkellam };

// Bernoulli(exp(-gamma)) for gamma ≥ 0, using only Bernoulli draws of probabilities in [0, 1]
// (CKS20, Algorithm 1), so that no exp() of a large argument is ever rounded.
bool SampleBernoulliExpMinus(double gamma, SecureRandom& random);

// The discrete Laplace distribution with scale t ≥ 1: P(x) ∝ exp(-|x|/t) (CKS20, Algorithm 2).
int64_t SampleDiscreteLaplace(int64_t t, SecureRandom& random);

// The discrete Gaussian N_Z(0, σ²): P(x) ∝ exp(-x²/(2σ²)) on the integers (CKS20,
// Algorithm 3). σ² > 0. The algorithm is exact given exact Bernoulli draws; here each
// Bernoulli(p) compares p with a 53-bit uniform.
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
