// SecAgg+ (Bell et al. 2020 over Bonawitz et al. 2017): what its client (secure_agg/client/)
// and server (secure_agg/server/) say to each other, and what both derive alike from the round's
// setup. The primitives beside this file (HKDF, X25519, the mask PRG, Shamir, the neighbour
// graph, ring packing) are shared the same way.
//
// Semi-honest clients and a coordinator that cannot substitute keys. Transport-agnostic: the
// caller carries messages between the two (gRPC in fedmoe, function calls in secagg_sim and the
// tests). Neither side owns a socket or a thread.
//
// Stages, as the server drives them:
//   1. AdvertiseKeys: each client's two X25519 public keys, signed with its identity key.
//   2. ShareKeys: each client Shamir-shares its self-mask seed b and its mask private key among
//      the neighbours that advertised, each share bundle sealed for its recipient.
//   3. MaskedInput: y = x + PRG(b) + Σ_v ±PRG(s_uv) over the neighbours that shared keys,
//      streamed in chunks that the server adds into one running sum.
//   4. Unmask: survivors reveal shares of b for live neighbours and of the mask key for
//      dropped ones, never both for one neighbour; the server removes the masks.
#ifndef FEDMOE_SECURE_AGG_SHARED_MESSAGES_H_
#define FEDMOE_SECURE_AGG_SHARED_MESSAGES_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "secure_agg/shared/key_agreement.h"
#include "secure_agg/shared/mask_generator.h"

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

// Derivations both sides make alike from the setup.

// X25519 public keys are 32 bytes; a sealed share bundle is never larger than 1 KiB.
inline constexpr size_t kPublicKeyBytes = 32;
inline constexpr size_t kMaxSealedBytes = 1024;
// The HKDF label of the key that seals a share bundle from one participant to another.
inline constexpr char kShareEncryption[] = "share-encryption";

// InvalidArgument unless the session id is 32 bytes, the round has 2+ participants, a threshold
// and a length, and the ring is 16..62 bits.
absl::Status ValidateSetup(const RoundSetup& setup);

// The AEAD context of a share bundle from `sender` to `recipient`.
std::string ShareContext(const RoundSetup& setup, uint32_t sender, uint32_t recipient);

// The PRG domain of a participant's self mask PRG(b).
MaskDomain SelfMaskDomain(const RoundSetup& setup, uint32_t owner);

// PRG(s_uv) for the pair (own_id, peer_id), from `own`'s private key and the peer's public one:
// the same generator on both sides.
absl::StatusOr<MaskGenerator> PairwiseMask(const RoundSetup& setup, const X25519KeyPair& own,
                                           uint32_t own_id, std::string_view peer_public_key,
                                           uint32_t peer_id);

// Whether `value` is in the ascending list `sorted`.
bool Contains(const std::vector<uint32_t>& sorted, uint32_t value);

}  // namespace fedmoe::secure_agg

#endif  // FEDMOE_SECURE_AGG_SHARED_MESSAGES_H_
