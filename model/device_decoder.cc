#include "model/device_decoder.h"

#include "kernels/device.h"

#ifdef FEDMOE_TRAIN_WITH_CUDA
#include "model/cuda_generation.h"
#endif

namespace fedmoe::model {

absl::StatusOr<std::unique_ptr<Decoder>> CreateDecoder(const FrozenBase& base,
                                                       const LoraAdapters& adapters,
                                                       Device device) {
  if (device == Device::kCpu) {
    absl::StatusOr<std::unique_ptr<BatchDecoder>> decoder = BatchDecoder::Create(base, adapters);
    if (!decoder.ok()) return decoder.status();
    return std::unique_ptr<Decoder>(*std::move(decoder));
  }
#ifdef FEDMOE_TRAIN_WITH_CUDA
  return CreateCudaDecoder(base, adapters);
#else
  return kernels::NoCudaKernels();
#endif
}

}  // namespace fedmoe::model
