// The simulator's cuBLAS: the GEMM entry points fedmoe calls, with cuBLAS's column-major
// semantics and its argument checks, computed on the CPU in double (see cuda_runtime.h). The
// checks matter as much as the arithmetic: a leading dimension that real cuBLAS would refuse
// is refused here too, so the simulated tests catch it.
#ifndef FEDMOE_KERNELS_CUDA_SIM_CUBLAS_V2_H_
#define FEDMOE_KERNELS_CUDA_SIM_CUBLAS_V2_H_

// This header stands in for the CUDA toolkit's, so it declares CUDA's own names, which are
// reserved identifiers (__global__, __shfl_sync, __nv_bfloat16, ...).
// NOLINTBEGIN(bugprone-reserved-identifier)

#include <cstdint>

#include "cuda_runtime.h"

namespace fedmoe::cuda_sim {

enum cublasStatus_t {
  CUBLAS_STATUS_SUCCESS = 0,
  CUBLAS_STATUS_NOT_INITIALIZED = 1,
  CUBLAS_STATUS_INVALID_VALUE = 7,
  CUBLAS_STATUS_NOT_SUPPORTED = 15,
};
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cudaDataType_t { CUDA_R_32F = 0, CUDA_R_16BF = 14 };
enum cublasComputeType_t { CUBLAS_COMPUTE_32F = 68 };
enum cublasGemmAlgo_t { CUBLAS_GEMM_DEFAULT = -1 };
struct SimBlas;
using cublasHandle_t = SimBlas*;

cublasStatus_t cublasCreate(cublasHandle_t* handle);
cublasStatus_t cublasDestroy(cublasHandle_t handle);
// Products on the handle then queue on `stream` (see cuda_runtime.h).
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream);
const char* cublasGetStatusString(cublasStatus_t status);

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void* alpha,
                            const void* a, cudaDataType_t a_type, int lda, const void* b,
                            cudaDataType_t b_type, int ldb, const void* beta, void* c,
                            cudaDataType_t c_type, int ldc, cublasComputeType_t compute_type,
                            cublasGemmAlgo_t algo);

cublasStatus_t cublasGemmGroupedBatchedEx(
    cublasHandle_t handle, const cublasOperation_t transa_array[],
    const cublasOperation_t transb_array[], const int m_array[], const int n_array[],
    const int k_array[], const void* alpha_array, const void* const a_array[],
    cudaDataType_t a_type, const int lda_array[], const void* const b_array[],
    cudaDataType_t b_type, const int ldb_array[], const void* beta_array, void* const c_array[],
    cudaDataType_t c_type, const int ldc_array[], int group_count, const int group_size[],
    cublasComputeType_t compute_type);

}  // namespace fedmoe::cuda_sim

using fedmoe::cuda_sim::CUBLAS_COMPUTE_32F;
using fedmoe::cuda_sim::CUBLAS_GEMM_DEFAULT;
using fedmoe::cuda_sim::CUBLAS_OP_N;
using fedmoe::cuda_sim::CUBLAS_OP_T;
using fedmoe::cuda_sim::CUBLAS_STATUS_INVALID_VALUE;
using fedmoe::cuda_sim::CUBLAS_STATUS_NOT_SUPPORTED;
using fedmoe::cuda_sim::CUBLAS_STATUS_SUCCESS;
using fedmoe::cuda_sim::cublasComputeType_t;
using fedmoe::cuda_sim::cublasCreate;
using fedmoe::cuda_sim::cublasDestroy;
using fedmoe::cuda_sim::cublasGemmAlgo_t;
using fedmoe::cuda_sim::cublasGemmEx;
using fedmoe::cuda_sim::cublasGemmGroupedBatchedEx;
using fedmoe::cuda_sim::cublasGetStatusString;
using fedmoe::cuda_sim::cublasHandle_t;
using fedmoe::cuda_sim::cublasOperation_t;
using fedmoe::cuda_sim::cublasSetStream;
using fedmoe::cuda_sim::cublasStatus_t;
using fedmoe::cuda_sim::CUDA_R_16BF;
using fedmoe::cuda_sim::CUDA_R_32F;
using fedmoe::cuda_sim::cudaDataType_t;

// NOLINTEND(bugprone-reserved-identifier)

#endif  // FEDMOE_KERNELS_CUDA_SIM_CUBLAS_V2_H_
