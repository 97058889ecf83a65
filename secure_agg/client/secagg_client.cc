#include "secure_agg/client/secagg_client.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "secure_agg/shared/hkdf.h"
#include "secure_agg/shared/shamir.h"

namespace fedmoe::secure_agg {
namespace {

uint32_t ReadBigEndian32(std::string_view bytes) {
  uint32_t value = 0;
  for (int i = 0; i < 4; ++i) value = (value << 8) | static_cast<unsigned char>(bytes[i]);
  return value;
}

}  // namespace

absl::StatusOr<SecAggClient> SecAggClient::Create(RoundSetup setup, uint32_t participant,
                                                  std::vector<uint32_t> neighbors, Signer sign,
                                                  SignatureVerifier verify) {
  if (absl::Status status = ValidateSetup(setup); !status.ok()) return status;
  if (participant < 1 || participant > setup.num_participants) {
    return absl::InvalidArgumentError(
        absl::StrCat("participant ", participant, " outside 1..", setup.num_participants));
  }
  std::sort(neighbors.begin(), neighbors.end());
  if (Contains(neighbors, participant)) {
    return absl::InvalidArgumentError("a participant is not its own neighbour");
  }
  absl::StatusOr<X25519KeyPair> cipher_keys = X25519KeyPair::Generate();
  if (!cipher_keys.ok()) return cipher_keys.status();
  absl::StatusOr<X25519KeyPair> mask_keys = X25519KeyPair::Generate();
  if (!mask_keys.ok()) return mask_keys.status();
  return SecAggClient(std::move(setup), participant, std::move(neighbors), std::move(sign),
                      std::move(verify), std::move(*cipher_keys), std::move(*mask_keys));
}

absl::Status SecAggClient::Expect(Stage stage, std::string_view what) const {
  if (stage_ == stage) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat(std::string(what), " is out of order for participant ", participant_));
}

absl::StatusOr<AdvertisedKeys> SecAggClient::AdvertiseKeys() {
  if (advertised_.has_value()) return *advertised_;
  if (absl::Status status = Expect(Stage::kNew, "AdvertiseKeys"); !status.ok()) return status;
  AdvertisedKeys keys{participant_, cipher_keys_.public_key(), mask_keys_.public_key(), {}};
  absl::StatusOr<std::string> signature = sign_(AdvertisedKeysMessage(
      setup_.session_id, participant_, keys.cipher_public_key, keys.mask_public_key));
  if (!signature.ok()) return signature.status();
  keys.signature = std::move(*signature);
  advertised_ = keys;
  stage_ = Stage::kAdvertised;
  return keys;
}

absl::StatusOr<std::vector<SealedShares>> SecAggClient::ShareKeys(
    const std::vector<AdvertisedKeys>& neighbor_keys) {
  if (absl::Status status = Expect(Stage::kAdvertised, "ShareKeys"); !status.ok()) return status;
  std::map<uint32_t, AdvertisedKeys> verified;
  for (const AdvertisedKeys& keys : neighbor_keys) {
    if (!Contains(neighbors_, keys.participant)) {
      return absl::InvalidArgumentError(
          absl::StrCat("keys of participant ", keys.participant, ", who is not a neighbour"));
    }
    if (verified.contains(keys.participant)) {
      return absl::InvalidArgumentError(
          absl::StrCat("participant ", keys.participant, "'s keys arrived twice"));
    }
    if (keys.cipher_public_key.size() != kPublicKeyBytes ||
        keys.mask_public_key.size() != kPublicKeyBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("participant ", keys.participant, "'s keys are not 32 bytes"));
    }
    if (absl::Status status =
            verify_(keys.participant,
                    AdvertisedKeysMessage(setup_.session_id, keys.participant,
                                          keys.cipher_public_key, keys.mask_public_key),
                    keys.signature);
        !status.ok()) {
      return absl::PermissionDeniedError(absl::StrCat(
          "participant ", keys.participant,
          "'s advertised keys do not carry its signature; refusing the round: ", status.message()));
    }
    verified[keys.participant] = keys;
  }
  if (verified.size() < setup_.threshold) {
    return absl::FailedPreconditionError(
        absl::StrCat(verified.size(), " neighbours advertised keys, fewer than the threshold ",
                     setup_.threshold, ": the round cannot complete"));
  }

  self_mask_seed_.assign(32, '\0');
  if (RAND_priv_bytes(reinterpret_cast<unsigned char*>(self_mask_seed_.data()), 32) != 1) {
    return absl::InternalError("OpenSSL's random generator failed");
  }
  absl::StatusOr<std::string> mask_private_key = mask_keys_.PrivateKey();
  if (!mask_private_key.ok()) return mask_private_key.status();
  std::vector<uint64_t> holders;
  holders.reserve(verified.size());
  for (const auto& [id, keys] : verified) holders.push_back(id);
  const auto threshold = static_cast<int>(setup_.threshold);
  absl::StatusOr<std::vector<Share>> seed_shares = ShareSecret(self_mask_seed_, threshold, holders);
  absl::StatusOr<std::vector<Share>> key_shares =
      ShareSecret(*mask_private_key, threshold, holders);
  OPENSSL_cleanse(mask_private_key->data(), mask_private_key->size());
  if (!seed_shares.ok()) return seed_shares.status();
  if (!key_shares.ok()) return key_shares.status();

  std::vector<SealedShares> sealed;
  sealed.reserve(holders.size());
  for (size_t i = 0; i < holders.size(); ++i) {
    const auto recipient = static_cast<uint32_t>(holders[i]);
    absl::StatusOr<std::string> agreed = cipher_keys_.Agree(verified[recipient].cipher_public_key);
    if (!agreed.ok()) return agreed.status();
    absl::StatusOr<std::string> key = DerivePairKey(*agreed, setup_.session_id, setup_.round_id,
                                                    kShareEncryption, participant_, recipient);
    if (!key.ok()) return key.status();
    std::string plaintext;
    AppendBigEndian(participant_, 4, plaintext);
    AppendBigEndian(recipient, 4, plaintext);
    plaintext += (*seed_shares)[i].value;
    plaintext += (*key_shares)[i].value;
    absl::StatusOr<std::string> ciphertext =
        Seal(*key, plaintext, ShareContext(setup_, participant_, recipient));
    OPENSSL_cleanse(plaintext.data(), plaintext.size());
    if (!ciphertext.ok()) return ciphertext.status();
    sealed.push_back({participant_, recipient, std::move(*ciphertext)});
  }
  neighbor_keys_ = std::move(verified);
  stage_ = Stage::kShared;
  return sealed;
}

absl::Status SecAggClient::ReceiveShares(const std::vector<SealedShares>& incoming) {
  if (absl::Status status = Expect(Stage::kShared, "ReceiveShares"); !status.ok()) return status;
  std::map<uint32_t, std::pair<std::string, std::string>> held;
  for (const SealedShares& bundle : incoming) {
    if (bundle.recipient != participant_) {
      return absl::InvalidArgumentError(absl::StrCat("a share bundle for participant ",
                                                     bundle.recipient, " reached ", participant_));
    }
    auto keys = neighbor_keys_.find(bundle.sender);
    if (keys == neighbor_keys_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("shares from participant ", bundle.sender,
                                                     ", whose keys this client never verified"));
    }
    if (held.contains(bundle.sender)) {
      return absl::InvalidArgumentError(
          absl::StrCat("two share bundles from participant ", bundle.sender));
    }
    absl::StatusOr<std::string> agreed = cipher_keys_.Agree(keys->second.cipher_public_key);
    if (!agreed.ok()) return agreed.status();
    absl::StatusOr<std::string> key = DerivePairKey(*agreed, setup_.session_id, setup_.round_id,
                                                    kShareEncryption, bundle.sender, participant_);
    if (!key.ok()) return key.status();
    absl::StatusOr<std::string> plaintext =
        Open(*key, bundle.ciphertext, ShareContext(setup_, bundle.sender, participant_));
    if (!plaintext.ok()) {
      return {plaintext.status().code(), absl::StrCat("shares from participant ", bundle.sender,
                                                      ": ", plaintext.status().message())};
    }
    if (plaintext->size() != 8 + 2 * kShamirShareBytes ||
        ReadBigEndian32(*plaintext) != bundle.sender ||
        ReadBigEndian32(plaintext->substr(4)) != participant_) {
      return absl::InvalidArgumentError(
          absl::StrCat("malformed share bundle from participant ", bundle.sender));
    }
    held[bundle.sender] = {plaintext->substr(8, kShamirShareBytes),
                           plaintext->substr(8 + kShamirShareBytes, kShamirShareBytes)};
    OPENSSL_cleanse(plaintext->data(), plaintext->size());
  }
  // The masks: the self mask, and one pairwise mask per neighbour that shared keys (those are
  // the neighbours whose mask key the server can recover if they drop).
  std::vector<MaskGenerator> add;
  std::vector<MaskGenerator> subtract;
  absl::StatusOr<MaskGenerator> self =
      MaskGenerator::Create(self_mask_seed_, SelfMaskDomain(setup_, participant_));
  if (!self.ok()) return self.status();
  add.push_back(std::move(*self));
  for (const auto& [peer, shares] : held) {
    absl::StatusOr<MaskGenerator> pairwise =
        PairwiseMask(setup_, mask_keys_, participant_, neighbor_keys_[peer].mask_public_key, peer);
    if (!pairwise.ok()) return pairwise.status();
    (participant_ < peer ? add : subtract).push_back(std::move(*pairwise));
  }
  held_shares_ = std::move(held);
  add_masks_ = std::move(add);
  subtract_masks_ = std::move(subtract);
  stage_ = Stage::kMasking;
  return absl::OkStatus();
}

absl::Status SecAggClient::MaskChunk(std::span<uint64_t> chunk) {
  if (absl::Status status = Expect(Stage::kMasking, "MaskChunk"); !status.ok()) return status;
  if (chunk.size() > setup_.length - masked_) {
    return absl::OutOfRangeError(
        absl::StrCat("input longer than the round's ", setup_.length, " values"));
  }
  const uint64_t limit = uint64_t{1} << setup_.bits;
  for (uint64_t value : chunk) {
    if (value >= limit) {
      return absl::InvalidArgumentError(
          absl::StrCat("input value ", value, " is outside Z_(2^", setup_.bits, ")"));
    }
  }
  for (MaskGenerator& mask : add_masks_) {
    if (absl::Status status = mask.Add(chunk); !status.ok()) return status;
  }
  for (MaskGenerator& mask : subtract_masks_) {
    if (absl::Status status = mask.Subtract(chunk); !status.ok()) return status;
  }
  masked_ += chunk.size();
  if (masked_ == setup_.length) stage_ = Stage::kMasked;
  return absl::OkStatus();
}

absl::StatusOr<RevealedShares> SecAggClient::Unmask(const UnmaskRequest& request) {
  if (stage_ == Stage::kUnmasked) {
    // A retry gets the same answer; a different request is refused, so a server can never
    // collect both shares of one neighbour by asking twice.
    return absl::FailedPreconditionError(
        "this client already answered an unmask request for the round");
  }
  if (absl::Status status = Expect(Stage::kMasked, "Unmask"); !status.ok()) return status;
  std::set<uint32_t> alive(request.alive.begin(), request.alive.end());
  std::set<uint32_t> dropped(request.dropped.begin(), request.dropped.end());
  if (alive.size() != request.alive.size() || dropped.size() != request.dropped.size()) {
    return absl::InvalidArgumentError("the unmask lists repeat a participant");
  }
  for (uint32_t id : alive) {
    if (dropped.contains(id)) {
      return absl::PermissionDeniedError(absl::StrCat(
          "participant ", id, " is listed both alive and dropped: refusing to reveal"));
    }
  }
  std::set<uint32_t> listed = alive;
  listed.insert(dropped.begin(), dropped.end());
  std::set<uint32_t> holding;
  for (const auto& [id, shares] : held_shares_) holding.insert(id);
  if (listed != holding) {
    return absl::PermissionDeniedError(
        "the unmask lists do not match the neighbours that shared keys with this client");
  }
  if (alive.size() < setup_.threshold) {
    return absl::FailedPreconditionError(
        absl::StrCat("only ", alive.size(), " neighbours alive, fewer than the threshold ",
                     setup_.threshold, ": revealing nothing"));
  }
  RevealedShares revealed;
  revealed.participant = participant_;
  for (uint32_t id : alive) revealed.self_mask_shares[id] = held_shares_[id].first;
  for (uint32_t id : dropped) revealed.mask_key_shares[id] = held_shares_[id].second;
  stage_ = Stage::kUnmasked;
  revealed_ = revealed;
  return revealed;
}

}  // namespace fedmoe::secure_agg
