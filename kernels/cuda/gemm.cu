#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#ifndef FEDMOE_CUDA_SIM
#include <dlfcn.h>
#endif

#include "absl/strings/str_cat.h"
#include "kernels/cuda/device_memory.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/launch.h"

namespace fedmoe::kernels::cuda {

// The cuBLAS entry points fedmoe calls. The library is loaded at the first Blas::Create, not
// linked: libcublasLt carries 92 KiB of static thread-local storage, which glibc carves out of
// every new thread's stack, and threads created with small stacks then fail to start
// (civetweb's, behind the /metrics endpoint, did, in every process that linked cuBLAS).
// Loaded with dlopen, the library's thread-local storage is allocated apart from the stacks.
struct CublasApi {
  decltype(&cublasCreate) create;
  decltype(&cublasDestroy) destroy;
  decltype(&cublasGetStatusString) status_string;
  // Spelled out: the header overloads cublasGemmEx for C++ callers.
  cublasStatus_t (*gemm)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                         const void*, const void*, cudaDataType_t, int, const void*, cudaDataType_t,
                         int, const void*, void*, cudaDataType_t, int, cublasComputeType_t,
                         cublasGemmAlgo_t);
  decltype(&cublasGemmGroupedBatchedEx) grouped_gemm;
  decltype(&cublasSetStream) set_stream;
};

namespace {

absl::StatusOr<const CublasApi*> Cublas() {
#ifdef FEDMOE_CUDA_SIM
  static const CublasApi api{&cublasCreate,
                             &cublasDestroy,
                             &cublasGetStatusString,
                             &cublasGemmEx,
                             &cublasGemmGroupedBatchedEx,
                             &cublasSetStream};
  return &api;
#else
  static const absl::StatusOr<CublasApi> loaded = []() -> absl::StatusOr<CublasApi> {
    void* library = nullptr;
    std::string errors;
    // The library CMake found, then the dynamic linker's search for the same soname.
    for (const char* name : {FEDMOE_CUBLAS_LIBRARY, FEDMOE_CUBLAS_SONAME}) {
      library = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (library != nullptr) break;
      absl::StrAppend(&errors, errors.empty() ? "" : "; ", dlerror());
    }
    if (library == nullptr) {
      return absl::UnavailableError(absl::StrCat("cannot load cuBLAS: ", errors));
    }
    CublasApi api{};
    const auto bind = [&](auto& function, const char* symbol) {
      function =
          reinterpret_cast<std::remove_reference_t<decltype(function)>>(dlsym(library, symbol));
      return function != nullptr;
    };
    // cublasCreate, cublasDestroy and cublasSetStream are macros for the _v2 symbols.
    if (!bind(api.create, "cublasCreate_v2") || !bind(api.destroy, "cublasDestroy_v2") ||
        !bind(api.status_string, "cublasGetStatusString") || !bind(api.gemm, "cublasGemmEx") ||
        !bind(api.grouped_gemm, "cublasGemmGroupedBatchedEx") ||
        !bind(api.set_stream, "cublasSetStream_v2")) {
      return absl::UnavailableError(
          absl::StrCat("cuBLAS lacks a function fedmoe needs: ", dlerror()));
    }
    return api;
  }();
  if (!loaded.ok()) return loaded.status();
  return &*loaded;
#endif
}

absl::Status BlasStatus(const CublasApi& api, cublasStatus_t status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", api.status_string(status)));
}

cudaDataType_t DataTypeOf(ElementType type) {
  return type == ElementType::kBfloat16 ? CUDA_R_16BF : CUDA_R_32F;
}

// Row-major c[m, n] = a[m, k]·b[k, n] is column-major cᵀ[n, m] = bᵀ[n, k]·aᵀ[k, m], and a
// row-major array is the column-major array of its transpose. So cuBLAS's A is our b and its
// B our a; an operand stored transposed is read with OP_T.
struct ColumnMajorCall {
  cublasOperation_t transa;
  cublasOperation_t transb;
  int m, n, k;
  const void* a;
  int lda;
  const void* b;
  int ldb;
  void* c;
  int ldc;
};

ColumnMajorCall ToColumnMajor(const GemmProblem& p) {
  const auto m = static_cast<int>(p.m);
  const auto n = static_cast<int>(p.n);
  const auto k = static_cast<int>(p.k);
  return {p.b.transposed ? CUBLAS_OP_T : CUBLAS_OP_N,
          p.a.transposed ? CUBLAS_OP_T : CUBLAS_OP_N,
          n,
          m,
          k,
          p.b.data,
          std::max(1, p.b.transposed ? k : n),
          p.a.data,
          std::max(1, p.a.transposed ? m : k),
          p.c,
          std::max(1, n)};
}

bool FitsInt(const GemmProblem& p) {
  constexpr int64_t kLimit = (int64_t{1} << 31) - 1;
  return p.m >= 0 && p.n >= 0 && p.k >= 0 && p.m <= kLimit && p.n <= kLimit && p.k <= kLimit;
}

}  // namespace

// A stream of its own for some of a group's products, with a cuBLAS handle bound to it (each
// handle has its own workspace, which concurrent products must not share).
struct ProductLane {
  cublasHandle_t handle = nullptr;
  cudaStream_t stream = nullptr;
  cudaEvent_t done = nullptr;  // recorded after the lane's products
};

struct Blas::State {
  const CublasApi* api = nullptr;
  cublasHandle_t handle = nullptr;
  GroupedProducts grouped = GroupedProducts::kGroupedCall;
  // Grouped calls read their pointer arrays from the device: a, b and c pointers, allocated
  // at the first grouped call and grown as needed.
  DeviceArray<const void*> pointers;
  bool grouped_unsupported = false;
  // kConcurrentStreams: created at the first group.
  std::vector<ProductLane> lanes;
  cudaEvent_t ready = nullptr;  // recorded on the default stream before a group's products

  ~State() {
    for (ProductLane& lane : lanes) {
      if (lane.handle != nullptr) api->destroy(lane.handle);
      if (lane.stream != nullptr) cudaStreamDestroy(lane.stream);
      if (lane.done != nullptr) cudaEventDestroy(lane.done);
    }
    if (ready != nullptr) cudaEventDestroy(ready);
    if (handle != nullptr) api->destroy(handle);
  }

  absl::Status MatMulOn(cublasHandle_t on, const GemmProblem& problem, bool accumulate) const;
  absl::Status CreateLanes();
  absl::Status RunOnLanes(std::span<const GemmProblem> problems, bool accumulate);
};

Blas::Blas(std::unique_ptr<State> state) : state_(std::move(state)) {}
Blas::Blas(Blas&&) noexcept = default;
Blas& Blas::operator=(Blas&&) noexcept = default;
Blas::~Blas() = default;

absl::StatusOr<Blas> Blas::Create(GroupedProducts grouped) {
  absl::StatusOr<const CublasApi*> api = Cublas();
  if (!api.ok()) return api.status();
  auto state = std::make_unique<State>();
  state->api = *api;
  state->grouped = grouped;
  if (absl::Status status = BlasStatus(**api, (*api)->create(&state->handle), "cublasCreate");
      !status.ok()) {
    state->handle = nullptr;
    return status;
  }
  return Blas(std::move(state));
}

absl::Status Blas::MatMul(const GemmProblem& problem, bool accumulate) {
  return state_->MatMulOn(state_->handle, problem, accumulate);
}

absl::Status Blas::State::MatMulOn(cublasHandle_t on, const GemmProblem& problem,
                                   bool accumulate) const {
  if (!FitsInt(problem)) {
    return absl::InvalidArgumentError(absl::StrCat("matmul of ", problem.m, "×", problem.k, " by ",
                                                   problem.k, "×", problem.n,
                                                   ": sizes must be in [0, 2^31)"));
  }
  if (problem.m == 0 || problem.n == 0) return absl::OkStatus();
  if (problem.k == 0) {
    if (accumulate) return absl::OkStatus();
    return CudaStatus(
        cudaMemset(problem.c, 0, static_cast<size_t>(problem.m * problem.n) * sizeof(float)),
        "zeroing an empty product");
  }
  const ColumnMajorCall call = ToColumnMajor(problem);
  const float alpha = 1.0F;
  const float beta = accumulate ? 1.0F : 0.0F;
  // Timed by the caller on another stream: events on the default one would not bracket it.
  const ProfiledScope profiled(on == handle ? "cublasGemmEx" : nullptr);
  return BlasStatus(
      *api,
      api->gemm(on, call.transa, call.transb, call.m, call.n, call.k, &alpha, call.a,
                DataTypeOf(problem.b.type), call.lda, call.b, DataTypeOf(problem.a.type), call.ldb,
                &beta, call.c, CUDA_R_32F, call.ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
      "cublasGemmEx");
}

absl::Status Blas::GroupedMatMul(std::span<const GemmProblem> problems, bool accumulate) {
  std::vector<GemmProblem> runnable;  // the problems with work: m, n and k above 0
  runnable.reserve(problems.size());
  for (const GemmProblem& problem : problems) {
    if (!FitsInt(problem)) return MatMul(problem, accumulate);  // reports the size error
    if (problems.front().a.type != problem.a.type || problems.front().b.type != problem.b.type ||
        problems.front().a.transposed != problem.a.transposed ||
        problems.front().b.transposed != problem.b.transposed) {
      return absl::InvalidArgumentError("a grouped matmul's problems share types and storage");
    }
    if (problem.m == 0 || problem.n == 0) continue;
    if (problem.k == 0) {
      if (absl::Status status = MatMul(problem, accumulate); !status.ok()) return status;
      continue;
    }
    runnable.push_back(problem);
  }
  if (runnable.empty()) return absl::OkStatus();
  if (state_->grouped == GroupedProducts::kConcurrentStreams) {
    return state_->RunOnLanes(runnable, accumulate);
  }
  const auto run_one_by_one = [&]() -> absl::Status {
    for (const GemmProblem& problem : runnable) {
      if (absl::Status status = MatMul(problem, accumulate); !status.ok()) return status;
    }
    return absl::OkStatus();
  };
  if (state_->grouped_unsupported) return run_one_by_one();

  // Each problem its own group of one: the groups may differ in every size.
  const size_t count = runnable.size();
  std::vector<cublasOperation_t> transa(count), transb(count);
  std::vector<int> m(count), n(count), k(count), lda(count), ldb(count), ldc(count),
      group_size(count, 1);
  std::vector<float> alpha(count, 1.0F), beta(count, accumulate ? 1.0F : 0.0F);
  std::vector<const void*> pointers(3 * count);
  for (size_t i = 0; i < count; ++i) {
    const ColumnMajorCall call = ToColumnMajor(runnable[i]);
    transa[i] = call.transa;
    transb[i] = call.transb;
    m[i] = call.m;
    n[i] = call.n;
    k[i] = call.k;
    lda[i] = call.lda;
    ldb[i] = call.ldb;
    ldc[i] = call.ldc;
    pointers[i] = call.a;
    pointers[count + i] = call.b;
    pointers[2 * count + i] = call.c;
  }
  if (state_->pointers.size() < pointers.size()) {
    absl::StatusOr<DeviceArray<const void*>> grown =
        DeviceArray<const void*>::Allocate(pointers.size());
    if (!grown.ok()) return grown.status();
    state_->pointers = std::move(*grown);
  }
  // Queued, not synchronous: a synchronous copy would wait for the GPU to drain at every
  // grouped product. Stream order still keeps the previous grouped product's reads of these
  // device pointers ahead of this overwrite, and the (pageable) host vector is staged before
  // the call returns.
  if (absl::Status status = QueueCopyHostToDevice(state_->pointers.data(), pointers.data(),
                                                  pointers.size() * sizeof(void*));
      !status.ok()) {
    return status;
  }
  const void* const* device_pointers = state_->pointers.data();
  cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
  {
    const ProfiledScope profiled("cublasGemmGroupedBatchedEx");
    status = state_->api->grouped_gemm(
        state_->handle, transa.data(), transb.data(), m.data(), n.data(), k.data(), alpha.data(),
        device_pointers, DataTypeOf(problems.front().b.type), lda.data(), device_pointers + count,
        DataTypeOf(problems.front().a.type), ldb.data(), beta.data(),
        const_cast<void* const*>(device_pointers + 2 * count), CUDA_R_32F, ldc.data(),
        static_cast<int>(count), group_size.data(), CUBLAS_COMPUTE_32F);
  }
  if (status == CUBLAS_STATUS_NOT_SUPPORTED || status == CUBLAS_STATUS_INVALID_VALUE) {
    // This cuBLAS has no grouped product for these types: one call per problem from now on
    // (which reports the problem, should one be at fault).
    state_->grouped_unsupported = true;
    return run_one_by_one();
  }
  return BlasStatus(*state_->api, status, "cublasGemmGroupedBatchedEx");
}

absl::Status Blas::State::CreateLanes() {
  lanes.resize(kProductLanes);
  absl::Status status = CudaStatus(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming),
                                   "an event for concurrent products");
  for (ProductLane& lane : lanes) {
    if (!status.ok()) break;
    status.Update(CudaStatus(cudaStreamCreateWithFlags(&lane.stream, cudaStreamNonBlocking),
                             "a stream for concurrent products"));
    status.Update(CudaStatus(cudaEventCreateWithFlags(&lane.done, cudaEventDisableTiming),
                             "an event for concurrent products"));
    if (!status.ok()) break;
    status.Update(BlasStatus(*api, api->create(&lane.handle), "cublasCreate"));
    if (!status.ok()) {
      lane.handle = nullptr;
      break;
    }
    status.Update(BlasStatus(*api, api->set_stream(lane.handle, lane.stream), "cublasSetStream"));
  }
  return status;  // on failure the destructor releases what was made
}

absl::Status Blas::State::RunOnLanes(std::span<const GemmProblem> problems, bool accumulate) {
  if (lanes.empty()) {
    if (absl::Status status = CreateLanes(); !status.ok()) return status;
  }
  // Largest first, each onto the lane with the least work so far, so the lanes end together.
  std::vector<size_t> order(problems.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  const auto work = [&](size_t i) {
    return static_cast<double>(problems[i].m) * static_cast<double>(problems[i].n) *
           static_cast<double>(problems[i].k);
  };
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t x, size_t y) { return work(x) > work(y); });
  std::vector<std::vector<size_t>> assigned(lanes.size());
  std::vector<double> load(lanes.size(), 0.0);
  for (const size_t i : order) {
    const auto lane =
        static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    assigned[lane].push_back(i);
    load[lane] += work(i);
  }

  const ProfiledScope profiled("cublasGemmEx on concurrent streams");
  // Fork: each lane starts after the default stream's work so far (the operands, and c when
  // accumulating). Join: the default stream's later work waits for every lane that ran. A lane
  // that started is joined even when a product fails, so nothing later overtakes its work.
  absl::Status status = CudaStatus(cudaEventRecord(ready, nullptr), "fork concurrent products");
  for (size_t lane = 0; lane < lanes.size() && status.ok(); ++lane) {
    if (assigned[lane].empty()) continue;
    status.Update(
        CudaStatus(cudaStreamWaitEvent(lanes[lane].stream, ready, 0), "fork concurrent products"));
    for (const size_t i : assigned[lane]) {
      if (!status.ok()) break;
      status.Update(MatMulOn(lanes[lane].handle, problems[i], accumulate));
    }
    status.Update(CudaStatus(cudaEventRecord(lanes[lane].done, lanes[lane].stream),
                             "join concurrent products"));
    status.Update(
        CudaStatus(cudaStreamWaitEvent(nullptr, lanes[lane].done, 0), "join concurrent products"));
  }
  return status;
}

}  // namespace fedmoe::kernels::cuda
