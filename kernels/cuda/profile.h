// Where the GPU's time goes: while profiling is on, each kernel launch, cuBLAS product and
// device copy or memset is timed on the GPU between two CUDA events, under its name. Meant for
// one step after a bench's timed ones (each timed call adds two event records); with profiling
// off, a scope costs one atomic load. Needs no CUDA headers.
#ifndef FEDMOE_KERNELS_CUDA_PROFILE_H_
#define FEDMOE_KERNELS_CUDA_PROFILE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace fedmoe::kernels::cuda {

struct KernelTime {
  std::string name;
  int64_t calls = 0;
  double seconds = 0;  // GPU time, summed over the calls
};

void SetKernelProfiling(bool on);

// Waits for the timed work to finish, then returns what was timed since the last collection,
// summed per name, longest first, and forgets it. Leaves the calling thread's device as it was.
absl::StatusOr<std::vector<KernelTime>> CollectKernelProfile();

// Times the GPU work its owner queues on the current device's default stream between its
// construction and destruction, under `name` (a string literal: it is kept; null: not timed).
class ProfiledScope {
 public:
  explicit ProfiledScope(const char* name);
  ~ProfiledScope();
  ProfiledScope(const ProfiledScope&) = delete;
  ProfiledScope& operator=(const ProfiledScope&) = delete;

 private:
  const char* name_ = nullptr;  // null while profiling is off
  int device_ = 0;
  void* start_ = nullptr;  // cudaEvent_t, kept opaque here
};

}  // namespace fedmoe::kernels::cuda

#endif  // FEDMOE_KERNELS_CUDA_PROFILE_H_
