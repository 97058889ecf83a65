// Collective operations across the GPUs of one process, through NCCL: what data-parallel
// training needs to sum each replica's gradient. Device pointers; the header needs no CUDA or
// NCCL headers.
#ifndef FEDMOE_KERNELS_CUDA_COLLECTIVES_H_
#define FEDMOE_KERNELS_CUDA_COLLECTIVES_H_

#include <cstddef>
#include <memory>
#include <span>

#include "absl/status/statusor.h"

namespace fedmoe::kernels::cuda {

// One NCCL communicator per device of a clique, devices 0 … count − 1. Move-only.
class DeviceClique {
 public:
  // Unimplemented in a build without NCCL, for more than one device.
  static absl::StatusOr<DeviceClique> Create(int devices);
  DeviceClique(DeviceClique&&) noexcept;
  DeviceClique& operator=(DeviceClique&&) noexcept;
  ~DeviceClique();

  int size() const;

  // buffers[d] (count floats on device d) ← Σ over devices of buffers[d], in place, and waits for
  // the sum. One pointer per device, in device order.
  absl::Status SumInPlace(std::span<float* const> buffers, size_t count);

 private:
  struct State;
  explicit DeviceClique(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace fedmoe::kernels::cuda

#endif  // FEDMOE_KERNELS_CUDA_COLLECTIVES_H_
