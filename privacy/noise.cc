#include "privacy/noise.h"

#include <cmath>
#include <random>

namespace fedmoe::privacy {

bool SampleBernoulliExpMinus(double gamma, SecureRandom& random) {
  // exp(-γ) = exp(-1)^⌊γ⌋ · exp(-(γ - ⌊γ⌋)): every factor is a draw with γ' in [0, 1].
  while (gamma > 1.0) {
    if (!SampleBernoulliExpMinus(1.0, random)) return false;
    gamma -= 1.0;
  }
  // For γ in [0, 1]: the first K with Bernoulli(γ/K) = 0 is odd with probability exp(-γ).
  int64_t k = 1;
  while (random.Bernoulli(gamma / static_cast<double>(k))) ++k;
  return (k % 2) == 1;
}

int64_t SampleDiscreteLaplace(int64_t t, SecureRandom& random) {
  while (true) {
    const auto u = static_cast<int64_t>(random.UniformBelow(static_cast<uint64_t>(t)));
    if (!SampleBernoulliExpMinus(static_cast<double>(u) / static_cast<double>(t), random)) {
      continue;
    }
    int64_t v = 0;
    while (SampleBernoulliExpMinus(1.0, random)) ++v;
    const int64_t magnitude = u + t * v;
    const bool negative = random.Bernoulli(0.5);
    if (negative && magnitude == 0) continue;  // Zero would otherwise be drawn twice as often.
    return negative ? -magnitude : magnitude;
  }
}

int64_t SampleDiscreteGaussian(double sigma_squared, SecureRandom& random) {
  const double sigma = std::sqrt(sigma_squared);
  const auto t = static_cast<int64_t>(std::floor(sigma)) + 1;
  const double center = sigma_squared / static_cast<double>(t);
  while (true) {
    const int64_t y = SampleDiscreteLaplace(t, random);
    const double distance = std::abs(static_cast<double>(y)) - center;
    if (SampleBernoulliExpMinus(distance * distance / (2.0 * sigma_squared), random)) return y;
  }
}

int64_t SampleSkellam(double mu, SecureRandom& random) {
  std::poisson_distribution<int64_t> poisson(mu);
  return poisson(random) - poisson(random);
}

double SampleGaussian(double sigma, SecureRandom& random) {
  std::normal_distribution<double> normal(0.0, sigma);
  return normal(random);
}

void AddCentralGaussianNoise(std::span<double> sum, double sigma, SecureRandom& random) {
  std::normal_distribution<double> normal(0.0, sigma);
  for (double& value : sum) value += normal(random);
}

}  // namespace fedmoe::privacy
