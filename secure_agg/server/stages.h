// The server's side of a SecAgg+ round as typed stages (fcp's pattern, with values instead of
// heap objects): each stage is a type that holds only what that stage can use and accepts only
// that stage's messages, and closing it consumes it into the next:
//
//   AdvertiseKeysStage ─Close→ ShareKeysStage ─Close→ MaskedInputStage ─Close→ UnmaskStage
//                                                                      ─Finish→ FinishedStage
//
// So no stage can see a message of another (the compiler says so, not an `if (stage_ != 3)`),
// and what crosses a boundary is explicit in a constructor: the advertised keys travel to the
// end, the share bundles are re-filed by recipient when share-keys closes, the running sum exists
// only from masked-input on. A failed Close or Finish moves nothing, so the stage stays as it
// was. SecAggServer (secagg_server.h) holds the current stage in a std::variant.
#ifndef FEDMOE_SECURE_AGG_SERVER_STAGES_H_
#define FEDMOE_SECURE_AGG_SERVER_STAGES_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "secure_agg/shared/messages.h"
#include "secure_agg/shared/neighbor_graph.h"

namespace fedmoe::secure_agg {

// What the whole round shares, fixed when it starts.
struct RoundContext {
  RoundSetup setup;
  NeighborGraph graph;
};

using KeysByParticipant = std::map<uint32_t, AdvertisedKeys>;
using BundlesByParticipant = std::map<uint32_t, std::vector<SealedShares>>;

class ShareKeysStage;
class MaskedInputStage;
class UnmaskStage;
class FinishedStage;

// 1. Each participant's two public keys and their signature.
class AdvertiseKeysStage {
 public:
  static constexpr std::string_view kName = "advertise-keys";

  // A repeat of the same keys is accepted once; different keys for a participant are
  // AlreadyExists.
  absl::Status Receive(const RoundContext& round, const AdvertisedKeys& keys);
  absl::StatusOr<ShareKeysStage> Close(const RoundContext& round) &&;
  size_t Bytes() const;

 private:
  KeysByParticipant advertised_;
};

// 2. Each advertiser's share bundles, sealed for its advertised neighbours.
class ShareKeysStage {
 public:
  static constexpr std::string_view kName = "share-keys";

  explicit ShareKeysStage(KeysByParticipant advertised) : advertised_(std::move(advertised)) {}
  // What each advertiser gets back: its neighbours' advertised keys.
  std::vector<AdvertisedKeys> KeysFor(const RoundContext& round, uint32_t participant) const;
  absl::Status Receive(const RoundContext& round, uint32_t sender,
                       const std::vector<SealedShares>& shares);
  absl::StatusOr<MaskedInputStage> Close(const RoundContext& round) &&;
  size_t Bytes() const;

 private:
  KeysByParticipant advertised_;
  BundlesByParticipant shares_by_sender_;
};

// 3. The masked inputs of those who shared keys, chunk by chunk, into one running sum.
class MaskedInputStage {
 public:
  static constexpr std::string_view kName = "masked-input";

  MaskedInputStage(KeysByParticipant advertised, BundlesByParticipant shares_by_recipient,
                   std::set<uint32_t> shared, uint64_t length)
      : advertised_(std::move(advertised)),
        shares_by_recipient_(std::move(shares_by_recipient)),
        shared_(std::move(shared)),
        sum_(length, 0) {}
  // The bundles sealed for `participant`.
  std::vector<SealedShares> SharesFor(uint32_t participant) const;
  // Chunks of a participant's masked input, in order. A chunk below the next expected value is
  // ignored (a retry); one above it is OutOfRange.
  absl::Status ReceiveChunk(const RoundContext& round, uint32_t participant, uint64_t first_value,
                            std::span<const uint64_t> values);
  uint64_t ValuesReceived(uint32_t participant) const;
  // A participant whose upload started but did not finish would leave part of a masked vector
  // in the sum: FailedPrecondition, and the round must abort.
  absl::StatusOr<UnmaskStage> Close(const RoundContext& round) &&;
  // Those whose whole input is in the sum.
  const std::set<uint32_t>& survivors() const { return survivors_; }
  size_t Bytes() const;

 private:
  KeysByParticipant advertised_;
  BundlesByParticipant shares_by_recipient_;
  std::set<uint32_t> shared_;
  std::map<uint32_t, uint64_t> received_values_;
  std::set<uint32_t> survivors_;
  std::vector<uint64_t> sum_;
};

// 4. The survivors' revealed shares: of b for each live neighbour, of the mask key for each
// dropped one.
class UnmaskStage {
 public:
  static constexpr std::string_view kName = "unmask";

  UnmaskStage(KeysByParticipant advertised, std::set<uint32_t> shared, std::set<uint32_t> survivors,
              std::vector<uint64_t> sum)
      : advertised_(std::move(advertised)),
        shared_(std::move(shared)),
        survivors_(std::move(survivors)),
        sum_(std::move(sum)) {}
  UnmaskRequest RequestFor(const RoundContext& round, uint32_t participant) const;
  absl::Status Receive(const RoundContext& round, const RevealedShares& shares);
  // Recovers the secrets and removes every mask. FailedPrecondition, releasing nothing and
  // keeping the stage as it was, when some secret lacks `threshold` shares. Any later error
  // (OpenSSL's) ends the round with the sum gone.
  absl::StatusOr<FinishedStage> Finish(const RoundContext& round) &&;
  const std::set<uint32_t>& survivors() const { return survivors_; }
  size_t Bytes() const;

 private:
  KeysByParticipant advertised_;
  std::set<uint32_t> shared_;
  std::set<uint32_t> survivors_;
  std::map<uint32_t, RevealedShares> revealed_;
  std::vector<uint64_t> sum_;
};

// The round is over: who is in the sum, and the sum until it is taken.
class FinishedStage {
 public:
  static constexpr std::string_view kName = "finished";

  FinishedStage(std::set<uint32_t> survivors, std::vector<uint64_t> sum)
      : survivors_(std::move(survivors)), sum_(std::move(sum)) {}
  // Σ x over the survivors, mod 2^bits; handed over, not copied, so only once.
  std::vector<uint64_t> TakeSum() { return std::move(sum_); }
  const std::set<uint32_t>& survivors() const { return survivors_; }
  size_t Bytes() const { return sum_.capacity() * sizeof(uint64_t); }

 private:
  std::set<uint32_t> survivors_;
  std::vector<uint64_t> sum_;
};

}  // namespace fedmoe::secure_agg

#endif  // FEDMOE_SECURE_AGG_SERVER_STAGES_H_
