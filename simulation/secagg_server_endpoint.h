// The SecAgg+ server as the in-process simulation drives it: in the same process, or in a
// child process of its own behind a socket pair. The child's peak RSS is the server's alone,
// apart from the simulated clients' keys, inputs and masked vectors (secagg_sim
// --server-process).
#ifndef FEDMOE_SIMULATION_SECAGG_SERVER_ENDPOINT_H_
#define FEDMOE_SIMULATION_SECAGG_SERVER_ENDPOINT_H_

#include <cstdint>
#include <memory>
#include <set>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "secure_agg/server/secagg_server.h"
#include "secure_agg/shared/neighbor_graph.h"

namespace fedmoe::bench {

class ServerEndpoint {
 public:
  virtual ~ServerEndpoint() = default;
  virtual absl::Status ReceiveAdvertisedKeys(const secure_agg::AdvertisedKeys& keys) = 0;
  virtual absl::Status CloseAdvertiseKeys() = 0;
  virtual absl::StatusOr<std::vector<secure_agg::AdvertisedKeys>> KeysFor(uint32_t id) = 0;
  virtual absl::Status ReceiveShares(uint32_t sender,
                                     const std::vector<secure_agg::SealedShares>& shares) = 0;
  virtual absl::Status CloseShareKeys() = 0;
  virtual absl::StatusOr<std::vector<secure_agg::SealedShares>> SharesFor(uint32_t id) = 0;
  virtual absl::Status ReceiveMaskedChunk(uint32_t id, uint64_t first_value,
                                          std::span<const uint64_t> values) = 0;
  virtual absl::Status CloseMaskedInput() = 0;
  virtual absl::StatusOr<std::set<uint32_t>> Survivors() = 0;
  virtual absl::StatusOr<secure_agg::UnmaskRequest> UnmaskRequestFor(uint32_t id) = 0;
  virtual absl::Status ReceiveRevealedShares(const secure_agg::RevealedShares& shares) = 0;
  virtual absl::StatusOr<uint64_t> StateBytes() = 0;
  virtual absl::StatusOr<std::vector<uint64_t>> Finish() = 0;
  // The peak RSS of the process the server runs in, in MiB.
  virtual absl::StatusOr<double> PeakRssMib() = 0;
};

std::unique_ptr<ServerEndpoint> InProcessServer(secure_agg::SecAggServer server);

// Forks; the child creates the server and serves calls until the endpoint is destroyed. Fork
// early, while the parent is small: the child's RSS starts from what the parent had mapped.
absl::StatusOr<std::unique_ptr<ServerEndpoint>> ServerInChildProcess(
    const secure_agg::RoundSetup& setup, const secure_agg::NeighborGraph& graph);

}  // namespace fedmoe::bench

#endif  // FEDMOE_SIMULATION_SECAGG_SERVER_ENDPOINT_H_
