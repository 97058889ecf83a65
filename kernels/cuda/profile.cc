#include "kernels/cuda/profile.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"

namespace fedmoe::kernels::cuda {
namespace {

struct TimedCall {
  const char* name;
  int device;
  cudaEvent_t start;
  cudaEvent_t stop;
};

struct Profile {
  std::atomic<bool> on{false};
  std::mutex mutex;
  std::vector<TimedCall> calls;
  // Events belong to the device current at their creation; they are reused, not destroyed.
  std::map<int, std::vector<cudaEvent_t>> spare_events;
};

// Never destroyed: a scope may still close while static objects are torn down at exit.
Profile& TheProfile() {
  static auto* const profile = new Profile;
  return *profile;
}

cudaEvent_t TakeEvent(Profile& profile, int device) {
  {
    const std::lock_guard lock(profile.mutex);
    std::vector<cudaEvent_t>& spare = profile.spare_events[device];
    if (!spare.empty()) {
      cudaEvent_t event = spare.back();
      spare.pop_back();
      return event;
    }
  }
  cudaEvent_t event = nullptr;
  return cudaEventCreate(&event) == cudaSuccess ? event : nullptr;
}

void GiveBack(Profile& profile, int device, std::initializer_list<cudaEvent_t> events) {
  const std::lock_guard lock(profile.mutex);
  for (cudaEvent_t event : events) {
    if (event != nullptr) profile.spare_events[device].push_back(event);
  }
}

absl::Status CudaStatus(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat("kernel profile: ", what, ": ", cudaGetErrorString(error)));
}

}  // namespace

void SetKernelProfiling(bool on) { TheProfile().on.store(on); }

ProfiledScope::ProfiledScope(const char* name) {
  Profile& profile = TheProfile();
  if (name == nullptr || !profile.on.load(std::memory_order_relaxed)) return;
  if (cudaGetDevice(&device_) != cudaSuccess) return;
  cudaEvent_t start = TakeEvent(profile, device_);
  if (start == nullptr) return;
  if (cudaEventRecord(start, nullptr) != cudaSuccess) {
    GiveBack(profile, device_, {start});
    return;
  }
  name_ = name;
  start_ = start;
}

ProfiledScope::~ProfiledScope() {
  if (name_ == nullptr) return;
  Profile& profile = TheProfile();
  auto* const start = static_cast<cudaEvent_t>(start_);
  cudaEvent_t stop = TakeEvent(profile, device_);
  if (stop == nullptr || cudaEventRecord(stop, nullptr) != cudaSuccess) {
    GiveBack(profile, device_, {start, stop});
    return;
  }
  const std::lock_guard lock(profile.mutex);
  profile.calls.push_back({name_, device_, start, stop});
}

absl::StatusOr<std::vector<KernelTime>> CollectKernelProfile() {
  Profile& profile = TheProfile();
  std::vector<TimedCall> calls;
  {
    const std::lock_guard lock(profile.mutex);
    calls.swap(profile.calls);
  }
  int current = 0;
  absl::Status status = CudaStatus(cudaGetDevice(&current), "current device");
  std::map<std::string_view, KernelTime> by_name;
  for (const TimedCall& call : calls) {
    if (status.ok()) status.Update(CudaStatus(cudaSetDevice(call.device), "select device"));
    if (status.ok()) status.Update(CudaStatus(cudaEventSynchronize(call.stop), call.name));
    float milliseconds = 0;
    if (status.ok()) {
      status.Update(
          CudaStatus(cudaEventElapsedTime(&milliseconds, call.start, call.stop), call.name));
    }
    if (status.ok()) {
      KernelTime& time = by_name[call.name];
      time.name = call.name;
      ++time.calls;
      time.seconds += milliseconds * 1e-3;
    }
    GiveBack(profile, call.device, {call.start, call.stop});
  }
  status.Update(CudaStatus(cudaSetDevice(current), "restore the device"));
  if (!status.ok()) return status;
  std::vector<KernelTime> times;
  times.reserve(by_name.size());
  for (auto& [name, time] : by_name) times.push_back(std::move(time));
  std::stable_sort(times.begin(), times.end(),
                   [](const KernelTime& a, const KernelTime& b) { return a.seconds > b.seconds; });
  return times;
}

}  // namespace fedmoe::kernels::cuda
