// fedmoe's CUDA simulator: the part of the CUDA runtime that fedmoe's kernels use, run on the
// CPU, so that every kernel also runs (and is tested) on machines without a GPU, such as CI.
// kernels/cuda/*.cu compile against these headers as plain C++ when FEDMOE_CUDA_SIM is defined.
//
// What it models, and how:
// - A launch runs its blocks one after another. A block's threads are fibers on the launching
//   thread, each run until it waits at a barrier or returns; odd blocks start from the last
//   thread, so a kernel that forgets a __syncthreads() reads a value before it is written in
//   one block or the other.
// - __syncthreads() and the warp primitives are real barriers. A thread that returns leaves
//   them, as an exited GPU thread does, so its block's barriers wait only for the others;
//   threads that wait at different barriers abort the run.
// - __shared__ is `static`: one copy shared by the block's threads, reused by the next block.
// - Device memory is host memory; copies are memcpy, done before the call returns, except
//   queued ones on a created stream (below).
// It does not model the memory model's weaker orderings, timing, or occupancy: it checks a
// kernel's arithmetic and its synchronisation structure, not its speed.
#ifndef FEDMOE_KERNELS_CUDA_SIM_CUDA_RUNTIME_H_
#define FEDMOE_KERNELS_CUDA_SIM_CUDA_RUNTIME_H_

// This header stands in for the CUDA toolkit's, so it declares CUDA's own names, which are
// reserved identifiers (__global__, __shfl_sync, __nv_bfloat16, ...).
// NOLINTBEGIN(bugprone-reserved-identifier)

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static
#define __launch_bounds__(...)

struct dim3 {
  unsigned x = 1;
  unsigned y = 1;
  unsigned z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using uint3 = dim3;

namespace fedmoe::cuda_sim {

// The running grid's, set by the simulator as it switches between a block's threads.
extern dim3 thread_index;
extern dim3 block_index;
extern dim3 block_dimension;
extern dim3 grid_dimension;

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

cudaError_t cudaMalloc(void** pointer, size_t bytes);
cudaError_t cudaFree(void* pointer);
cudaError_t cudaMemcpy(void* destination, const void* source, size_t bytes, cudaMemcpyKind kind);
// Streams: work on the default stream (null) runs as it is queued. Work on a created stream
// waits until something waits for it (an event recorded after it that a stream or the host
// waits on, cudaDeviceSynchronize, cudaFree or the stream's end): as late as the GPU may run
// it, so a missing join shows as stale data. Synchronous copies do not wait for created
// streams, as on the GPU with non-blocking ones.
struct SimStream;
using cudaStream_t = SimStream*;
constexpr unsigned cudaStreamNonBlocking = 1;
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
// The simulator's own: queues `work` on `stream`, or runs it now on the default stream.
void QueueOnStream(cudaStream_t stream, std::function<void()> work);
// On a created stream only host-to-device copies are taken (the source is staged at the call).
cudaError_t cudaMemcpyAsync(void* destination, const void* source, size_t bytes,
                            cudaMemcpyKind kind, cudaStream_t stream);
cudaError_t cudaMemset(void* destination, int value, size_t bytes);
cudaError_t cudaDeviceSynchronize();
// An event holds the host's clock at its recording: work runs as it is queued, so that is when
// the work queued before it finished.
struct SimEvent;
using cudaEvent_t = SimEvent*;
constexpr unsigned cudaEventDisableTiming = 2;
cudaError_t cudaEventCreate(cudaEvent_t* event);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t event);
// Later work on `stream` waits for the work before the event.
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags = 0);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
// cudaErrorInvalidValue unless both events were recorded, which the CUDA runtime refuses too.
cudaError_t cudaEventElapsedTime(float* milliseconds, cudaEvent_t start, cudaEvent_t stop);
// The calling thread's current device. Simulated devices share one memory; the index is kept
// so that code which selects devices runs as on a machine with several.
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaGetLastError();
const char* cudaGetErrorString(cudaError_t error);

// Whether [pointer, pointer + bytes) lies inside one live cudaMalloc allocation: the simulator's
// stand-in for the GPU's fault on a host pointer where a device one belongs.
bool IsDeviceMemory(const void* pointer, size_t bytes);

// Runs `body` as a grid of blocks; what `kernel<<<grid, block, dynamic_shared_bytes>>>(...)`
// does. Returns, and records for cudaGetLastError, a configuration error without running
// anything.
cudaError_t LaunchKernel(dim3 grid, dim3 block, size_t dynamic_shared_bytes,
                         const std::function<void()>& body);
// The running block's dynamic shared memory (`extern __shared__` on the GPU): the launch's
// bytes, NaN at the start of each block.
void* DynamicSharedMemory();

void SyncThreads();
// Waits for the warp's live lanes (__syncwarp with a full mask).
void SyncWarp();
// Every lane of the warp publishes `value`, then reads lane `source_lane`'s.
uint64_t ExchangeInWarp(uint64_t value, unsigned source_lane);
// Every lane of the warp publishes `bytes` (at most 64) from `mine`, then reads all 32 lanes'
// into `everyone`, lane 0 first. The whole warp must take part, as in a warp-wide matrix
// operation.
void GatherInWarp(const void* mine, size_t bytes, void* everyone);
// Aborts the run with `what`, for misuse the GPU would punish with a fault or garbage.
[[noreturn]] void FailKernel(const char* what);

template <typename T>
T ShuffleFromLane(T value, unsigned source_lane) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>);
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = ExchangeInWarp(bits, source_lane);
  T result;
  std::memcpy(&result, &bits, sizeof(T));
  return result;
}

inline unsigned LaneOf() {
  const dim3& t = thread_index;
  const dim3& b = block_dimension;
  return ((t.z * b.y + t.y) * b.x + t.x) % 32;
}

}  // namespace fedmoe::cuda_sim

using fedmoe::cuda_sim::cudaDeviceSynchronize;
using fedmoe::cuda_sim::cudaError_t;
using fedmoe::cuda_sim::cudaErrorInvalidValue;
using fedmoe::cuda_sim::cudaErrorMemoryAllocation;
using fedmoe::cuda_sim::cudaEvent_t;
using fedmoe::cuda_sim::cudaEventCreate;
using fedmoe::cuda_sim::cudaEventCreateWithFlags;
using fedmoe::cuda_sim::cudaEventDestroy;
using fedmoe::cuda_sim::cudaEventDisableTiming;
using fedmoe::cuda_sim::cudaEventElapsedTime;
using fedmoe::cuda_sim::cudaEventRecord;
using fedmoe::cuda_sim::cudaEventSynchronize;
using fedmoe::cuda_sim::cudaFree;
using fedmoe::cuda_sim::cudaGetDevice;
using fedmoe::cuda_sim::cudaGetErrorString;
using fedmoe::cuda_sim::cudaGetLastError;
using fedmoe::cuda_sim::cudaMalloc;
using fedmoe::cuda_sim::cudaMemcpy;
using fedmoe::cuda_sim::cudaMemcpyAsync;
using fedmoe::cuda_sim::cudaMemcpyDeviceToDevice;
using fedmoe::cuda_sim::cudaMemcpyDeviceToHost;
using fedmoe::cuda_sim::cudaMemcpyHostToDevice;
using fedmoe::cuda_sim::cudaMemcpyKind;
using fedmoe::cuda_sim::cudaMemset;
using fedmoe::cuda_sim::cudaSetDevice;
using fedmoe::cuda_sim::cudaStream_t;
using fedmoe::cuda_sim::cudaStreamCreateWithFlags;
using fedmoe::cuda_sim::cudaStreamDestroy;
using fedmoe::cuda_sim::cudaStreamNonBlocking;
using fedmoe::cuda_sim::cudaStreamWaitEvent;
using fedmoe::cuda_sim::cudaSuccess;

#define threadIdx (::fedmoe::cuda_sim::thread_index)
#define blockIdx (::fedmoe::cuda_sim::block_index)
#define blockDim (::fedmoe::cuda_sim::block_dimension)
#define gridDim (::fedmoe::cuda_sim::grid_dimension)
constexpr int warpSize = 32;

inline void __syncthreads() { fedmoe::cuda_sim::SyncThreads(); }
inline void __syncwarp(unsigned /*mask*/ = 0xffffffffU) { fedmoe::cuda_sim::SyncWarp(); }

// The four signed bytes of a and of b multiplied pairwise, summed, and added to c.
inline int __dp4a(int a, int b, int c) {
  for (int byte = 0; byte < 4; ++byte) {
    c += static_cast<int>(static_cast<int8_t>(static_cast<unsigned>(a) >> (8 * byte))) *
         static_cast<int>(static_cast<int8_t>(static_cast<unsigned>(b) >> (8 * byte)));
  }
  return c;
}

template <typename T>
T __shfl_sync(unsigned /*mask*/, T value, int source_lane, int width = 32) {
  const unsigned lane = fedmoe::cuda_sim::LaneOf();
  const unsigned base = lane - lane % static_cast<unsigned>(width);
  return fedmoe::cuda_sim::ShuffleFromLane(
      value, base + static_cast<unsigned>(source_lane) % static_cast<unsigned>(width));
}
template <typename T>
T __shfl_xor_sync(unsigned /*mask*/, T value, int lane_mask, int width = 32) {
  const unsigned lane = fedmoe::cuda_sim::LaneOf();
  const unsigned source = lane ^ static_cast<unsigned>(lane_mask);
  // A source outside the lane's width segment returns the lane's own value, as on the GPU.
  const auto w = static_cast<unsigned>(width);
  return fedmoe::cuda_sim::ShuffleFromLane(value, source / w == lane / w ? source : lane);
}

// Atomics: std::atomic_ref gives the same indivisible read-modify-write across OS threads.
template <typename T>
T atomicAdd(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value);
}

inline float rsqrtf(float x) { return 1.0F / std::sqrt(x); }

// NOLINTEND(bugprone-reserved-identifier)

#endif  // FEDMOE_KERNELS_CUDA_SIM_CUDA_RUNTIME_H_
