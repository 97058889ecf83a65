// The pieces of adapted_model.cc's forward pass that do not depend on a token's position, which
// the generation engine (generation.cc) runs over its new rows as the training pass runs over a
// whole batch. Internal to model/.
#ifndef FEDMOE_MODEL_INTERNAL_ADAPTED_BLOCKS_H_
#define FEDMOE_MODEL_INTERNAL_ADAPTED_BLOCKS_H_

#include <cstdint>

#include "model/adapted_model.h"

namespace fedmoe::model::internal {

// `buffer` resized to `size` values, as a pointer: a pass's buffers keep their allocation from
// call to call.
template <typename Buffer>
auto* Sized(Buffer& buffer, int64_t size) {
  buffer.resize(static_cast<size_t>(size));
  return buffer.data();
}

// out [rows, out_features] = in·Ŵᵀ + s·(in·Aᵀ)·Bᵀ over the base's weight and the site's
// adapter (none when the site is absent); `low` receives s·in·Aᵀ.
void AdaptedLinearForward(const LoraAdapters& adapters, const FrozenWeight& base,
                          const LoraSite& site, const float* in, int64_t rows, AlignedFloats& low,
                          float* out);

// The MoE half of layer `index` over `rows` rows: layer.residual → out, keeping what the
// backward pass reads in `layer` and `low`.
void AdaptedMoeBlock(const FrozenBase& base, const LoraAdapters& adapters, int64_t index,
                     int64_t rows, LayerActivations& layer, LoraLayerActivations& low,
                     AlignedFloats& out);

}  // namespace fedmoe::model::internal

#endif  // FEDMOE_MODEL_INTERNAL_ADAPTED_BLOCKS_H_
