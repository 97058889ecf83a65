// Owning device allocations and host↔device copies, with CUDA errors turned into statuses.
// Only built with CUDA; the header itself needs no CUDA headers, so host code and tests include
// it with a plain C++ compiler.
#ifndef FEDMOE_KERNELS_CUDA_DEVICE_MEMORY_H_
#define FEDMOE_KERNELS_CUDA_DEVICE_MEMORY_H_

#include <cstddef>
#include <span>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fedmoe::kernels::cuda {

absl::StatusOr<void*> AllocateDeviceBytes(size_t bytes);
void FreeDeviceBytes(void* device_pointer);
absl::Status CopyHostToDevice(void* device_destination, const void* host_source, size_t bytes);
// Queues a copy from pageable host memory (a std::vector's, say) behind the work already queued
// on the default stream, without waiting for that work as CopyHostToDevice does: the runtime
// stages a pageable source before returning, so the caller may reuse it at once. Not for
// page-locked sources, which the GPU would read only when the copy runs.
absl::Status QueueCopyHostToDevice(void* device_destination, const void* host_source, size_t bytes);
absl::Status CopyDeviceToHost(void* host_destination, const void* device_source, size_t bytes);
absl::Status CopyDeviceToDevice(void* device_destination, const void* device_source, size_t bytes);
absl::Status ZeroDeviceBytes(void* device_destination, size_t bytes);
// Makes `device` the calling thread's current device: where its allocations, copies and
// kernels go.
absl::Status SetDevice(int device);
// Waits for the device's queued work and reports an error raised by any of it.
absl::Status Synchronize();

// Whether these kernels run on the CPU simulator of CUDA (kernels/cuda/sim) rather than a GPU:
// what lets one test binary's objects serve both libraries.
bool IsSimulator();

// A typed device array. Move-only; freed on destruction.
template <typename T>
class DeviceArray {
 public:
  static absl::StatusOr<DeviceArray> Allocate(size_t size) {
    absl::StatusOr<void*> pointer = AllocateDeviceBytes(size * sizeof(T));
    if (!pointer.ok()) return pointer.status();
    return DeviceArray(static_cast<T*>(*pointer), size);
  }

  // Empty: no allocation, size 0.
  DeviceArray() = default;
  DeviceArray(DeviceArray&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  DeviceArray& operator=(DeviceArray&& other) noexcept {
    if (this != &other) {
      FreeDeviceBytes(data_);
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { FreeDeviceBytes(data_); }

  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return size_; }

  absl::Status CopyFrom(std::span<const T> host) {
    if (host.size() != size_) return SizeMismatch(host.size());
    return CopyHostToDevice(data_, host.data(), size_ * sizeof(T));
  }
  absl::Status CopyTo(std::span<T> host) const {
    if (host.size() != size_) return SizeMismatch(host.size());
    return CopyDeviceToHost(host.data(), data_, size_ * sizeof(T));
  }
  absl::Status Zero() { return ZeroDeviceBytes(data_, size_ * sizeof(T)); }

 private:
  DeviceArray(T* data, size_t size) : data_(data), size_(size) {}
  absl::Status SizeMismatch(size_t host_size) const {
    return absl::InvalidArgumentError("host span of " + std::to_string(host_size) +
                                      " values for a device array of " + std::to_string(size_));
  }

  T* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace fedmoe::kernels::cuda

#endif  // FEDMOE_KERNELS_CUDA_DEVICE_MEMORY_H_
