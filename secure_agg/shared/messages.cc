#include "secure_agg/shared/messages.h"

#include <openssl/crypto.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "secure_agg/shared/hkdf.h"

namespace fedmoe::secure_agg {
namespace {

constexpr char kPairwiseMask[] = "pairwise-mask";

MaskDomain PairwiseDomain(const RoundSetup& setup, uint32_t a, uint32_t b) {
  return MaskDomain{setup.session_id, setup.round_id, MaskPurpose::kPairwiseMask,
                    std::min(a, b),   std::max(a, b), setup.length,
                    setup.bits};
}

}  // namespace

std::string ShareContext(const RoundSetup& setup, uint32_t sender, uint32_t recipient) {
  std::string context = "fedmoe/v1/shares";
  context += setup.session_id;
  AppendBigEndian(setup.round_id, 8, context);
  AppendBigEndian(sender, 4, context);
  AppendBigEndian(recipient, 4, context);
  return context;
}

MaskDomain SelfMaskDomain(const RoundSetup& setup, uint32_t owner) {
  return MaskDomain{setup.session_id, setup.round_id, MaskPurpose::kSelfMask, owner, 0,
                    setup.length,     setup.bits};
}

absl::StatusOr<MaskGenerator> PairwiseMask(const RoundSetup& setup, const X25519KeyPair& own,
                                           uint32_t own_id, std::string_view peer_public_key,
                                           uint32_t peer_id) {
  absl::StatusOr<std::string> agreed = own.Agree(peer_public_key);
  if (!agreed.ok()) return agreed.status();
  absl::StatusOr<std::string> seed =
      DerivePairKey(*agreed, setup.session_id, setup.round_id, kPairwiseMask, own_id, peer_id);
  OPENSSL_cleanse(agreed->data(), agreed->size());
  if (!seed.ok()) return seed.status();
  return MaskGenerator::Create(*seed, PairwiseDomain(setup, own_id, peer_id));
}

absl::Status ValidateSetup(const RoundSetup& setup) {
  if (setup.session_id.size() != 32) return absl::InvalidArgumentError("session id is 32 bytes");
  if (setup.num_participants < 2 || setup.threshold < 1 || setup.length == 0) {
    return absl::InvalidArgumentError("a round needs 2+ participants, a threshold and a length");
  }
  if (setup.bits < 16 || setup.bits > 62) {
    return absl::InvalidArgumentError(absl::StrCat("ring bits must be 16..62, not ", setup.bits));
  }
  return absl::OkStatus();
}

bool Contains(const std::vector<uint32_t>& sorted, uint32_t value) {
  return std::binary_search(sorted.begin(), sorted.end(), value);
}

std::string AdvertisedKeysMessage(std::string_view session_id, uint32_t participant,
                                  std::string_view cipher_public_key,
                                  std::string_view mask_public_key) {
  std::string message = "fedmoe/v1/advertise-keys";
  message += session_id;
  AppendBigEndian(participant, 4, message);
  message += cipher_public_key;
  message += mask_public_key;
  return message;
}

}  // namespace fedmoe::secure_agg
