#include "privacy/noise.h"

#include <cmath>
#include <random>

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

int64_t SampleDiscreteGaussian(double sigma_squared, SecureRandom& random) {
  return DiscreteGaussianSampler(sigma_squared).Sample(random);
}

namespace {

// Poisson(μ). Small means multiply uniforms until the product falls below e^-μ (Knuth); large
// ones use Hörmann's transformed rejection with squeeze (PTRS, 1993), which accepts most
// draws after two uniforms and no logarithm.
int64_t SamplePoisson(double mu, SecureRandom& random) {
  if (mu < 10.0) {
    const double limit = std::exp(-mu);
    int64_t k = 0;
    double product = random.UniformDouble();
    while (product > limit) {
      ++k;
      product *= random.UniformDouble();
    }
    return k;
  }
  const double sqrt_mu = std::sqrt(mu);
  const double log_mu = std::log(mu);
  const double b = 0.931 + 2.53 * sqrt_mu;
  const double a = -0.059 + 0.02483 * b;
  const double inverse_alpha = 1.1239 + 1.1328 / (b - 3.4);
  const double v_r = 0.9277 - 3.6224 / (b - 2.0);
  while (true) {
    const double u = random.UniformDouble() - 0.5;
    const double v = random.UniformDouble();
    const double us = 0.5 - std::abs(u);
    const auto k = static_cast<int64_t>(std::floor((2.0 * a / us + b) * u + mu + 0.43));
    if (us >= 0.07 && v <= v_r) return k;
    if (k < 0 || (us < 0.013 && v > us)) continue;
    const auto kd = static_cast<double>(k);
    if (std::log(v) + std::log(inverse_alpha) - std::log(a / (us * us) + b) <=
        -mu + kd * log_mu - std::lgamma(kd + 1.0)) {
      return k;
    }
  }
}

}  // namespace

int64_t SampleSkellam(double mu, SecureRandom& random) {
  return SamplePoisson(mu, random) - SamplePoisson(mu, random);
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
