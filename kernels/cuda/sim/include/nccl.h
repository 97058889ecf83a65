// The simulator's NCCL: the part fedmoe's data-parallel training calls (an all-reduce sum over
// the devices of one process), for the CPU simulator (see cuda_runtime.h). Simulated devices
// share one memory, so a group's all-reduce is a plain sum over its buffers, done at
// ncclGroupEnd once every rank of the communicator has queued its call, as NCCL requires.
#ifndef FEDMOE_KERNELS_CUDA_SIM_NCCL_H_
#define FEDMOE_KERNELS_CUDA_SIM_NCCL_H_

#include <cstddef>

#include "cuda_runtime.h"

namespace fedmoe::cuda_sim {

struct SimComm;
using ncclComm_t = SimComm*;

enum ncclResult_t {
  ncclSuccess = 0,
  ncclInvalidArgument = 4,
  ncclInvalidUsage = 5,
};
enum ncclDataType_t { ncclFloat32 = 7 };
enum ncclRedOp_t { ncclSum = 0 };

ncclResult_t ncclCommInitAll(ncclComm_t* comms, int devices, const int* device_list);
ncclResult_t ncclCommDestroy(ncclComm_t comm);
const char* ncclGetErrorString(ncclResult_t result);
ncclResult_t ncclGroupStart();
ncclResult_t ncclGroupEnd();
ncclResult_t ncclAllReduce(const void* send, void* receive, size_t count, ncclDataType_t type,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);

}  // namespace fedmoe::cuda_sim

using fedmoe::cuda_sim::ncclAllReduce;
using fedmoe::cuda_sim::ncclComm_t;
using fedmoe::cuda_sim::ncclCommDestroy;
using fedmoe::cuda_sim::ncclCommInitAll;
using fedmoe::cuda_sim::ncclDataType_t;
using fedmoe::cuda_sim::ncclFloat32;
using fedmoe::cuda_sim::ncclGetErrorString;
using fedmoe::cuda_sim::ncclGroupEnd;
using fedmoe::cuda_sim::ncclGroupStart;
using fedmoe::cuda_sim::ncclInvalidArgument;
using fedmoe::cuda_sim::ncclInvalidUsage;
using fedmoe::cuda_sim::ncclRedOp_t;
using fedmoe::cuda_sim::ncclResult_t;
using fedmoe::cuda_sim::ncclSuccess;
using fedmoe::cuda_sim::ncclSum;

#endif  // FEDMOE_KERNELS_CUDA_SIM_NCCL_H_
