#include "model/init.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <random>

#include "absl/strings/str_cat.h"

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

void InitializeTensor(const MoeConfig& config, const TensorSpec& spec, size_t index, uint64_t seed,
                      std::span<float> out) {
  if (spec.role == TensorRole::kNorm) {
    std::fill(out.begin(), out.end(), 1.0f);
    return;
  }
  std::mt19937_64 generator(TensorStreamSeed(seed, index));
  for (size_t i = 0; i < out.size(); i += 2) {
    const double radius = std::sqrt(-2.0 * std::log(OpenUnit(generator)));
    const double angle = 2.0 * std::numbers::pi * OpenUnit(generator);
    out[i] = static_cast<float>(config.initializer_range * radius * std::cos(angle));
    if (i + 1 < out.size()) {
      out[i + 1] = static_cast<float>(config.initializer_range * radius * std::sin(angle));
    }
  }
}

ModelParameters InitializeModel(const MoeConfig& config, uint64_t seed) {
  ModelParameters parameters(config);
  const std::vector<TensorSpec>& tensors = parameters.layout().tensors();
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t index = 0; index < tensors.size(); ++index) {
    InitializeTensor(config, tensors[index], index, seed, parameters.tensor(tensors[index]));
  }
  return parameters;
}

absl::StatusOr<FrozenBase> InitializeBase(const MoeConfig& config, WeightFormat format,
                                          int64_t group_size, uint64_t seed) {
  const ModelLayout layout(config);
  size_t next = 0;
  return FrozenBase::Build(
      config, format, group_size,
      [&](const TensorSpec& spec, std::span<float> out) -> absl::Status {
        // Build asks for the tensors in the layout's order; the index picks each one's stream.
        if (next >= layout.tensors().size() || layout.tensors()[next].name != spec.name) {
          return absl::InternalError(
              absl::StrCat("the base asked for tensor ", spec.name, " out of the layout's order"));
        }
        InitializeTensor(config, spec, next++, seed, out);
        return absl::OkStatus();
      });
}

}  // namespace fedmoe::model
