// The simulator's cuBLAS (see include/cublas_v2.h).
#include <vector>

#include "cublas_v2.h"
#include "cuda_bf16.h"

namespace fedmoe::cuda_sim {

// A handle holds its stream (cublasSetStream); the simulator needs no workspace.
struct SimBlas {
  cudaStream_t stream = nullptr;
};

namespace {

double Load(const void* base, cudaDataType_t type, int64_t index) {
  if (type == CUDA_R_16BF) return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[index]);
  return static_cast<const float*>(base)[index];
}

void Store(void* base, cudaDataType_t type, int64_t index, double value) {
  if (type == CUDA_R_16BF) {
    static_cast<__nv_bfloat16*>(base)[index] = __float2bfloat16(static_cast<float>(value));
  } else {
    static_cast<float*>(base)[index] = static_cast<float>(value);
  }
}

bool Known(cudaDataType_t type) { return type == CUDA_R_32F || type == CUDA_R_16BF; }
bool Known(cublasOperation_t op) { return op == CUBLAS_OP_N || op == CUBLAS_OP_T; }

// The arguments of one column-major product C = α·op(A)·op(B) + β·C, checked as cuBLAS checks
// them: the leading dimensions must cover the stored rows (at least 1).
cublasStatus_t CheckGemm(cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
                         const void* a, cudaDataType_t a_type, int lda, const void* b,
                         cudaDataType_t b_type, int ldb, void* c, cudaDataType_t c_type, int ldc) {
  if (!Known(transa) || !Known(transb) || !Known(a_type) || !Known(b_type) || !Known(c_type)) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  const int a_rows = transa == CUBLAS_OP_N ? m : k;
  const int b_rows = transb == CUBLAS_OP_N ? k : n;
  if (m < 0 || n < 0 || k < 0 || lda < std::max(1, a_rows) || ldb < std::max(1, b_rows) ||
      ldc < std::max(1, m)) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  // Operands on the host would fault on the GPU; here they would silently work.
  if (!IsDeviceMemory(c, 1) || (k > 0 && (!IsDeviceMemory(a, 1) || !IsDeviceMemory(b, 1)))) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  return CUBLAS_STATUS_SUCCESS;
}

// The product itself, in double, of arguments CheckGemm passed.
void ComputeGemm(cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
                 float alpha, const void* a, cudaDataType_t a_type, int lda, const void* b,
                 cudaDataType_t b_type, int ldb, float beta, void* c, cudaDataType_t c_type,
                 int ldc) {
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < m; ++i) {
      double sum = 0;
      for (int l = 0; l < k; ++l) {
        const int64_t a_index = transa == CUBLAS_OP_N ? i + int64_t{l} * lda : l + int64_t{i} * lda;
        const int64_t b_index = transb == CUBLAS_OP_N ? l + int64_t{j} * ldb : j + int64_t{l} * ldb;
        sum += Load(a, a_type, a_index) * Load(b, b_type, b_index);
      }
      const int64_t c_index = i + int64_t{j} * ldc;
      // β = 0 does not read C, which may hold NaN (cuBLAS's rule).
      const double previous = beta == 0.0F ? 0.0 : beta * Load(c, c_type, c_index);
      Store(c, c_type, c_index, alpha * sum + previous);
    }
  }
}

cublasStatus_t Gemm(cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
                    float alpha, const void* a, cudaDataType_t a_type, int lda, const void* b,
                    cudaDataType_t b_type, int ldb, float beta, void* c, cudaDataType_t c_type,
                    int ldc) {
  const cublasStatus_t status =
      CheckGemm(transa, transb, m, n, k, a, a_type, lda, b, b_type, ldb, c, c_type, ldc);
  if (status == CUBLAS_STATUS_SUCCESS) {
    ComputeGemm(transa, transb, m, n, k, alpha, a, a_type, lda, b, b_type, ldb, beta, c, c_type,
                ldc);
  }
  return status;
}

}  // namespace

cublasStatus_t cublasCreate(cublasHandle_t* handle) {
  if (handle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new SimBlas();
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}

const char* cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void* alpha,
                            const void* a, cudaDataType_t a_type, int lda, const void* b,
                            cudaDataType_t b_type, int ldb, const void* beta, void* c,
                            cudaDataType_t c_type, int ldc, cublasComputeType_t compute_type,
                            cublasGemmAlgo_t /*algo*/) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (compute_type != CUBLAS_COMPUTE_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  const cublasStatus_t status =
      CheckGemm(transa, transb, m, n, k, a, a_type, lda, b, b_type, ldb, c, c_type, ldc);
  if (status != CUBLAS_STATUS_SUCCESS) return status;
  // The scalars are read now (host pointer mode); the product runs with the stream's work.
  const float alpha_value = *static_cast<const float*>(alpha);
  const float beta_value = *static_cast<const float*>(beta);
  QueueOnStream(handle->stream, [=] {
    ComputeGemm(transa, transb, m, n, k, alpha_value, a, a_type, lda, b, b_type, ldb, beta_value, c,
                c_type, ldc);
  });
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmGroupedBatchedEx(
    cublasHandle_t handle, const cublasOperation_t transa_array[],
    const cublasOperation_t transb_array[], const int m_array[], const int n_array[],
    const int k_array[], const void* alpha_array, const void* const a_array[],
    cudaDataType_t a_type, const int lda_array[], const void* const b_array[],
    cudaDataType_t b_type, const int ldb_array[], const void* beta_array, void* const c_array[],
    cudaDataType_t c_type, const int ldc_array[], int group_count, const int group_size[],
    cublasComputeType_t compute_type) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (compute_type != CUBLAS_COMPUTE_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  // It reads the device pointer arrays as it is called, which on a created stream would be too
  // early for a copy queued there; fedmoe calls it on the default stream only.
  if (handle->stream != nullptr) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (group_count < 0) return CUBLAS_STATUS_INVALID_VALUE;
  int problems = 0;
  for (int g = 0; g < group_count; ++g) problems += std::max(group_size[g], 0);
  // The pointer arrays are device arrays (the sizes, scalars and operations are host arrays).
  const size_t pointer_bytes = sizeof(void*) * static_cast<size_t>(problems);
  if (problems > 0 &&
      (!IsDeviceMemory(a_array, pointer_bytes) || !IsDeviceMemory(b_array, pointer_bytes) ||
       !IsDeviceMemory(c_array, pointer_bytes))) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  const auto* alphas = static_cast<const float*>(alpha_array);
  const auto* betas = static_cast<const float*>(beta_array);
  int problem = 0;
  for (int g = 0; g < group_count; ++g) {
    if (group_size[g] < 0) return CUBLAS_STATUS_INVALID_VALUE;
    for (int p = 0; p < group_size[g]; ++p, ++problem) {
      const cublasStatus_t status =
          Gemm(transa_array[g], transb_array[g], m_array[g], n_array[g], k_array[g], alphas[g],
               a_array[problem], a_type, lda_array[g], b_array[problem], b_type, ldb_array[g],
               betas[g], c_array[problem], c_type, ldc_array[g]);
      if (status != CUBLAS_STATUS_SUCCESS) return status;
    }
  }
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace fedmoe::cuda_sim
