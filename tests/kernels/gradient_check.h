// Central finite differences for gradient tests: the independent reference for every backward
// pass (kernels and the whole model); and the distance of a lower-precision result from its
// reference.
#ifndef FEDMOE_TESTS_KERNELS_GRADIENT_CHECK_H_
#define FEDMOE_TESTS_KERNELS_GRADIENT_CHECK_H_

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace fedmoe::testing {

struct GradientTolerance {
  double step = 1e-3;
  double absolute = 2e-3;
  double relative = 2e-2;
  // At most this many coordinates, chosen at random, are checked.
  size_t samples = 48;
};

// For sampled coordinates i of `x`, compares analytic[i] with
// (objective(x + h·e_i) − objective(x − h·e_i)) / 2h. The objective is evaluated in double
// from whatever the kernels compute. Restores x.
inline void ExpectGradientMatches(std::vector<float>& x, const std::vector<float>& analytic,
                                  const std::function<double()>& objective, const std::string& name,
                                  const GradientTolerance& tolerance = {}) {
  ASSERT_EQ(x.size(), analytic.size()) << name;
  std::vector<size_t> coordinates(x.size());
  for (size_t i = 0; i < x.size(); ++i) coordinates[i] = i;
  std::mt19937 generator(static_cast<uint32_t>(x.size()));
  std::shuffle(coordinates.begin(), coordinates.end(), generator);
  coordinates.resize(std::min(coordinates.size(), tolerance.samples));
  double largest = 0;
  for (const size_t i : coordinates) {
    const float saved = x[i];
    x[i] = saved + static_cast<float>(tolerance.step);
    const double plus = objective();
    x[i] = saved - static_cast<float>(tolerance.step);
    const double minus = objective();
    x[i] = saved;
    const double numeric = (plus - minus) / (2 * tolerance.step);
    largest = std::max(largest, std::abs(numeric));
    EXPECT_NEAR(analytic[i], numeric, tolerance.absolute + tolerance.relative * std::abs(numeric))
        << name << " coordinate " << i;
  }
  EXPECT_GT(largest, 10 * tolerance.absolute) << name << ": the checked gradients are all ~0";
}

inline std::vector<float> RandomVector(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 generator(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> values(n);
  for (float& v : values) v = normal(generator);
  return values;
}

inline double Dot(const std::vector<float>& a, const std::vector<float>& b) {
  double sum = 0;
  for (size_t i = 0; i < a.size(); ++i) sum += static_cast<double>(a[i]) * b[i];
  return sum;
}

// ‖actual − expected‖ / ‖expected‖, in double: how far a result of lower precision is from its
// reference.
inline double RelativeDifference(std::span<const float> actual, std::span<const float> expected) {
  double difference = 0;
  double norm = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double error = static_cast<double>(actual[i]) - expected[i];
    difference += error * error;
    norm += static_cast<double>(expected[i]) * expected[i];
  }
  return std::sqrt(difference / norm);
}

}  // namespace fedmoe::testing

#endif  // FEDMOE_TESTS_KERNELS_GRADIENT_CHECK_H_
