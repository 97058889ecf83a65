// The client's side of one SecAgg+ round (secure_agg/shared/messages.h): it advertises two
// X25519 keys, seals Shamir shares of its secrets for its neighbours, masks its input in chunks,
// and reveals the shares the server asks for, never both of one neighbour's secrets. Its stages
// run in order; a call out of order is FailedPrecondition naming the stage it is at.
#ifndef FEDMOE_SECURE_AGG_CLIENT_SECAGG_CLIENT_H_
#define FEDMOE_SECURE_AGG_CLIENT_SECAGG_CLIENT_H_

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "secure_agg/shared/key_agreement.h"
#include "secure_agg/shared/mask_generator.h"
#include "secure_agg/shared/messages.h"

namespace fedmoe::secure_agg {

class SecAggClient {
 public:
  static absl::StatusOr<SecAggClient> Create(RoundSetup setup, uint32_t participant,
                                             std::vector<uint32_t> neighbors, Signer sign,
                                             SignatureVerifier verify);

  // Stage 1. Repeatable: returns the same keys.
  absl::StatusOr<AdvertisedKeys> AdvertiseKeys();
  // Stage 2: verifies the neighbours' signed keys and seals shares for them.
  absl::StatusOr<std::vector<SealedShares>> ShareKeys(
      const std::vector<AdvertisedKeys>& neighbor_keys);
  // Stage 3, first: the share bundles addressed to this client; they fix the neighbours it
  // masks against.
  absl::Status ReceiveShares(const std::vector<SealedShares>& incoming);
  // Stage 3: masks the next chunk of the input in place. Chunks run in order to `length`.
  absl::Status MaskChunk(std::span<uint64_t> chunk);
  // Stage 4. Checks the lists for consistency; refuses to reveal both shares of a neighbour.
  absl::StatusOr<RevealedShares> Unmask(const UnmaskRequest& request);

  uint32_t participant() const { return participant_; }

 private:
  enum class Stage { kNew, kAdvertised, kShared, kMasking, kMasked, kUnmasked };
  SecAggClient(RoundSetup setup, uint32_t participant, std::vector<uint32_t> neighbors, Signer sign,
               SignatureVerifier verify, X25519KeyPair cipher_keys, X25519KeyPair mask_keys)
      : setup_(std::move(setup)),
        participant_(participant),
        neighbors_(std::move(neighbors)),
        sign_(std::move(sign)),
        verify_(std::move(verify)),
        cipher_keys_(std::move(cipher_keys)),
        mask_keys_(std::move(mask_keys)) {}
  absl::Status Expect(Stage stage, std::string_view what) const;

  RoundSetup setup_;
  uint32_t participant_;
  std::vector<uint32_t> neighbors_;
  Signer sign_;
  SignatureVerifier verify_;
  X25519KeyPair cipher_keys_;
  X25519KeyPair mask_keys_;
  Stage stage_ = Stage::kNew;
  std::optional<AdvertisedKeys> advertised_;
  std::string self_mask_seed_;
  std::map<uint32_t, AdvertisedKeys> neighbor_keys_;
  // Shares this client holds for each neighbour that shared with it: (b share, key share).
  std::map<uint32_t, std::pair<std::string, std::string>> held_shares_;
  std::vector<MaskGenerator> add_masks_;
  std::vector<MaskGenerator> subtract_masks_;
  uint64_t masked_ = 0;
  std::optional<RevealedShares> revealed_;
};

}  // namespace fedmoe::secure_agg

#endif  // FEDMOE_SECURE_AGG_CLIENT_SECAGG_CLIENT_H_
