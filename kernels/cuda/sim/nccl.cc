// The simulator's NCCL (see include/nccl.h).
#include "nccl.h"

#include <algorithm>
#include <map>
#include <memory>
#include <vector>

#include "cuda_runtime.h"

namespace fedmoe::cuda_sim {

// The ranks made by one ncclCommInitAll.
struct SimClique {
  int size = 0;
};

struct SimComm {
  std::shared_ptr<SimClique> clique;
  int rank = 0;
};

namespace {

struct QueuedReduce {
  const float* send;
  float* receive;
  size_t count;
  int rank;
};

// Calls queued between ncclGroupStart and ncclGroupEnd on this thread, by clique.
thread_local int group_depth = 0;
thread_local std::map<SimClique*, std::vector<QueuedReduce>> queued;

ncclResult_t Reduce(SimClique& clique, std::vector<QueuedReduce>& calls) {
  if (static_cast<int>(calls.size()) != clique.size) return ncclInvalidUsage;
  const size_t count = calls.front().count;
  std::vector<bool> seen(static_cast<size_t>(clique.size), false);
  for (const QueuedReduce& call : calls) {
    if (call.count != count || seen[static_cast<size_t>(call.rank)]) return ncclInvalidUsage;
    seen[static_cast<size_t>(call.rank)] = true;
    if (!IsDeviceMemory(call.send, count * sizeof(float)) ||
        !IsDeviceMemory(call.receive, count * sizeof(float))) {
      return ncclInvalidArgument;
    }
  }
  // Summed in rank order, into a scratch first: a receive buffer may be another rank's send.
  std::vector<float> sum(count, 0.0F);
  std::vector<const QueuedReduce*> by_rank(calls.size());
  for (const QueuedReduce& call : calls) by_rank[static_cast<size_t>(call.rank)] = &call;
  for (const QueuedReduce* call : by_rank) {
    for (size_t i = 0; i < count; ++i) sum[i] += call->send[i];
  }
  for (const QueuedReduce& call : calls) std::copy(sum.begin(), sum.end(), call.receive);
  return ncclSuccess;
}

}  // namespace

ncclResult_t ncclCommInitAll(ncclComm_t* comms, int devices, const int* device_list) {
  if (comms == nullptr || devices < 1) return ncclInvalidArgument;
  auto clique = std::make_shared<SimClique>();
  clique->size = devices;
  for (int rank = 0; rank < devices; ++rank) {
    if (device_list != nullptr && cudaSetDevice(device_list[rank]) != cudaSuccess) {
      return ncclInvalidArgument;
    }
    comms[rank] = new SimComm{clique, rank};
  }
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  delete comm;
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess:
      return "no error";
    case ncclInvalidArgument:
      return "invalid argument";
    case ncclInvalidUsage:
      return "invalid usage";
  }
  return "unknown NCCL error";
}

ncclResult_t ncclGroupStart() {
  ++group_depth;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  if (group_depth == 0) return ncclInvalidUsage;
  if (--group_depth > 0) return ncclSuccess;
  ncclResult_t result = ncclSuccess;
  for (auto& [clique, calls] : queued) {
    if (const ncclResult_t reduced = Reduce(*clique, calls); reduced != ncclSuccess) {
      result = reduced;
    }
  }
  queued.clear();
  return result;
}

ncclResult_t ncclAllReduce(const void* send, void* receive, size_t count, ncclDataType_t type,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t /*stream*/) {
  if (comm == nullptr || type != ncclFloat32 || op != ncclSum) return ncclInvalidArgument;
  QueuedReduce call{static_cast<const float*>(send), static_cast<float*>(receive), count,
                    comm->rank};
  if (group_depth == 0) {
    // One thread driving one rank of several would wait for the others forever.
    if (comm->clique->size != 1) return ncclInvalidUsage;
    std::vector<QueuedReduce> alone{call};
    return Reduce(*comm->clique, alone);
  }
  queued[comm->clique.get()].push_back(call);
  return ncclSuccess;
}

}  // namespace fedmoe::cuda_sim
