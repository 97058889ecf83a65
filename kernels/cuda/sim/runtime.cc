// The simulator's runtime (see include/cuda_runtime.h).
#include <barrier>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "cuda_runtime.h"

namespace fedmoe::cuda_sim {

thread_local dim3 thread_index;
thread_local dim3 block_index;
thread_local dim3 block_dimension;
thread_local dim3 grid_dimension;

namespace {

constexpr unsigned kWarpSize = 32;
constexpr unsigned kMaxThreadsPerBlock = 1024;
// Limits of gridDim: x up to 2^31 - 1, y and z up to 65535.
constexpr uint64_t kMaxGridX = (uint64_t{1} << 31) - 1;
constexpr unsigned kMaxGridYz = 65535;

thread_local cudaError_t last_error = cudaSuccess;

cudaError_t Record(cudaError_t error) {
  if (error != cudaSuccess) last_error = error;
  return error;
}

[[noreturn]] void Fail(const char* what) {
  std::fprintf(stderr, "cuda simulator: %s\n", what);
  std::abort();
}

// One launch: its blocks run one after another on block_dimension OS threads.
class GridRun {
 public:
  GridRun(dim3 grid, dim3 block)
      : grid_(grid),
        block_(block),
        threads_(block.x * block.y * block.z),
        blocks_(uint64_t{grid.x} * grid.y * grid.z),
        exchange_(threads_),
        between_blocks_(static_cast<std::ptrdiff_t>(threads_), NextBlock{this}) {
    ResetBlock();
  }

  void Run(const std::function<void()>& body) {
    std::vector<std::thread> workers;
    workers.reserve(threads_);
    for (unsigned t = 0; t < threads_; ++t)
      workers.emplace_back([this, t, &body] { Work(t, body); });
    for (std::thread& worker : workers) worker.join();
  }

  void SyncThreads() { block_barrier_->arrive_and_wait(); }
  void SyncWarp() { WarpBarrier().arrive_and_wait(); }
  uint64_t Exchange(uint64_t value, unsigned source_lane) {
    const unsigned self = current_thread_;
    const unsigned base = self - self % kWarpSize;
    exchange_[self] = value;
    SyncWarp();
    const unsigned source = base + source_lane;
    const uint64_t result = source < threads_ ? exchange_[source] : value;
    SyncWarp();  // nobody overwrites its slot before every lane has read
    return result;
  }

  static thread_local GridRun* current_;
  static thread_local unsigned current_thread_;

 private:
  struct NextBlock {
    GridRun* run;
    void operator()() noexcept { run->ResetBlock(); }
  };

  std::barrier<>& WarpBarrier() { return *warp_barriers_[current_thread_ / kWarpSize]; }

  // Runs between blocks, while every thread waits: fresh barriers for the next block's
  // threads, and shared memory that reads as NaN until written.
  void ResetBlock() {
    block_barrier_ = std::make_unique<std::barrier<>>(static_cast<std::ptrdiff_t>(threads_));
    warp_barriers_.clear();
    for (unsigned first = 0; first < threads_; first += kWarpSize) {
      warp_barriers_.push_back(std::make_unique<std::barrier<>>(
          static_cast<std::ptrdiff_t>(std::min(kWarpSize, threads_ - first))));
    }
  }

  void Work(unsigned t, const std::function<void()>& body) {
    current_ = this;
    current_thread_ = t;
    thread_index = dim3(t % block_.x, (t / block_.x) % block_.y, t / (block_.x * block_.y));
    block_dimension = block_;
    grid_dimension = grid_;
    for (uint64_t b = 0; b < blocks_; ++b) {
      block_index =
          dim3(static_cast<unsigned>(b % grid_.x), static_cast<unsigned>((b / grid_.x) % grid_.y),
               static_cast<unsigned>(b / (uint64_t{grid_.x} * grid_.y)));
      body();
      // A finished thread leaves its block's barriers, as an exited GPU thread does.
      block_barrier_->arrive_and_drop();
      WarpBarrier().arrive_and_drop();
      between_blocks_.arrive_and_wait();
    }
    current_ = nullptr;
  }

  dim3 grid_;
  dim3 block_;
  unsigned threads_;
  uint64_t blocks_;
  std::vector<uint64_t> exchange_;
  std::unique_ptr<std::barrier<>> block_barrier_;
  std::vector<std::unique_ptr<std::barrier<>>> warp_barriers_;
  std::barrier<NextBlock> between_blocks_;
};

thread_local GridRun* GridRun::current_ = nullptr;
thread_local unsigned GridRun::current_thread_ = 0;

GridRun& Current(const char* what) {
  if (GridRun::current_ == nullptr) Fail(what);
  return *GridRun::current_;
}

// Live allocations, so that a copy to or from a pointer cudaMalloc never returned, or past the
// end of one, is an error as on the GPU rather than a silent host copy.
class Allocations {
 public:
  void Add(void* pointer, size_t bytes) {
    std::lock_guard lock(mutex_);
    live_[static_cast<const char*>(pointer)] = bytes;
  }
  bool Remove(void* pointer) {
    std::lock_guard lock(mutex_);
    return live_.erase(static_cast<const char*>(pointer)) == 1;
  }
  bool Contains(const void* pointer, size_t bytes) {
    std::lock_guard lock(mutex_);
    const auto* address = static_cast<const char*>(pointer);
    auto it = live_.upper_bound(address);
    if (it == live_.begin()) return false;
    --it;
    return address + bytes <= it->first + it->second;
  }

 private:
  std::mutex mutex_;
  std::map<const char*, size_t> live_;
};

Allocations& Live() {
  static auto* allocations = new Allocations();
  return *allocations;
}

// One launch at a time: __shared__ arrays are function statics, shared by whatever runs.
std::mutex& LaunchMutex() {
  static auto* mutex = new std::mutex();
  return *mutex;
}

}  // namespace

cudaError_t cudaMalloc(void** pointer, size_t bytes) {
  if (pointer == nullptr) return Record(cudaErrorInvalidValue);
  constexpr size_t kAlignment = 256;  // cudaMalloc's guarantee
  void* memory = std::aligned_alloc(
      kAlignment, (std::max<size_t>(bytes, 1) + kAlignment - 1) / kAlignment * kAlignment);
  if (memory == nullptr) return Record(cudaErrorMemoryAllocation);
  Live().Add(memory, bytes);
  *pointer = memory;
  return cudaSuccess;
}

cudaError_t cudaFree(void* pointer) {
  if (pointer == nullptr) return cudaSuccess;
  if (!Live().Remove(pointer)) return Record(cudaErrorInvalidValue);
  std::free(pointer);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* destination, const void* source, size_t bytes, cudaMemcpyKind kind) {
  if (bytes == 0) return cudaSuccess;
  const bool to_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool from_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if ((to_device && !Live().Contains(destination, bytes)) ||
      (from_device && !Live().Contains(source, bytes))) {
    return Record(cudaErrorInvalidValue);
  }
  std::memmove(destination, source, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemset(void* destination, int value, size_t bytes) {
  if (bytes == 0) return cudaSuccess;
  if (!Live().Contains(destination, bytes)) return Record(cudaErrorInvalidValue);
  std::memset(destination, value, bytes);
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }

cudaError_t cudaGetLastError() { return std::exchange(last_error, cudaSuccess); }

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
  }
  return "unrecognized error code";
}

bool IsDeviceMemory(const void* pointer, size_t bytes) { return Live().Contains(pointer, bytes); }

cudaError_t LaunchKernel(dim3 grid, dim3 block, const std::function<void()>& body) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (threads == 0 || threads > kMaxThreadsPerBlock || block.z > 64 || grid.x == 0 || grid.y == 0 ||
      grid.z == 0 || grid.x > kMaxGridX || grid.y > kMaxGridYz || grid.z > kMaxGridYz) {
    return Record(cudaErrorInvalidConfiguration);
  }
  std::lock_guard lock(LaunchMutex());
  GridRun run(grid, block);
  run.Run(body);
  return cudaSuccess;
}

void SyncThreads() { Current("__syncthreads outside a kernel").SyncThreads(); }
uint64_t ExchangeInWarp(uint64_t value, unsigned source_lane) {
  return Current("a warp shuffle outside a kernel").Exchange(value, source_lane);
}

}  // namespace fedmoe::cuda_sim
