// SecAgg+ (Bell et al. 2020 over Bonawitz et al. 2017), semi-honest clients, a coordinator that
// cannot substitute keys: the messages, and the client's and server's sides of one round.
//
// Transport-agnostic: the caller carries messages between the two (gRPC in fedmoe, function
// calls in secagg_sim and the tests). Neither side owns a socket or a thread.
//
// Stages, as the server drives them:
//   1. AdvertiseKeys: each client's two X25519 public keys, signed with its identity key.
//   2. ShareKeys: each client Shamir-shares its self-mask seed b and its mask private key among
//      the neighbours that advertised, each share bundle sealed for its recipient.
//   3. MaskedInput: y = x + PRG(b) + Σ_v ±PRG(s_uv) over the neighbours that shared keys,
//      streamed in chunks that the server adds into one running sum.
//   4. Unmask: survivors reveal shares of b for live neighbours and of the mask key for
//      dropped ones, never both for one neighbour; the server removes the masks.
#ifndef FEDMOE_SECURE_AGG_PROTOCOL_H_
#define FEDMOE_SECURE_AGG_PROTOCOL_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "secure_agg/key_agreement.h"
#include "secure_agg/mask_generator.h"
#include "secure_agg/neighbor_graph.h"
#include "secure_agg/shamir.h"

namespace fedmoe::secure_agg {

// What every participant and the server agree on before the round starts.
struct RoundSetup {
  uint64_t round_id = 0;
  // 32 bytes binding every derivation and signature to this round.
  std::string session_id;
  uint32_t num_participants = 0;
  // t: shares among a participant's neighbours that recover its secrets.
  uint32_t threshold = 0;
  // Values per input vector, and the ring Z_(2^bits).
  uint64_t length = 0;
  int bits = 32;
};

struct AdvertisedKeys {
  uint32_t participant = 0;
  std::string cipher_public_key;
  std::string mask_public_key;
  std::string signature;
};

struct SealedShares {
  uint32_t sender = 0;
  uint32_t recipient = 0;
  std::string ciphertext;
};

struct UnmaskRequest {
  std::vector<uint32_t> alive;
  std::vector<uint32_t> dropped;
};

struct RevealedShares {
  uint32_t participant = 0;
  // owner → 40-byte share.
  std::map<uint32_t, std::string> self_mask_shares;
  std::map<uint32_t, std::string> mask_key_shares;
};

// The bytes a client signs with its identity key when advertising, and peers verify:
// "fedmoe/v1/advertise-keys" ‖ session id ‖ participant (4 bytes, big-endian) ‖ cipher key ‖
// mask key. ECDSA-SHA256 over them (pki::PrivateKey::Sign).
std::string AdvertisedKeysMessage(std::string_view session_id, uint32_t participant,
                                  std::string_view cipher_public_key,
                                  std::string_view mask_public_key);

using Signer = std::function<absl::StatusOr<std::string>(std::string_view message)>;
// OK when `signature` is the identity of `participant` signing `message`.
using SignatureVerifier = std::function<absl::Status(uint32_t participant, std::string_view message,
                                                     std::string_view signature)>;

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

class SecAggServer {
 public:
  static absl::StatusOr<SecAggServer> Create(RoundSetup setup, NeighborGraph graph);

  // Stage 1. A repeat of the same keys is accepted once; different keys for a participant are
  // AlreadyExists.
  absl::Status ReceiveAdvertisedKeys(const AdvertisedKeys& keys);
  absl::Status CloseAdvertiseKeys();
  // What each advertiser gets back: its neighbours' advertised keys.
  std::vector<AdvertisedKeys> KeysFor(uint32_t participant) const;

  // Stage 2.
  absl::Status ReceiveShares(uint32_t sender, const std::vector<SealedShares>& shares);
  absl::Status CloseShareKeys();
  std::vector<SealedShares> SharesFor(uint32_t participant) const;

  // Stage 3: chunks of a participant's masked input, in order, added into the running sum as
  // they arrive. A chunk below the next expected value is ignored (a retry); one above it is
  // OutOfRange.
  absl::Status ReceiveMaskedChunk(uint32_t participant, uint64_t first_value,
                                  std::span<const uint64_t> values);
  // A participant whose upload started but did not finish would leave part of a masked vector
  // in the sum: FailedPrecondition, and the round must abort.
  absl::Status CloseMaskedInput();
  UnmaskRequest UnmaskRequestFor(uint32_t participant) const;

  // Stage 4.
  absl::Status ReceiveRevealedShares(const RevealedShares& shares);
  // Recovers the secrets, removes every mask and returns Σ x over the survivors, mod 2^bits.
  // FailedPrecondition, releasing nothing, when some secret lacks `threshold` shares. Once the
  // secrets are recovered the sum is handed over rather than copied, and the round is over.
  absl::StatusOr<std::vector<uint64_t>> Finish();

  const std::set<uint32_t>& survivors() const { return masked_input_; }
  // How many values of a participant's masked input the sum holds (to resume an upload).
  uint64_t ValuesReceived(uint32_t participant) const {
    auto found = received_values_.find(participant);
    return found == received_values_.end() ? 0 : found->second;
  }

  // The bytes the server's round state holds: the running sum, the graph, the advertised keys,
  // the sealed bundles and the revealed shares. O(d + n·k), whatever the cohort's inputs.
  size_t StateBytes() const;

 private:
  SecAggServer(RoundSetup setup, NeighborGraph graph)
      : setup_(std::move(setup)), graph_(std::move(graph)), sum_(setup_.length, 0) {}

  RoundSetup setup_;
  NeighborGraph graph_;
  int stage_ = 1;
  std::map<uint32_t, AdvertisedKeys> advertised_;
  // Filled during the share stage, then re-filed by recipient when it closes.
  std::map<uint32_t, std::vector<SealedShares>> shares_by_sender_;
  std::map<uint32_t, std::vector<SealedShares>> shares_by_recipient_;
  std::set<uint32_t> shared_;
  std::map<uint32_t, uint64_t> received_values_;
  std::set<uint32_t> masked_input_;
  std::map<uint32_t, RevealedShares> revealed_;
  std::vector<uint64_t> sum_;
};

}  // namespace fedmoe::secure_agg

#endif  // FEDMOE_SECURE_AGG_PROTOCOL_H_
