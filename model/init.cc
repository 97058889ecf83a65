#include "model/init.h"

#include <cmath>
#include <numbers>
#include <random>

namespace fedmoe::model {
namespace {

// SplitMix64's finaliser: decorrelates (seed, tensor index) into independent stream seeds.
uint64_t MixSeed(uint64_t value) {
  value += 0x9e3779b97f4a7c15ull;
  value = (value ^ (value >> 30)) * 0xbf58476d1ce4e5b9ull;
  value = (value ^ (value >> 27)) * 0x94d049bb133111ebull;
  return value ^ (value >> 31);
}

// A uniform double in (0, 1), never 0, from the top 53 bits.
double OpenUnit(std::mt19937_64& generator) {
  return (static_cast<double>(generator() >> 11) + 0.5) * 0x1.0p-53;
}

}  // namespace

uint64_t TensorStreamSeed(uint64_t seed, uint64_t index) { return MixSeed(seed ^ MixSeed(index)); }

ModelParameters InitializeModel(const MoeConfig& config, uint64_t seed) {
  ModelParameters parameters(config);
  const std::vector<TensorSpec>& tensors = parameters.layout().tensors();
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t index = 0; index < tensors.size(); ++index) {
    const TensorSpec& spec = tensors[index];
    std::span<float> values = parameters.tensor(spec);
    if (spec.role == TensorRole::kNorm) {
      std::fill(values.begin(), values.end(), 1.0f);
      continue;
    }
    std::mt19937_64 generator(TensorStreamSeed(seed, index));
    for (size_t i = 0; i < values.size(); i += 2) {
      const double radius = std::sqrt(-2.0 * std::log(OpenUnit(generator)));
      const double angle = 2.0 * std::numbers::pi * OpenUnit(generator);
      values[i] = static_cast<float>(config.initializer_range * radius * std::cos(angle));
      if (i + 1 < values.size()) {
        values[i + 1] = static_cast<float>(config.initializer_range * radius * std::sin(angle));
      }
    }
  }
  return parameters;
}

}  // namespace fedmoe::model
