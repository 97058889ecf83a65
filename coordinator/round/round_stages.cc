// The round engine's handlers of the clients' stage messages: AdvertiseKeys, ShareKeys, the
// masked input and Unmask (round_engine.h).

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "coordinator/round/round_engine.h"
#include "logging/log.h"
#include "secure_agg/shared/packing.h"

namespace fedmoe::coordinator {
namespace {

// A client renews about every two thirds of a certificate lifetime, so 64 changes reach back
// years; a peer that pinned a key older than that is refused and asks its operator.
constexpr int kRelayedKeyChanges = 64;

}  // namespace

absl::StatusOr<RoundEngine::Participant*> RoundEngine::Submitter(const std::string& client_id,
                                                                 uint64_t round_id,
                                                                 v1::RoundStage open_stage) {
  if (round_ == nullptr || round_->id != round_id) {
    if (round_ == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat("round ", round_id, " is not open; no round is open"));
    }
    return absl::FailedPreconditionError(
        absl::StrCat("round ", round_id, " is not open; the open round is ", round_->id,
                     " at stage ", StageName(round_->stage)));
  }
  auto found = round_->participant_ids.find(client_id);
  if (found == round_->participant_ids.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat("this client is not in the cohort of round ", round_id));
  }
  Participant& participant = round_->participants[found->second - 1];
  if (participant.dropped) {
    return absl::FailedPreconditionError(
        absl::StrCat("this client was dropped from round ", round_id));
  }
  if (round_->stage != open_stage) {
    if (round_->stage > open_stage) {
      // A message for a stage that has closed is a replay (or a retry too late to count): the
      // client's view of the round has diverged, so it takes no further part. Its masked
      // input, if already in the sum, stays there and is unmasked with the others' shares.
      absl::Status closed = absl::DeadlineExceededError(
          absl::StrCat("the ", StageName(open_stage), " stage of round ", round_id,
                       " has closed; this client is dropped from the round"));
      Drop(participant, closed);
      return closed;
    }
    return absl::FailedPreconditionError(absl::StrCat("round ", round_id, " is at stage ",
                                                      StageName(round_->stage), ", not yet ",
                                                      StageName(open_stage)));
  }
  return &participant;
}

v1::StageAck RoundEngine::Accepted(Participant& participant, v1::RoundStage open_stage) {
  v1::StageAck ack;
  ack.set_round_id(round_->id);
  ack.set_duplicate(participant.DidItsPartIn(open_stage));
  // The stage this participant's part moves it to: the one after the open stage.
  const auto reached = static_cast<v1::RoundStage>(open_stage + 1);
  ack.set_stage(reached);
  participant.completed = std::max(participant.completed, reached);
  return ack;
}

void RoundEngine::Drop(Participant& participant, const absl::Status& why) {
  participant.dropped = true;
  LogEvent(LogLevel::kWarning, "participant_dropped")
      .Field("round_id", round_->id)
      .Field("client_id", participant.client_id)
      .Field("reason", std::string(why.message()));
}

absl::StatusOr<v1::StageAck> RoundEngine::AdvertiseKeys(const std::string& client_id,
                                                        const std::string& certificate_der,
                                                        const v1::AdvertiseKeysRequest& request) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Participant*> participant =
      Submitter(client_id, request.round_id(), v1::ROUND_STAGE_SELECTED);
  if (!participant.ok()) return participant.status();
  const uint32_t id = round_->participant_ids[client_id];
  auto refuse = [&](absl::Status status) {
    Drop(**participant, status);
    return status;
  };
  if (request.cipher_public_key().size() != 32 || request.mask_public_key().size() != 32) {
    return refuse(absl::InvalidArgumentError("X25519 public keys are 32 bytes"));
  }
  absl::StatusOr<pki::Certificate> certificate = pki::Certificate::FromDer(certificate_der);
  if (!certificate.ok()) return refuse(certificate.status());
  const std::string message = secure_agg::AdvertisedKeysMessage(
      round_->session_id, id, request.cipher_public_key(), request.mask_public_key());
  if (absl::Status verified =
          pki::VerifySignature(certificate->PublicKeyDer(), message, request.signature());
      !verified.ok()) {
    return refuse(absl::InvalidArgumentError(
        absl::StrCat("the advertised keys' signature does not verify: ", verified.message())));
  }
  absl::StatusOr<std::vector<pki::KeyChange>> key_changes =
      store_->KeyChanges(client_id, kRelayedKeyChanges);
  if (!key_changes.ok()) return key_changes.status();
  if (absl::Status status = round_->secagg->ReceiveAdvertisedKeys(secure_agg::AdvertisedKeys{
          id, request.cipher_public_key(), request.mask_public_key(), request.signature()});
      !status.ok()) {
    return refuse(status);
  }
  (*participant)->certificate_der = certificate_der;
  (*participant)->key_changes = *std::move(key_changes);
  return Accepted(**participant, v1::ROUND_STAGE_SELECTED);
}

absl::StatusOr<v1::StageAck> RoundEngine::ShareKeys(const std::string& client_id,
                                                    const v1::ShareKeysRequest& request) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Participant*> participant =
      Submitter(client_id, request.round_id(), v1::ROUND_STAGE_KEYS_ADVERTISED);
  if (!participant.ok()) return participant.status();
  const uint32_t id = round_->participant_ids[client_id];
  std::vector<secure_agg::SealedShares> shares;
  shares.reserve(static_cast<size_t>(request.shares_size()));
  for (const v1::EncryptedShares& bundle : request.shares()) {
    shares.push_back({id, bundle.peer_participant_id(), bundle.ciphertext()});
  }
  if (absl::Status status = round_->secagg->ReceiveShares(id, shares); !status.ok()) {
    Drop(**participant, status);
    return status;
  }
  return Accepted(**participant, v1::ROUND_STAGE_KEYS_ADVERTISED);
}

RoundEngine::MaskedUpload::MaskedUpload(MaskedUpload&& other) noexcept
    : engine_(std::exchange(other.engine_, nullptr)),
      round_id_(other.round_id_),
      bits_(other.bits_),
      total_values_(other.total_values_) {}

RoundEngine::MaskedUpload::~MaskedUpload() {
  if (engine_ == nullptr) return;
  absl::MutexLock lock(&engine_->mutex_);
  --engine_->uploads_in_flight_;
}

absl::StatusOr<RoundEngine::MaskedUpload> RoundEngine::BeginMaskedInput(
    const std::string& client_id, uint64_t round_id, uint64_t total_values) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Participant*> participant =
      Submitter(client_id, round_id, v1::ROUND_STAGE_KEYS_SHARED);
  if (!participant.ok()) return participant.status();
  const uint64_t expected = round_->spec.layout().encoded_values();
  if (total_values != expected) {
    absl::Status status = absl::InvalidArgumentError(
        absl::StrCat("the masked input has ", total_values, " values; round ", round_->id,
                     " expects ", expected));
    Drop(**participant, status);
    return status;
  }
  const int bits = static_cast<int>(policy_.ring_bits);
  if ((*participant)->DidItsPartIn(v1::ROUND_STAGE_KEYS_SHARED)) {
    return MaskedUpload(nullptr, round_id, bits, expected);
  }
  if (uploads_in_flight_ >= config_->concurrent_uploads) {
    return absl::ResourceExhaustedError(
        absl::StrCat(uploads_in_flight_, " masked inputs are streaming already (",
                     "limits.concurrent_uploads); send again shortly"));
  }
  ++uploads_in_flight_;
  return MaskedUpload(this, round_id, bits, expected);
}

absl::StatusOr<v1::StageAck> RoundEngine::FinishMaskedInput(const std::string& client_id,
                                                            const MaskedUpload& upload,
                                                            std::span<const StagedChunk> chunks) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Participant*> participant =
      Submitter(client_id, upload.round_id(), v1::ROUND_STAGE_KEYS_SHARED);
  if (!participant.ok()) return participant.status();
  const uint32_t id = round_->participant_ids[client_id];
  if (!(*participant)->DidItsPartIn(v1::ROUND_STAGE_KEYS_SHARED)) {
    std::vector<uint64_t> values;
    uint64_t offset = 0;
    for (const StagedChunk& chunk : chunks) {
      values.resize(chunk.value_count);
      // The stream's chunks were unpacked once already when they arrived; this cannot fail
      // unless memory is corrupt, and then the round must not commit a partial sum.
      absl::Status status = secure_agg::UnpackValues(chunk.packed_values, upload.bits(), values);
      if (status.ok()) status = round_->secagg->ReceiveMaskedChunk(id, offset, values);
      if (!status.ok()) {
        Drop(**participant, status);
        return status;
      }
      offset += chunk.value_count;
    }
  }
  v1::StageAck ack = Accepted(**participant, v1::ROUND_STAGE_KEYS_SHARED);
  ack.set_values_received(round_->secagg->ValuesReceived(id));
  return ack;
}

absl::StatusOr<v1::StageAck> RoundEngine::Unmask(const std::string& client_id,
                                                 const v1::UnmaskRequest& request) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Participant*> participant =
      Submitter(client_id, request.round_id(), v1::ROUND_STAGE_MASKED_COLLECTED);
  if (!participant.ok()) return participant.status();
  if (!(*participant)->DidItsPartIn(v1::ROUND_STAGE_KEYS_SHARED)) {
    return absl::FailedPreconditionError("this client's masked input is not in the sum");
  }
  secure_agg::RevealedShares revealed;
  revealed.participant = round_->participant_ids[client_id];
  for (const v1::RevealedShare& share : request.self_mask_shares()) {
    revealed.self_mask_shares[share.owner_participant_id()] = share.share();
  }
  for (const v1::RevealedShare& share : request.mask_key_shares()) {
    revealed.mask_key_shares[share.owner_participant_id()] = share.share();
  }
  if (absl::Status status = round_->secagg->ReceiveRevealedShares(revealed); !status.ok()) {
    Drop(**participant, status);
    return status;
  }
  return Accepted(**participant, v1::ROUND_STAGE_MASKED_COLLECTED);
}
}  // namespace fedmoe::coordinator
