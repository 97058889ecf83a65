// Standard random initialisation of a new model, as Hugging Face's MixtralPreTrainedModel does:
// every linear and embedding weight from N(0, initializer_range²), every norm weight 1.
#ifndef FEDMOE_MODEL_INIT_H_
#define FEDMOE_MODEL_INIT_H_

#include <cstdint>
#include <span>

#include "absl/status/statusor.h"
#include "model/frozen_base.h"
#include "model/parameters.h"

namespace fedmoe::model {

// The same config and seed give the same values, bit for bit, with the same math library: each
// tensor draws from its own stream (seed, tensor index), with a fixed generator and Box–Muller
// rather than the standard library's implementation-defined distributions.
ModelParameters InitializeModel(const MoeConfig& config, uint64_t seed);

// The values InitializeModel gives tensor `index` of the config's layout (`spec`), into `out`
// (spec.size values).
void InitializeTensor(const MoeConfig& config, const TensorSpec& spec, size_t index, uint64_t seed,
                      std::span<float> out);

// InitializeModel's model held directly in `format`, with one tensor's fp32 values in memory at
// a time: FrozenBase::FromParameters(InitializeModel(config, seed), format, group_size) for
// models too large to hold in fp32 on the way (bench/serve's medium base, `model init --dtype
// int8`).
absl::StatusOr<FrozenBase> InitializeBase(const MoeConfig& config, WeightFormat format,
                                          int64_t group_size, uint64_t seed);

// The seed of tensor `index`'s own stream under `seed` (SplitMix64's finaliser decorrelates the
// two), for every initialiser that draws tensor by tensor.
uint64_t TensorStreamSeed(uint64_t seed, uint64_t index);

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_INIT_H_
