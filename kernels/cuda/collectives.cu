#include <cuda_runtime.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/collectives.h"
#include "kernels/cuda/device_memory.h"

#ifdef FEDMOE_HAVE_NCCL
#include <nccl.h>
#endif

namespace fedmoe::kernels::cuda {

struct DeviceClique::State {
  int devices = 1;
#ifdef FEDMOE_HAVE_NCCL
  std::vector<ncclComm_t> comms;

  ~State() {
    for (ncclComm_t comm : comms) ncclCommDestroy(comm);
  }
#endif
};

namespace {

#ifdef FEDMOE_HAVE_NCCL
absl::Status NcclStatus(ncclResult_t result, const char* what) {
  if (result == ncclSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", ncclGetErrorString(result)));
}
#endif

}  // namespace

DeviceClique::DeviceClique(std::unique_ptr<State> state) : state_(std::move(state)) {}
DeviceClique::DeviceClique(DeviceClique&&) noexcept = default;
DeviceClique& DeviceClique::operator=(DeviceClique&&) noexcept = default;
DeviceClique::~DeviceClique() = default;

int DeviceClique::size() const { return state_->devices; }

absl::StatusOr<DeviceClique> DeviceClique::Create(int devices) {
  if (devices < 1) {
    return absl::InvalidArgumentError(absl::StrCat("a clique of ", devices, " devices"));
  }
  auto state = std::make_unique<State>();
  state->devices = devices;
  if (devices == 1) return DeviceClique(std::move(state));
#ifdef FEDMOE_HAVE_NCCL
  state->comms.resize(static_cast<size_t>(devices));
  std::vector<int> device_list(static_cast<size_t>(devices));
  for (int d = 0; d < devices; ++d) device_list[static_cast<size_t>(d)] = d;
  if (absl::Status status = NcclStatus(
          ncclCommInitAll(state->comms.data(), devices, device_list.data()), "ncclCommInitAll");
      !status.ok()) {
    state->comms.clear();
    return status;
  }
  return DeviceClique(std::move(state));
#else
  return absl::UnimplementedError(
      absl::StrCat("training on ", devices, " GPUs needs NCCL, which this build did not find"));
#endif
}

absl::Status DeviceClique::SumInPlace(std::span<float* const> buffers, size_t count) {
  if (static_cast<int>(buffers.size()) != state_->devices) {
    return absl::InvalidArgumentError(
        absl::StrCat(buffers.size(), " buffers for a clique of ", state_->devices, " devices"));
  }
  if (state_->devices == 1 || count == 0) return absl::OkStatus();
#ifdef FEDMOE_HAVE_NCCL
  // One thread drives every device, so the calls go in one group (else the first would wait
  // for the others forever).
  absl::Status status = NcclStatus(ncclGroupStart(), "ncclGroupStart");
  for (size_t d = 0; d < buffers.size() && status.ok(); ++d) {
    status.Update(SetDevice(static_cast<int>(d)));
    status.Update(NcclStatus(ncclAllReduce(buffers[d], buffers[d], count, ncclFloat32, ncclSum,
                                           state_->comms[d], cudaStream_t{}),
                             "ncclAllReduce"));
  }
  status.Update(NcclStatus(ncclGroupEnd(), "ncclGroupEnd"));
  for (size_t d = 0; d < buffers.size() && status.ok(); ++d) {
    status.Update(SetDevice(static_cast<int>(d)));
    status.Update(Synchronize());
  }
  return status;
#else
  return absl::UnimplementedError("this build has no NCCL");
#endif
}

}  // namespace fedmoe::kernels::cuda
