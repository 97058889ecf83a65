#include "secure_agg/protocol.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "secure_agg/hkdf.h"

namespace fedmoe::secure_agg {
namespace {

constexpr char kShareEncryption[] = "share-encryption";
constexpr char kPairwiseMask[] = "pairwise-mask";
constexpr size_t kKeyBytes = 32;
constexpr size_t kMaxSealedBytes = 1024;

uint32_t ReadBigEndian32(std::string_view bytes) {
  uint32_t value = 0;
  for (int i = 0; i < 4; ++i) value = (value << 8) | static_cast<unsigned char>(bytes[i]);
  return value;
}

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

MaskDomain PairwiseDomain(const RoundSetup& setup, uint32_t a, uint32_t b) {
  return MaskDomain{setup.session_id, setup.round_id, MaskPurpose::kPairwiseMask,
                    std::min(a, b),   std::max(a, b), setup.length,
                    setup.bits};
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

}  // namespace

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

// ---------------------------------------------------------------------------------------------
// Client

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
    if (keys.cipher_public_key.size() != kKeyBytes || keys.mask_public_key.size() != kKeyBytes) {
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

// ---------------------------------------------------------------------------------------------
// Server

absl::StatusOr<SecAggServer> SecAggServer::Create(RoundSetup setup, NeighborGraph graph) {
  if (absl::Status status = ValidateSetup(setup); !status.ok()) return status;
  if (graph.num_participants() != setup.num_participants) {
    return absl::InvalidArgumentError("the graph and the round disagree on the cohort size");
  }
  return SecAggServer(std::move(setup), std::move(graph));
}

absl::Status SecAggServer::ReceiveAdvertisedKeys(const AdvertisedKeys& keys) {
  if (stage_ != 1) return absl::FailedPreconditionError("the advertise-keys stage is closed");
  if (keys.participant < 1 || keys.participant > setup_.num_participants) {
    return absl::InvalidArgumentError(
        absl::StrCat("participant ", keys.participant, " is not in this round"));
  }
  if (keys.cipher_public_key.size() != kKeyBytes || keys.mask_public_key.size() != kKeyBytes ||
      keys.signature.empty() || keys.signature.size() > 128) {
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

absl::Status SecAggServer::CloseAdvertiseKeys() {
  if (stage_ != 1) return absl::FailedPreconditionError("the advertise-keys stage is closed");
  stage_ = 2;
  return absl::OkStatus();
}

std::vector<AdvertisedKeys> SecAggServer::KeysFor(uint32_t participant) const {
  std::vector<AdvertisedKeys> keys;
  for (uint32_t neighbor : graph_.Neighbors(participant)) {
    if (auto it = advertised_.find(neighbor); it != advertised_.end()) keys.push_back(it->second);
  }
  return keys;
}

absl::Status SecAggServer::ReceiveShares(uint32_t sender, const std::vector<SealedShares>& shares) {
  if (stage_ != 2) return absl::FailedPreconditionError("the share-keys stage is not open");
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
    if (!graph_.AreNeighbors(sender, bundle.recipient) || !advertised_.contains(bundle.recipient)) {
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

absl::Status SecAggServer::CloseShareKeys() {
  if (stage_ != 2) return absl::FailedPreconditionError("the share-keys stage is not open");
  // From here on bundles are only fetched by recipient: re-file them once, rather than scan
  // every sender's bundles for each of n recipients.
  for (auto& [sender, shares] : shares_by_sender_) {
    shared_.insert(sender);
    for (SealedShares& bundle : shares) {
      shares_by_recipient_[bundle.recipient].push_back(std::move(bundle));
    }
  }
  shares_by_sender_.clear();
  stage_ = 3;
  return absl::OkStatus();
}

std::vector<SealedShares> SecAggServer::SharesFor(uint32_t participant) const {
  auto incoming = shares_by_recipient_.find(participant);
  return incoming == shares_by_recipient_.end() ? std::vector<SealedShares>{} : incoming->second;
}

absl::Status SecAggServer::ReceiveMaskedChunk(uint32_t participant, uint64_t first_value,
                                              std::span<const uint64_t> values) {
  if (stage_ != 3) return absl::FailedPreconditionError("the masked-input stage is not open");
  if (!shared_.contains(participant)) {
    return absl::FailedPreconditionError(
        absl::StrCat("participant ", participant, " did not share keys"));
  }
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
  if (values.size() > setup_.length - received) {
    return absl::InvalidArgumentError(absl::StrCat("participant ", participant,
                                                   "'s input is longer than the round's ",
                                                   setup_.length, " values"));
  }
  const uint64_t mask = (uint64_t{1} << setup_.bits) - 1;
  for (uint64_t value : values) {
    if (value > mask) {
      return absl::InvalidArgumentError(
          absl::StrCat("a masked value is outside Z_(2^", setup_.bits, ")"));
    }
  }
  uint64_t* sum = sum_.data() + received;
  for (size_t i = 0; i < values.size(); ++i) sum[i] = (sum[i] + values[i]) & mask;
  received += values.size();
  if (received == setup_.length) masked_input_.insert(participant);
  return absl::OkStatus();
}

absl::Status SecAggServer::CloseMaskedInput() {
  if (stage_ != 3) return absl::FailedPreconditionError("the masked-input stage is not open");
  for (const auto& [participant, received] : received_values_) {
    if (received > 0 && received < setup_.length) {
      return absl::FailedPreconditionError(absl::StrCat(
          "participant ", participant, " uploaded ", received, " of ", setup_.length,
          " values and stopped: its partial input cannot be removed, the round aborts"));
    }
  }
  stage_ = 4;
  return absl::OkStatus();
}

UnmaskRequest SecAggServer::UnmaskRequestFor(uint32_t participant) const {
  UnmaskRequest request;
  for (uint32_t neighbor : graph_.Neighbors(participant)) {
    if (!shared_.contains(neighbor)) continue;
    (masked_input_.contains(neighbor) ? request.alive : request.dropped).push_back(neighbor);
  }
  return request;
}

absl::Status SecAggServer::ReceiveRevealedShares(const RevealedShares& shares) {
  if (stage_ != 4) return absl::FailedPreconditionError("the unmask stage is not open");
  if (!masked_input_.contains(shares.participant)) {
    return absl::FailedPreconditionError(
        absl::StrCat("participant ", shares.participant, " is not a survivor of this round"));
  }
  const UnmaskRequest expected = UnmaskRequestFor(shares.participant);
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

size_t SecAggServer::StateBytes() const {
  size_t bytes = sum_.capacity() * sizeof(uint64_t);
  for (uint32_t id = 1; id <= graph_.num_participants(); ++id) {
    bytes += graph_.Neighbors(id).capacity() * sizeof(uint32_t);
  }
  for (const auto& [id, keys] : advertised_) {
    bytes += sizeof(keys) + keys.cipher_public_key.capacity() + keys.mask_public_key.capacity() +
             keys.signature.capacity();
  }
  for (const auto& [id, bundles] : shares_by_recipient_) {
    for (const SealedShares& bundle : bundles)
      bytes += sizeof(bundle) + bundle.ciphertext.capacity();
  }
  for (const auto& [id, revealed] : revealed_) {
    bytes += (revealed.self_mask_shares.size() + revealed.mask_key_shares.size()) *
             (sizeof(uint32_t) + kShamirShareBytes + 32);
  }
  return bytes;
}

absl::StatusOr<std::vector<uint64_t>> SecAggServer::Finish() {
  if (stage_ != 4) return absl::FailedPreconditionError("the unmask stage is not open");
  const auto threshold = static_cast<int>(setup_.threshold);
  auto recover = [&](uint32_t owner, bool self_mask) -> absl::StatusOr<std::string> {
    std::vector<Share> shares;
    for (uint32_t holder : graph_.Neighbors(owner)) {
      auto revealed = revealed_.find(holder);
      if (revealed == revealed_.end()) continue;
      const auto& by_owner =
          self_mask ? revealed->second.self_mask_shares : revealed->second.mask_key_shares;
      if (auto share = by_owner.find(owner); share != by_owner.end()) {
        shares.push_back({holder, share->second});
      }
    }
    if (shares.size() < setup_.threshold) {
      return absl::FailedPreconditionError(absl::StrCat(
          "participant ", owner, "'s ", self_mask ? "self-mask seed" : "mask key", " has ",
          shares.size(), " of ", threshold, " shares: the round aborts and releases nothing"));
    }
    return RecoverSecret(shares, threshold);
  };
  // Every secret first, so that a shortfall releases nothing.
  std::map<uint32_t, std::string> seeds;
  for (uint32_t survivor : masked_input_) {
    absl::StatusOr<std::string> seed = recover(survivor, true);
    if (!seed.ok()) return seed.status();
    seeds[survivor] = std::move(*seed);
  }
  std::map<uint32_t, X25519KeyPair> dropped_keys;
  for (uint32_t participant : shared_) {
    if (masked_input_.contains(participant)) continue;
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
  // The masks come off in place: the sum is the round's largest state, and this is its end.
  std::vector<uint64_t> result = std::move(sum_);
  sum_.clear();
  stage_ = 5;
  for (const auto& [survivor, seed] : seeds) {
    absl::StatusOr<MaskGenerator> mask =
        MaskGenerator::Create(seed, SelfMaskDomain(setup_, survivor));
    if (!mask.ok()) return mask.status();
    if (absl::Status status = mask->Subtract(result); !status.ok()) return status;
  }
  // A survivor u masked against a dropped neighbour d with +PRG(s_ud) when u < d, −PRG when
  // u > d; the dropped side never arrived, so that term is undone here.
  for (const auto& [dropped, keys] : dropped_keys) {
    for (uint32_t survivor : graph_.Neighbors(dropped)) {
      if (!masked_input_.contains(survivor)) continue;
      absl::StatusOr<MaskGenerator> mask =
          PairwiseMask(setup_, keys, dropped, advertised_[survivor].mask_public_key, survivor);
      if (!mask.ok()) return mask.status();
      const absl::Status status = survivor < dropped ? mask->Subtract(result) : mask->Add(result);
      if (!status.ok()) return status;
    }
  }
  return result;
}

}  // namespace fedmoe::secure_agg
