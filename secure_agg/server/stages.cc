#include "secure_agg/server/stages.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "secure_agg/shared/key_agreement.h"
#include "secure_agg/shared/mask_generator.h"
#include "secure_agg/shared/shamir.h"

namespace fedmoe::secure_agg {
namespace {

size_t KeysBytes(const KeysByParticipant& advertised) {
  size_t bytes = 0;
  for (const auto& [id, keys] : advertised) {
    bytes += sizeof(keys) + keys.cipher_public_key.capacity() + keys.mask_public_key.capacity() +
             keys.signature.capacity();
  }
  return bytes;
}

size_t BundlesBytes(const BundlesByParticipant& bundles) {
  size_t bytes = 0;
  for (const auto& [id, list] : bundles) {
    for (const SealedShares& bundle : list) bytes += sizeof(bundle) + bundle.ciphertext.capacity();
  }
  return bytes;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// 1. Advertise keys

absl::Status AdvertiseKeysStage::Receive(const RoundContext& round, const AdvertisedKeys& keys) {
  if (keys.participant < 1 || keys.participant > round.setup.num_participants) {
    return absl::InvalidArgumentError(
        absl::StrCat("participant ", keys.participant, " is not in this round"));
  }
  if (keys.cipher_public_key.size() != kPublicKeyBytes ||
      keys.mask_public_key.size() != kPublicKeyBytes || keys.signature.empty() ||
      keys.signature.size() > 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("participant ", keys.participant, "'s keys or signature are malformed"));
  }
  auto existing = advertised_.find(keys.participant);
  if (existing != advertised_.end()) {
    const AdvertisedKeys& old = existing->second;
    if (old.cipher_public_key == keys.cipher_public_key &&
        old.mask_public_key == keys.mask_public_key && old.signature == keys.signature) {
      return absl::OkStatus();
    }
    return absl::AlreadyExistsError(absl::StrCat("participant ", keys.participant,
                                                 " already advertised different keys this round"));
  }
  advertised_[keys.participant] = keys;
  return absl::OkStatus();
}

absl::StatusOr<ShareKeysStage> AdvertiseKeysStage::Close(const RoundContext& /*round*/) && {
  return ShareKeysStage(std::move(advertised_));
}

size_t AdvertiseKeysStage::Bytes() const { return KeysBytes(advertised_); }

// ---------------------------------------------------------------------------------------------
// 2. Share keys

std::vector<AdvertisedKeys> ShareKeysStage::KeysFor(const RoundContext& round,
                                                    uint32_t participant) const {
  std::vector<AdvertisedKeys> keys;
  for (uint32_t neighbor : round.graph.Neighbors(participant)) {
    if (auto it = advertised_.find(neighbor); it != advertised_.end()) keys.push_back(it->second);
  }
  return keys;
}

absl::Status ShareKeysStage::Receive(const RoundContext& round, uint32_t sender,
                                     const std::vector<SealedShares>& shares) {
  if (!advertised_.contains(sender)) {
    return absl::FailedPreconditionError(
        absl::StrCat("participant ", sender, " did not advertise keys"));
  }
  std::set<uint32_t> recipients;
  for (const SealedShares& bundle : shares) {
    if (bundle.sender != sender) {
      return absl::InvalidArgumentError(
          absl::StrCat("participant ", sender, " sent a bundle as ", bundle.sender));
    }
    if (!round.graph.AreNeighbors(sender, bundle.recipient) ||
        !advertised_.contains(bundle.recipient)) {
      return absl::InvalidArgumentError(absl::StrCat("participant ", sender, " sealed shares for ",
                                                     bundle.recipient,
                                                     ", who is not an advertised neighbour"));
    }
    if (!recipients.insert(bundle.recipient).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("participant ", sender, " sent two bundles to ", bundle.recipient));
    }
    if (bundle.ciphertext.size() > kMaxSealedBytes) {
      return absl::InvalidArgumentError("a sealed share bundle is larger than 1 KiB");
    }
  }
  if (auto existing = shares_by_sender_.find(sender); existing != shares_by_sender_.end()) {
    const bool same =
        existing->second.size() == shares.size() &&
        std::equal(shares.begin(), shares.end(), existing->second.begin(),
                   [](const SealedShares& a, const SealedShares& b) {
                     return a.recipient == b.recipient && a.ciphertext == b.ciphertext;
                   });
    if (same) return absl::OkStatus();
    return absl::AlreadyExistsError(
        absl::StrCat("participant ", sender, " already shared different keys this round"));
  }
  shares_by_sender_[sender] = shares;
  return absl::OkStatus();
}

absl::StatusOr<MaskedInputStage> ShareKeysStage::Close(const RoundContext& round) && {
  // From here on bundles are only fetched by recipient: re-file them once, rather than scan
  // every sender's bundles for each of n recipients.
  std::set<uint32_t> shared;
  BundlesByParticipant by_recipient;
  for (auto& [sender, shares] : shares_by_sender_) {
    shared.insert(sender);
    for (SealedShares& bundle : shares) by_recipient[bundle.recipient].push_back(std::move(bundle));
  }
  return MaskedInputStage(std::move(advertised_), std::move(by_recipient), std::move(shared),
                          round.setup.length);
}

size_t ShareKeysStage::Bytes() const {
  return KeysBytes(advertised_) + BundlesBytes(shares_by_sender_);
}

// ---------------------------------------------------------------------------------------------
// 3. Masked input

std::vector<SealedShares> MaskedInputStage::SharesFor(uint32_t participant) const {
  auto incoming = shares_by_recipient_.find(participant);
  return incoming == shares_by_recipient_.end() ? std::vector<SealedShares>{} : incoming->second;
}

absl::Status MaskedInputStage::ReceiveChunk(const RoundContext& round, uint32_t participant,
                                            uint64_t first_value,
                                            std::span<const uint64_t> values) {
  if (!shared_.contains(participant)) {
    return absl::FailedPreconditionError(
        absl::StrCat("participant ", participant, " did not share keys"));
  }
  const RoundSetup& setup = round.setup;
  uint64_t& received = received_values_[participant];
  if (first_value < received) {
    if (first_value + values.size() <= received) return absl::OkStatus();  // A retried chunk.
    return absl::InvalidArgumentError(absl::StrCat("chunk at ", first_value, " overlaps the ",
                                                   received, " values already summed"));
  }
  if (first_value > received) {
    return absl::OutOfRangeError(absl::StrCat("participant ", participant, "'s next value is ",
                                              received, ", not ", first_value));
  }
  if (values.size() > setup.length - received) {
    return absl::InvalidArgumentError(absl::StrCat("participant ", participant,
                                                   "'s input is longer than the round's ",
                                                   setup.length, " values"));
  }
  const uint64_t mask = (uint64_t{1} << setup.bits) - 1;
  for (uint64_t value : values) {
    if (value > mask) {
      return absl::InvalidArgumentError(
          absl::StrCat("a masked value is outside Z_(2^", setup.bits, ")"));
    }
  }
  uint64_t* sum = sum_.data() + received;
  for (size_t i = 0; i < values.size(); ++i) sum[i] = (sum[i] + values[i]) & mask;
  received += values.size();
  if (received == setup.length) survivors_.insert(participant);
  return absl::OkStatus();
}

uint64_t MaskedInputStage::ValuesReceived(uint32_t participant) const {
  auto found = received_values_.find(participant);
  return found == received_values_.end() ? 0 : found->second;
}

absl::StatusOr<UnmaskStage> MaskedInputStage::Close(const RoundContext& round) && {
  for (const auto& [participant, received] : received_values_) {
    if (received > 0 && received < round.setup.length) {
      return absl::FailedPreconditionError(absl::StrCat(
          "participant ", participant, " uploaded ", received, " of ", round.setup.length,
          " values and stopped: its partial input cannot be removed, the round aborts"));
    }
  }
  return UnmaskStage(std::move(advertised_), std::move(shared_), std::move(survivors_),
                     std::move(sum_));
}

size_t MaskedInputStage::Bytes() const {
  return sum_.capacity() * sizeof(uint64_t) + KeysBytes(advertised_) +
         BundlesBytes(shares_by_recipient_);
}

// ---------------------------------------------------------------------------------------------
// 4. Unmask

UnmaskRequest UnmaskStage::RequestFor(const RoundContext& round, uint32_t participant) const {
  UnmaskRequest request;
  for (uint32_t neighbor : round.graph.Neighbors(participant)) {
    if (!shared_.contains(neighbor)) continue;
    (survivors_.contains(neighbor) ? request.alive : request.dropped).push_back(neighbor);
  }
  return request;
}

absl::Status UnmaskStage::Receive(const RoundContext& round, const RevealedShares& shares) {
  if (!survivors_.contains(shares.participant)) {
    return absl::FailedPreconditionError(
        absl::StrCat("participant ", shares.participant, " is not a survivor of this round"));
  }
  const UnmaskRequest expected = RequestFor(round, shares.participant);
  for (const auto& [owner, share] : shares.self_mask_shares) {
    if (!Contains(expected.alive, owner) || share.size() != kShamirShareBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("an unexpected self-mask share for participant ", owner));
    }
  }
  for (const auto& [owner, share] : shares.mask_key_shares) {
    if (!Contains(expected.dropped, owner) || share.size() != kShamirShareBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("an unexpected mask-key share for participant ", owner));
    }
  }
  if (auto existing = revealed_.find(shares.participant); existing != revealed_.end()) {
    if (existing->second.self_mask_shares == shares.self_mask_shares &&
        existing->second.mask_key_shares == shares.mask_key_shares) {
      return absl::OkStatus();
    }
    return absl::AlreadyExistsError(
        absl::StrCat("participant ", shares.participant, " already revealed different shares"));
  }
  revealed_[shares.participant] = shares;
  return absl::OkStatus();
}

size_t UnmaskStage::Bytes() const {
  size_t bytes = sum_.capacity() * sizeof(uint64_t) + KeysBytes(advertised_);
  for (const auto& [id, revealed] : revealed_) {
    bytes += (revealed.self_mask_shares.size() + revealed.mask_key_shares.size()) *
             (sizeof(uint32_t) + kShamirShareBytes + 32);
  }
  return bytes;
}

absl::StatusOr<FinishedStage> UnmaskStage::Finish(const RoundContext& round) && {
  const RoundSetup& setup = round.setup;
  const auto threshold = static_cast<int>(setup.threshold);
  auto recover = [&](uint32_t owner, bool self_mask) -> absl::StatusOr<std::string> {
    std::vector<Share> shares;
    for (uint32_t holder : round.graph.Neighbors(owner)) {
      auto revealed = revealed_.find(holder);
      if (revealed == revealed_.end()) continue;
      const auto& by_owner =
          self_mask ? revealed->second.self_mask_shares : revealed->second.mask_key_shares;
      if (auto share = by_owner.find(owner); share != by_owner.end()) {
        shares.push_back({holder, share->second});
      }
    }
    if (shares.size() < setup.threshold) {
      return absl::FailedPreconditionError(absl::StrCat(
          "participant ", owner, "'s ", self_mask ? "self-mask seed" : "mask key", " has ",
          shares.size(), " of ", threshold, " shares: the round aborts and releases nothing"));
    }
    return RecoverSecret(shares, threshold);
  };
  // Every secret first, so that a shortfall releases nothing.
  std::map<uint32_t, std::string> seeds;
  for (uint32_t survivor : survivors_) {
    absl::StatusOr<std::string> seed = recover(survivor, true);
    if (!seed.ok()) return seed.status();
    seeds[survivor] = std::move(*seed);
  }
  std::map<uint32_t, X25519KeyPair> dropped_keys;
  for (uint32_t participant : shared_) {
    if (survivors_.contains(participant)) continue;
    absl::StatusOr<std::string> key = recover(participant, false);
    if (!key.ok()) return key.status();
    absl::StatusOr<X25519KeyPair> pair = X25519KeyPair::FromPrivateKey(*key);
    OPENSSL_cleanse(key->data(), key->size());
    if (!pair.ok()) return pair.status();
    if (pair->public_key() != advertised_[participant].mask_public_key) {
      return absl::DataLossError(absl::StrCat(
          "participant ", participant, "'s recovered mask key does not match its advertised key"));
    }
    dropped_keys.emplace(participant, std::move(*pair));
  }
  // The masks come off in place: the sum is the round's largest state, and this is its end. It
  // leaves the stage first, so that no error past here can leave a half-unmasked sum behind.
  std::vector<uint64_t> result = std::move(sum_);
  sum_.clear();
  for (const auto& [survivor, seed] : seeds) {
    absl::StatusOr<MaskGenerator> mask =
        MaskGenerator::Create(seed, SelfMaskDomain(setup, survivor));
    if (!mask.ok()) return mask.status();
    if (absl::Status status = mask->Subtract(result); !status.ok()) return status;
  }
  // A survivor u masked against a dropped neighbour d with +PRG(s_ud) when u < d, −PRG when
  // u > d; the dropped side never arrived, so that term is undone here.
  for (const auto& [dropped, keys] : dropped_keys) {
    for (uint32_t survivor : round.graph.Neighbors(dropped)) {
      if (!survivors_.contains(survivor)) continue;
      absl::StatusOr<MaskGenerator> mask =
          PairwiseMask(setup, keys, dropped, advertised_[survivor].mask_public_key, survivor);
      if (!mask.ok()) return mask.status();
      const absl::Status status = survivor < dropped ? mask->Subtract(result) : mask->Add(result);
      if (!status.ok()) return status;
    }
  }
  return FinishedStage(std::move(survivors_), std::move(result));
}

}  // namespace fedmoe::secure_agg
