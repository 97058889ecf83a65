// Text generation on one GPU (issue [serve]): generation.h's Decoder with the base, the
// adapters, the keys and values and every activation on the device. A step crosses to the host
// for its tokens, each layer's per-expert row counts (which size the expert products, as in
// training) and the logits of each sequence's last row.
//
// The arithmetic is the CPU decoder's and the adapter backend's (cuda_training.h): the base in
// its own format, each weight decoded to fp32 for its product, fp32 attention over the cache.
// Built twice from one source, like the CUDA training backends: against the CUDA kernels and
// against the CPU simulator of CUDA, where its tests hold it to the CPU decoder.
#ifndef FEDMOE_MODEL_CUDA_GENERATION_H_
#define FEDMOE_MODEL_CUDA_GENERATION_H_

#include <memory>

#include "absl/status/statusor.h"
#include "model/adapted_model.h"
#include "model/frozen_base.h"
#include "model/generation.h"

namespace fedmoe::model {

// A decoder on GPU 0 over `base` and `adapters` (BaseOnlyAdapters for the base alone), both
// uploaded there; they must outlive it. InvalidArgument for adapters of another model or a
// model the kernels do not take (CheckCudaTakesModel); ResourceExhausted, saying how large the
// base is, when the GPU cannot hold it. A step's keys and values grow on the device as its
// sequences do; a step that runs out of device memory fails with ResourceExhausted and leaves
// the decoder usable.
absl::StatusOr<std::unique_ptr<Decoder>> CreateCudaDecoder(const FrozenBase& base,
                                                           const LoraAdapters& adapters);

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_CUDA_GENERATION_H_
