// The server's side of one SecAgg+ round (secure_agg/shared/messages.h): the stage it is in
// (stages.h), and the calls the round engine makes on it. A message or a query for a stage that
// is not open is FailedPrecondition naming the stage that is, and changes nothing.
#ifndef FEDMOE_SECURE_AGG_SERVER_SECAGG_SERVER_H_
#define FEDMOE_SECURE_AGG_SERVER_SECAGG_SERVER_H_

#include <cstddef>
#include <cstdint>
#include <set>
#include <span>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "secure_agg/server/stages.h"
#include "secure_agg/shared/messages.h"
#include "secure_agg/shared/neighbor_graph.h"

namespace fedmoe::secure_agg {

class SecAggServer {
 public:
  static absl::StatusOr<SecAggServer> Create(RoundSetup setup, NeighborGraph graph);

  // Stage 1.
  absl::Status ReceiveAdvertisedKeys(const AdvertisedKeys& keys);
  absl::Status CloseAdvertiseKeys();

  // Stage 2. KeysFor: what each advertiser gets back, its neighbours' advertised keys.
  std::vector<AdvertisedKeys> KeysFor(uint32_t participant) const;
  absl::Status ReceiveShares(uint32_t sender, const std::vector<SealedShares>& shares);
  absl::Status CloseShareKeys();

  // Stage 3.
  std::vector<SealedShares> SharesFor(uint32_t participant) const;
  absl::Status ReceiveMaskedChunk(uint32_t participant, uint64_t first_value,
                                  std::span<const uint64_t> values);
  absl::Status CloseMaskedInput();

  // Stage 4.
  UnmaskRequest UnmaskRequestFor(uint32_t participant) const;
  absl::Status ReceiveRevealedShares(const RevealedShares& shares);
  // Σ x over the survivors, mod 2^bits, handed over rather than copied: the round is over.
  absl::StatusOr<std::vector<uint64_t>> Finish();

  // Those whose whole masked input is in the sum (empty before stage 3).
  const std::set<uint32_t>& survivors() const;
  // How many values of a participant's masked input the sum holds (to resume an upload).
  uint64_t ValuesReceived(uint32_t participant) const;
  // The open stage's name ("share-keys").
  std::string_view stage_name() const;

  // The bytes the server's round state holds: the graph and whatever the open stage holds (the
  // running sum, the advertised keys, the sealed bundles, the revealed shares). O(d + n·k),
  // whatever the cohort's inputs.
  size_t StateBytes() const;

 private:
  using Stage = std::variant<AdvertiseKeysStage, ShareKeysStage, MaskedInputStage, UnmaskStage,
                             FinishedStage>;

  explicit SecAggServer(RoundContext round) : round_(std::move(round)) {}
  // FailedPrecondition: `wanted` is not the open stage.
  absl::Status NotOpen(std::string_view wanted) const;
  // Closes the open stage, of type `Open`, into the next.
  template <typename Open>
  absl::Status Close();

  RoundContext round_;
  Stage stage_;
};

}  // namespace fedmoe::secure_agg

#endif  // FEDMOE_SECURE_AGG_SERVER_SECAGG_SERVER_H_
