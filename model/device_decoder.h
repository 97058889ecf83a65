// The decoder for a chosen device (issue [serve]): the CPU's BatchDecoder, or in a build with
// the CUDA kernels the GPU's (cuda_generation.h). What `model generate` and `serve` use for
// --device; part of fedmoe_train, the library that knows whether this build has the kernels.
#ifndef FEDMOE_MODEL_DEVICE_DECODER_H_
#define FEDMOE_MODEL_DEVICE_DECODER_H_

#include <memory>

#include "absl/status/statusor.h"
#include "model/adapted_model.h"
#include "model/compute.h"
#include "model/frozen_base.h"
#include "model/generation.h"

namespace fedmoe::model {

// A decoder over `base` and `adapters` (which must outlive it) on `device`, a resolved one
// (ResolveDevice). FailedPrecondition for kCuda in a build without the CUDA kernels; the
// decoder's own errors otherwise.
absl::StatusOr<std::unique_ptr<Decoder>> CreateDecoder(const FrozenBase& base,
                                                       const LoraAdapters& adapters, Device device);

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_DEVICE_DECODER_H_
