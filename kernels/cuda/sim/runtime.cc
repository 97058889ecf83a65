// The simulator's runtime (see include/cuda_runtime.h).
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define FEDMOE_SIM_ASAN 1
#else
#define FEDMOE_SIM_ASAN 0
#endif
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <boost/context/fiber.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "cuda_runtime.h"
#include "kernels/cuda/sim/control.h"

namespace fedmoe::cuda_sim {

// Plain globals, not thread_local: one grid runs at a time (LaunchMutex), and its threads are
// fibers of the launching thread. (Thread-local ones came out null inside fibers in the
// address,undefined sanitizer build, the fiber annotations notwithstanding; globals need no
// thread-local lookup.)
dim3 thread_index;
dim3 block_index;
dim3 block_dimension;
dim3 grid_dimension;

namespace {

constexpr unsigned kWarpSize = 32;
constexpr unsigned kMaxThreadsPerBlock = 1024;
// Limits of gridDim: x up to 2^31 - 1, y and z up to 65535.
constexpr uint64_t kMaxGridX = (uint64_t{1} << 31) - 1;
constexpr unsigned kMaxGridYz = 65535;
// A block's dynamic shared memory on Hopper, the most any GPU we build for lets a kernel opt
// into (Ampere: 163 KiB).
constexpr size_t kMaxDynamicSharedBytes = size_t{227} << 10;

thread_local cudaError_t last_error = cudaSuccess;

cudaError_t Record(cudaError_t error) {
  if (error != cudaSuccess) last_error = error;
  return error;
}

[[noreturn]] void Fail(const char* what) {
  std::fprintf(stderr, "cuda simulator: %s\n", what);
  std::abort();
}

// Each simulated GPU thread is a fiber with its own stack, all on the launching OS thread: a
// block's threads run one at a time, each until it waits at a barrier or returns, and a barrier
// opens once every thread of its block (or warp) that has not returned waits at it, as an exited
// GPU thread no longer counts. Fibers cost a context switch where OS threads cost a scheduler
// round trip per thread per barrier: a training step's few thousand blocks went from seconds to
// milliseconds. The switch is Boost.Context's, which saves registers only: glibc's swapcontext
// also saves the signal mask, a system call each way, and that call took about 90% of the
// simulated tests' time. Threads that wait at different barriers (a __syncthreads inside
// divergent code) abort the run, as the GPU would hang or misbehave.

// Fiber stacks, kept across launches (one launch at a time, see LaunchMutex): mapped on demand,
// with a guard page below each, so an overflow faults instead of corrupting a neighbour.
class FiberStacks {
 public:
  static constexpr size_t kStackBytes = size_t{256} << 10;

  void* Stack(unsigned index) {
    while (stacks_.size() <= index) {
      const auto page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
      void* region = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (region == MAP_FAILED) Fail("cannot map a fiber stack");
      if (mprotect(region, page, PROT_NONE) != 0) Fail("cannot protect a fiber stack's guard");
      stacks_.push_back(static_cast<char*>(region) + page);
    }
    return stacks_[index];
  }

 private:
  std::vector<void*> stacks_;
};

FiberStacks& Stacks() {
  static auto* stacks = new FiberStacks();
  return *stacks;
}

class GridRun {
 public:
  GridRun(dim3 grid, dim3 block, size_t dynamic_shared_bytes)
      : grid_(grid),
        block_(block),
        threads_(block.x * block.y * block.z),
        blocks_(uint64_t{grid.x} * grid.y * grid.z),
        exchange_(threads_),
        gather_(size_t{threads_} * kMaxGatherBytes),
        dynamic_shared_bytes_(dynamic_shared_bytes),
        dynamic_shared_(kSharedAlignment + dynamic_shared_bytes),
        fibers_(threads_) {}

  void Run(const std::function<void()>& body) {
    body_ = &body;
    current_ = this;
    block_dimension = block_;
    grid_dimension = grid_;
    for (uint64_t b = 0; b < blocks_; ++b) {
      block_index =
          dim3(static_cast<unsigned>(b % grid_.x), static_cast<unsigned>((b / grid_.x) % grid_.y),
               static_cast<unsigned>(b / (uint64_t{grid_.x} * grid_.y)));
      // Dynamic shared memory starts each block as NaN, so a read before any write shows.
      auto* shared = static_cast<float*>(DynamicShared());
      std::fill(shared, shared + dynamic_shared_bytes_ / sizeof(float), std::nanf(""));
      RunBlock();
    }
    current_ = nullptr;
  }

  // Aligned as the GPU's (to 128 bytes, where warp matrix loads need 32).
  void* DynamicShared() {
    const auto at = reinterpret_cast<uintptr_t>(dynamic_shared_.data());
    return dynamic_shared_.data() + (kSharedAlignment - at % kSharedAlignment) % kSharedAlignment;
  }

  void SyncThreads() { Wait(State::kAtBlockBarrier); }
  void SyncWarp() { Wait(State::kAtWarpBarrier); }
  uint64_t Exchange(uint64_t value, unsigned source_lane) {
    const unsigned self = running_;
    const unsigned base = self - self % kWarpSize;
    exchange_[self] = value;
    SyncWarp();
    const unsigned source = base + source_lane;
    const uint64_t result = source < threads_ ? exchange_[source] : value;
    SyncWarp();  // nobody overwrites its slot before every lane has read
    return result;
  }

  // Every lane of the warp publishes `bytes` from `mine`; each then reads all 32 contributions,
  // lane by lane, into `everyone`. Warp-wide matrix operations need the full warp, so a lane
  // that has exited, or a warp cut short by the block's size, aborts the run.
  void GatherWarp(const void* mine, size_t bytes, void* everyone) {
    if (bytes > kMaxGatherBytes) Fail("a warp gather of more than 64 bytes a lane");
    const unsigned self = running_;
    const unsigned base = self - self % kWarpSize;
    if (base + kWarpSize > threads_) Fail("a warp-wide matrix operation in a partial warp");
    std::memcpy(&gather_[self * kMaxGatherBytes], mine, bytes);
    SyncWarp();
    for (unsigned lane = 0; lane < kWarpSize; ++lane) {
      if (fibers_[base + lane].state == State::kDone) {
        Fail("a warp-wide matrix operation after a lane of the warp returned");
      }
      std::memcpy(static_cast<char*>(everyone) + lane * bytes,
                  &gather_[(base + lane) * kMaxGatherBytes], bytes);
    }
    SyncWarp();  // nobody overwrites its slot before every lane has read
  }

  static constexpr size_t kMaxGatherBytes = 64;
  static GridRun* current_;  // the running grid, under LaunchMutex

 private:
  enum class State { kRunnable, kAtBlockBarrier, kAtWarpBarrier, kDone };
  struct Fiber {
    // The thread where it waits; empty before it starts and once it has returned.
    boost::context::fiber context;
    State state = State::kRunnable;
  };
  // The stacks are FiberStacks', reused launch after launch, so a finished fiber frees nothing.
  struct KeepStack {
    void deallocate(boost::context::stack_context& /*stack*/) noexcept {}
  };

  void RunBlock() {
    for (unsigned t = 0; t < threads_; ++t) PrepareFiber(t);
    // Odd blocks run their threads in reverse order: a missing barrier between a write and
    // another thread's read then shows up whichever of the two comes first in the block.
    const bool reverse = (block_index.x + block_index.y + block_index.z) % 2 == 1;
    for (;;) {
      bool ran = false;
      for (unsigned i = 0; i < threads_; ++i) {
        const unsigned t = reverse ? threads_ - 1 - i : i;
        if (fibers_[t].state != State::kRunnable) continue;
        Resume(t);
        ran = true;
      }
      const bool released = ReleaseBarriers();
      if (std::all_of(fibers_.begin(), fibers_.end(),
                      [](const Fiber& fiber) { return fiber.state == State::kDone; })) {
        return;
      }
      if (!ran && !released) Fail("a block's threads wait at different barriers (deadlock)");
    }
  }

  void PrepareFiber(unsigned t) {
    Fiber& fiber = fibers_[t];
    fiber.state = State::kRunnable;
    char* bottom = static_cast<char*>(Stacks().Stack(t));
    boost::context::stack_context stack;
    stack.size = FiberStacks::kStackBytes;
    stack.sp = bottom + FiberStacks::kStackBytes;  // stacks grow down from here
    fiber.context = boost::context::fiber(
        std::allocator_arg, boost::context::preallocated(stack.sp, stack.size, stack), KeepStack{},
        [this](boost::context::fiber&& scheduler) { return FiberMain(std::move(scheduler)); });
  }

  // Opens the block barrier when every live thread waits at it, and each warp's when every
  // live thread of that warp does. Returns whether any thread became runnable.
  bool ReleaseBarriers() {
    bool released = false;
    const auto release_where = [&](unsigned first, unsigned end, State barrier) {
      bool any_waiting = false;
      for (unsigned t = first; t < end; ++t) {
        const State state = fibers_[t].state;
        if (state == barrier) {
          any_waiting = true;
        } else if (state != State::kDone) {
          return;
        }
      }
      if (!any_waiting) return;
      for (unsigned t = first; t < end; ++t) {
        if (fibers_[t].state == barrier) fibers_[t].state = State::kRunnable;
      }
      released = true;
    };
    release_where(0, threads_, State::kAtBlockBarrier);
    for (unsigned first = 0; first < threads_; first += kWarpSize) {
      release_where(first, std::min(threads_, first + kWarpSize), State::kAtWarpBarrier);
    }
    return released;
  }

  void Resume(unsigned t) {
    running_ = t;
    thread_index = dim3(t % block_.x, (t / block_.x) % block_.y, t / (block_.x * block_.y));
    void* fake_stack = nullptr;
    StartSwitch(&fake_stack, Stacks().Stack(t), FiberStacks::kStackBytes);
    // Returns the thread as it waits at a barrier, or empty once it has returned.
    fibers_[t].context = std::move(fibers_[t].context).resume();
    FinishSwitch(fake_stack, nullptr, nullptr);
  }

  void Wait(State barrier) {
    Fiber& fiber = fibers_[running_];
    fiber.state = barrier;
    void* fake_stack = nullptr;
    StartSwitch(&fake_stack, scheduler_stack_, scheduler_stack_bytes_);
    // The scheduler resumes this thread once its barrier opens, and hands over where it is then.
    scheduler_ = std::move(scheduler_).resume();
    FinishSwitch(fake_stack, nullptr, nullptr);
  }

  boost::context::fiber FiberMain(boost::context::fiber&& scheduler) {
    // The first switch onto this stack; it tells AddressSanitizer where the scheduler's is.
    FinishSwitch(nullptr, &scheduler_stack_, &scheduler_stack_bytes_);
    scheduler_ = std::move(scheduler);
    (*body_)();
    fibers_[running_].state = State::kDone;
    // Returning resumes the scheduler; this stack's fake frames die with the fiber.
    StartSwitch(nullptr, scheduler_stack_, scheduler_stack_bytes_);
    return std::move(scheduler_);
  }

  // AddressSanitizer must hear of every switch between stacks, or it takes the fiber's frames
  // for the thread's and reports (or, for thread-local storage, computes) nonsense.
  static void StartSwitch(void** fake_stack, const void* bottom, size_t bytes) {
#if FEDMOE_SIM_ASAN
    __sanitizer_start_switch_fiber(fake_stack, bottom, bytes);
#else
    (void)fake_stack;
    (void)bottom;
    (void)bytes;
#endif
  }
  static void FinishSwitch(void* fake_stack, const void** bottom, size_t* bytes) {
#if FEDMOE_SIM_ASAN
    __sanitizer_finish_switch_fiber(fake_stack, bottom, bytes);
#else
    (void)fake_stack;
    (void)bottom;
    (void)bytes;
#endif
  }

  dim3 grid_;
  dim3 block_;
  unsigned threads_;
  uint64_t blocks_;
  const std::function<void()>* body_ = nullptr;
  std::vector<uint64_t> exchange_;
  std::vector<unsigned char> gather_;
  static constexpr size_t kSharedAlignment = 128;
  size_t dynamic_shared_bytes_;
  std::vector<unsigned char> dynamic_shared_;
  std::vector<Fiber> fibers_;
  // Inside a running fiber: the scheduler, suspended where it resumed that fiber.
  boost::context::fiber scheduler_;
  const void* scheduler_stack_ = nullptr;
  size_t scheduler_stack_bytes_ = 0;
  unsigned running_ = 0;
};

GridRun* GridRun::current_ = nullptr;

GridRun& Current(const char* what) {
  if (GridRun::current_ == nullptr) Fail(what);
  return *GridRun::current_;
}

// Live allocations, so that a copy to or from a pointer cudaMalloc never returned, or past the
// end of one, is an error as on the GPU rather than a silent host copy.
class Allocations {
 public:
  // False, allocating nothing, when `device` has no room for `bytes` more.
  bool Add(void* pointer, size_t bytes, int device) {
    std::lock_guard lock(mutex_);
    if (capacity_ > 0 && used_[device] + bytes > capacity_) return false;
    live_[static_cast<const char*>(pointer)] = {bytes, device};
    used_[device] += bytes;
    return true;
  }
  bool Remove(void* pointer) {
    std::lock_guard lock(mutex_);
    const auto it = live_.find(static_cast<const char*>(pointer));
    if (it == live_.end()) return false;
    used_[it->second.device] -= it->second.bytes;
    live_.erase(it);
    return true;
  }
  bool Contains(const void* pointer, size_t bytes) {
    std::lock_guard lock(mutex_);
    const auto* address = static_cast<const char*>(pointer);
    auto it = live_.upper_bound(address);
    if (it == live_.begin()) return false;
    --it;
    return address + bytes <= it->first + it->second.bytes;
  }
  void SetCapacity(size_t bytes) {
    std::lock_guard lock(mutex_);
    capacity_ = bytes;
  }

 private:
  struct Allocation {
    size_t bytes;
    int device;
  };
  std::mutex mutex_;
  std::map<const char*, Allocation> live_;
  std::map<int, size_t> used_;
  size_t capacity_ = 0;  // per device; 0: as much as the host has
};

// The calling thread's device (cudaSetDevice).
thread_local int current_device = 0;

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
  if (!Live().Add(memory, bytes, current_device)) {
    std::free(memory);
    return Record(cudaErrorMemoryAllocation);
  }
  *pointer = memory;
  return cudaSuccess;
}

// Work queued on a created stream waits until something waits for it: an event on the stream
// that another stream or the host waits for, the device's synchronisation, cudaFree (which
// synchronises on the GPU too), or the stream's destruction. Synchronous copies do not wait
// for it, as on the GPU, where they order only the legacy default stream (and created streams
// are non-blocking). So a consumer that forgets to join a stream reads what was there before.
struct SimStream {
  int device = 0;
  std::mutex mutex;  // held while the queue runs: a stream's work runs in order
  std::deque<std::function<void()>> pending;
  uint64_t queued = 0;  // items ever queued
  uint64_t run = 0;     // items ever run
};

namespace {

struct Streams {
  std::mutex mutex;
  std::set<SimStream*> live;
};

Streams& LiveStreams() {
  static auto* streams = new Streams();
  return *streams;
}

// Runs the stream's work up to (not including) item `until`.
void RunStream(SimStream& stream, uint64_t until) {
  const std::lock_guard lock(stream.mutex);
  while (stream.run < until && !stream.pending.empty()) {
    std::function<void()> work = std::move(stream.pending.front());
    stream.pending.pop_front();
    work();
    ++stream.run;
  }
}

void RunStreamsOf(int device) {
  std::vector<SimStream*> streams;
  {
    const std::lock_guard lock(LiveStreams().mutex);
    for (SimStream* stream : LiveStreams().live) {
      if (stream->device == device) streams.push_back(stream);
    }
  }
  for (SimStream* stream : streams) RunStream(*stream, UINT64_MAX);
}

}  // namespace

void QueueOnStream(cudaStream_t stream, std::function<void()> work) {
  if (stream == nullptr) {
    work();
    return;
  }
  const std::lock_guard lock(stream->mutex);
  stream->pending.push_back(std::move(work));
  ++stream->queued;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned /*flags*/) {
  if (stream == nullptr) return Record(cudaErrorInvalidValue);
  *stream = new SimStream;
  (*stream)->device = current_device;
  const std::lock_guard lock(LiveStreams().mutex);
  LiveStreams().live.insert(*stream);
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (stream == nullptr) return Record(cudaErrorInvalidValue);
  RunStream(*stream, UINT64_MAX);
  {
    const std::lock_guard lock(LiveStreams().mutex);
    LiveStreams().live.erase(stream);
  }
  delete stream;
  return cudaSuccess;
}

cudaError_t cudaFree(void* pointer) {
  if (pointer == nullptr) return cudaSuccess;
  RunStreamsOf(current_device);
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

cudaError_t cudaMemcpyAsync(void* destination, const void* source, size_t bytes,
                            cudaMemcpyKind kind, cudaStream_t stream) {
  if (stream == nullptr || bytes == 0) return cudaMemcpy(destination, source, bytes, kind);
  // The arguments are checked now; a host source is staged now, as the runtime stages a
  // pageable one; the copy itself runs with the stream's work.
  if (kind != cudaMemcpyHostToDevice) return Record(cudaErrorInvalidValue);
  if (!Live().Contains(destination, bytes)) return Record(cudaErrorInvalidValue);
  std::vector<char> staged(static_cast<const char*>(source),
                           static_cast<const char*>(source) + bytes);
  QueueOnStream(stream, [destination, staged = std::move(staged)] {
    std::memcpy(destination, staged.data(), staged.size());
  });
  return cudaSuccess;
}

cudaError_t cudaMemset(void* destination, int value, size_t bytes) {
  if (bytes == 0) return cudaSuccess;
  if (!Live().Contains(destination, bytes)) return Record(cudaErrorInvalidValue);
  std::memset(destination, value, bytes);
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() {
  RunStreamsOf(current_device);
  return cudaSuccess;
}

struct SimEvent {
  std::optional<std::chrono::steady_clock::time_point> recorded_at;
  // Recorded on a created stream: the work before it is that stream's first `position` items.
  SimStream* stream = nullptr;
  uint64_t position = 0;
};

namespace {

// Runs what the event waits for.
void Reach(const SimEvent& event) {
  if (event.stream != nullptr) RunStream(*event.stream, event.position);
}

}  // namespace

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  if (event == nullptr) return Record(cudaErrorInvalidValue);
  *event = new SimEvent;
  return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned /*flags*/) {
  return cudaEventCreate(event);
}

cudaError_t cudaStreamWaitEvent(cudaStream_t /*stream*/, cudaEvent_t event, unsigned /*flags*/) {
  if (event == nullptr) return Record(cudaErrorInvalidValue);
  // Running the awaited work now is as late as any waiter may see it done.
  Reach(*event);
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete event;
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (event == nullptr) return Record(cudaErrorInvalidValue);
  event->recorded_at = std::chrono::steady_clock::now();
  event->stream = stream;
  if (stream != nullptr) {
    const std::lock_guard lock(stream->mutex);
    event->position = stream->queued;
  }
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (event == nullptr) return Record(cudaErrorInvalidValue);
  Reach(*event);
  return cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float* milliseconds, cudaEvent_t start, cudaEvent_t stop) {
  if (milliseconds == nullptr || start == nullptr || stop == nullptr || !start->recorded_at ||
      !stop->recorded_at) {
    return Record(cudaErrorInvalidValue);
  }
  *milliseconds =
      std::chrono::duration<float, std::milli>(*stop->recorded_at - *start->recorded_at).count();
  return cudaSuccess;
}

namespace {
constexpr int kSimulatedDevices = 8;
}  // namespace

cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= kSimulatedDevices) return Record(cudaErrorInvalidValue);
  current_device = device;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  if (device == nullptr) return Record(cudaErrorInvalidValue);
  *device = current_device;
  return cudaSuccess;
}

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

void SetDeviceMemoryCapacity(size_t bytes) { Live().SetCapacity(bytes); }

cudaError_t LaunchKernel(dim3 grid, dim3 block, size_t dynamic_shared_bytes,
                         const std::function<void()>& body) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (threads == 0 || threads > kMaxThreadsPerBlock || block.z > 64 || grid.x == 0 || grid.y == 0 ||
      grid.z == 0 || grid.x > kMaxGridX || grid.y > kMaxGridYz || grid.z > kMaxGridYz ||
      dynamic_shared_bytes > kMaxDynamicSharedBytes) {
    return Record(cudaErrorInvalidConfiguration);
  }
  std::lock_guard lock(LaunchMutex());
  GridRun run(grid, block, dynamic_shared_bytes);
  run.Run(body);
  return cudaSuccess;
}

void SyncThreads() { Current("__syncthreads outside a kernel").SyncThreads(); }
void SyncWarp() { Current("__syncwarp outside a kernel").SyncWarp(); }
uint64_t ExchangeInWarp(uint64_t value, unsigned source_lane) {
  return Current("a warp shuffle outside a kernel").Exchange(value, source_lane);
}
void GatherInWarp(const void* mine, size_t bytes, void* everyone) {
  Current("a warp-wide matrix operation outside a kernel").GatherWarp(mine, bytes, everyone);
}
void* DynamicSharedMemory() {
  return Current("dynamic shared memory outside a kernel").DynamicShared();
}
[[noreturn]] void FailKernel(const char* what) { Fail(what); }

}  // namespace fedmoe::cuda_sim
