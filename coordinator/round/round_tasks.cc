// What the round engine tells a client that polls or asks how a round went, and what it shows
// the operator (round_engine.h).

#include <limits>

#include "absl/strings/str_cat.h"
#include "coordinator/round/planner.h"
#include "coordinator/round/round_engine.h"
#include "logging/log.h"

namespace fedmoe::coordinator {
namespace {

bool Terminal(v1::RoundStage stage) {
  return stage == v1::ROUND_STAGE_COMMITTED || stage == v1::ROUND_STAGE_ABORTED;
}

}  // namespace

bool RoundEngine::InOpenRound(const std::string& client_id) {
  absl::MutexLock lock(&mutex_);
  if (round_ == nullptr) return false;
  auto found = round_->participant_ids.find(client_id);
  return found != round_->participant_ids.end() && !round_->participants[found->second - 1].dropped;
}

std::optional<v1::PollTaskResponse> RoundEngine::NextTask(const std::string& client_id,
                                                          const v1::PollTaskRequest& request) {
  absl::MutexLock lock(&mutex_);
  // How the last round ended comes before the next round's tasks: a client that heard of
  // neither (its polls were deferred) learns the outcomes in order.
  if (finished_.id != 0 && finished_.cohort.contains(client_id) &&
      (request.known_round_id() < finished_.id ||
       (request.known_round_id() == finished_.id && !Terminal(request.known_stage())))) {
    v1::PollTaskResponse response;
    v1::RoundFinished* finished = response.mutable_round_finished();
    finished->set_round_id(finished_.id);
    finished->set_outcome(finished_.outcome);
    finished->set_new_model_version(finished_.new_model_version);
    finished->set_abort_reason(finished_.abort_reason);
    return response;
  }
  const bool withdrew = request.known_stage() == v1::ROUND_STAGE_ABORTED;
  if (round_ != nullptr) {
    if (auto found = round_->participant_ids.find(client_id);
        found != round_->participant_ids.end()) {
      const uint32_t id = found->second;
      Participant& participant = round_->participants[id - 1];
      if (withdrew && request.known_round_id() == round_->id && !participant.dropped &&
          round_->stage < v1::ROUND_STAGE_UNMASKED) {
        const std::string reason = PrintableLine(request.left_reason(), 256);
        Drop(participant,
             absl::CancelledError(reason.empty() ? "the client withdrew (it lost its round state)"
                                                 : absl::StrCat("the client left: ", reason)));
        if (!reason.empty()) {
          store_
              ->AddLeftReason(static_cast<int64_t>(round_->id),
                              absl::StrCat(client_id, ": ", reason))
              .IgnoreError();
        }
      }
      if (participant.dropped) return std::nullopt;
      const StageRule* rule = RuleFor(round_->stage);
      if (rule == nullptr || participant.DidItsPartIn(round_->stage)) return std::nullopt;
      v1::PollTaskResponse response;
      (this->*rule->task)(id, response);
      return response;
    }
  }
  const bool knows_end = Terminal(request.known_stage());
  // A client still inside a round this coordinator no longer runs (it restarted): tell it how
  // that round ended, from the store.
  if (request.known_round_id() != 0 && !knows_end && request.known_round_id() != finished_.id &&
      (round_ == nullptr || request.known_round_id() != round_->id)) {
    v1::PollTaskResponse response;
    v1::RoundFinished* finished = response.mutable_round_finished();
    finished->set_round_id(request.known_round_id());
    finished->set_outcome(v1::ROUND_STAGE_ABORTED);
    finished->set_abort_reason("the round is no longer open");
    if (absl::StatusOr<std::vector<RoundRecord>> rounds =
            store_->ListRounds(static_cast<int64_t>(request.known_round_id()) + 1, 1);
        rounds.ok() && !rounds->empty() &&
        rounds->front().round_id == static_cast<int64_t>(request.known_round_id())) {
      const RoundRecord& record = rounds->front();
      finished->set_outcome(StageFromName(record.stage) == v1::ROUND_STAGE_COMMITTED
                                ? v1::ROUND_STAGE_COMMITTED
                                : v1::ROUND_STAGE_ABORTED);
      finished->set_new_model_version(
          static_cast<uint64_t>(record.committed_model_version.value_or(0)));
      finished->set_abort_reason(record.abort_reason);
    }
    return response;
  }
  return std::nullopt;
}

v1::RoundStatus RoundEngine::RoundStatusFor(const std::string& client_id, uint64_t round_id) {
  absl::MutexLock lock(&mutex_);
  v1::RoundStatus status;
  if (round_ != nullptr && (round_id == 0 || round_id == round_->id)) {
    status.set_round_id(round_->id);
    status.set_stage(round_->stage);
    status.set_cohort_size(static_cast<uint32_t>(round_->participants.size()));
    status.set_survivors(static_cast<uint32_t>(Live()));
    *status.mutable_started_at() = ToTimestamp(round_->started_at);
    *status.mutable_stage_deadline() = ToTimestamp(round_->stage_deadline);
    status.set_base_model_version(static_cast<uint64_t>(round_->base.version));
    if (auto found = round_->participant_ids.find(client_id);
        found != round_->participant_ids.end()) {
      const Participant& participant = round_->participants[found->second - 1];
      status.set_caller_selected(true);
      status.set_caller_completed_stage(participant.completed);
      // Also past the stage: a client whose acknowledgement was lost while the stage closed
      // behind it learns here that its input is in the sum, instead of sending it again into
      // a closed stage and being dropped.
      if (round_->secagg.has_value() && round_->stage >= v1::ROUND_STAGE_KEYS_SHARED) {
        status.set_caller_values_received(round_->secagg->ValuesReceived(found->second));
      }
    }
    return status;
  }
  // Round ids are the store's int64 rows, and the lookup asks for the one after: an id from
  // there up names no round (the request fuzzer sent 2^63 - 1, and wanted + 1 overflowed).
  if (round_id >= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return status;
  const int64_t wanted =
      round_id == 0 ? static_cast<int64_t>(last_round_id_) : static_cast<int64_t>(round_id);
  absl::StatusOr<std::vector<RoundRecord>> rounds = store_->ListRounds(wanted + 1, 1);
  if (rounds.ok() && !rounds->empty() && rounds->front().round_id == wanted) {
    const RoundRecord& record = rounds->front();
    status.set_round_id(static_cast<uint64_t>(record.round_id));
    status.set_stage(StageFromName(record.stage));
    status.set_cohort_size(static_cast<uint32_t>(record.cohort_size));
    status.set_survivors(static_cast<uint32_t>(record.survivors));
    *status.mutable_started_at() = ToTimestamp(record.started_at);
    status.set_base_model_version(static_cast<uint64_t>(record.base_model_version));
    status.set_committed_model_version(
        static_cast<uint64_t>(record.committed_model_version.value_or(0)));
    status.set_abort_reason(record.abort_reason);
  }
  return status;
}

void RoundEngine::ClientRevoked(const std::string& client_id) {
  absl::MutexLock lock(&mutex_);
  if (round_ == nullptr || round_->stage >= v1::ROUND_STAGE_UNMASKED) return;
  if (auto found = round_->participant_ids.find(client_id);
      found != round_->participant_ids.end()) {
    Participant& participant = round_->participants[found->second - 1];
    if (!participant.dropped)
      Drop(participant, absl::PermissionDeniedError("the client was revoked"));
  }
}

absl::StatusOr<ModelVersionRecord> RoundEngine::Model(uint64_t version) {
  absl::StatusOr<std::optional<ModelVersionRecord>> record =
      store_->GetModel(static_cast<int64_t>(version));
  if (!record.ok()) return record.status();
  if (!record->has_value()) {
    return absl::NotFoundError(version == 0
                                   ? std::string("no model is published yet")
                                   : absl::StrCat("model version ", version, " is not published"));
  }
  return **record;
}

void RoundEngine::JoinTask(uint32_t id, v1::PollTaskResponse& response) const {
  v1::JoinRoundTask* join = response.mutable_join_round();
  join->set_round_id(round_->id);
  *join->mutable_update_spec() = round_->spec;
  v1::SecAggParameters* secagg = join->mutable_secagg();
  secagg->set_participant_id(id);
  secagg->set_num_participants(static_cast<uint32_t>(round_->participants.size()));
  for (uint32_t neighbor : round_->graph->Neighbors(id)) secagg->add_neighbors(neighbor);
  secagg->set_threshold(round_->shape.threshold);
  secagg->set_ring_bits(static_cast<uint32_t>(policy_.ring_bits));
  secagg->set_session_id(round_->session_id);
  secagg->set_shamir_field(v1::SecAggParameters::SHAMIR_FIELD_MERSENNE61);
  secagg->set_prg(v1::SecAggParameters::PRG_AES128_CTR_HKDF_SHA256);
  *join->mutable_deadlines() = round_->deadlines;
}

void RoundEngine::ShareKeysTask(uint32_t id, v1::PollTaskResponse& response) const {
  v1::ShareKeysTask* task = response.mutable_share_keys();
  task->set_round_id(round_->id);
  for (const secure_agg::AdvertisedKeys& keys : round_->secagg->KeysFor(id)) {
    v1::AdvertisedKeys* out = task->add_neighbor_keys();
    out->set_participant_id(keys.participant);
    out->set_cipher_public_key(keys.cipher_public_key);
    out->set_mask_public_key(keys.mask_public_key);
    out->set_signature(keys.signature);
    const Participant& peer = round_->participants[keys.participant - 1];
    out->set_certificate_der(peer.certificate_der);
    for (const pki::KeyChange& change : peer.key_changes) {
      v1::KeyChange* relayed = out->add_key_changes();
      relayed->set_old_public_key_der(change.old_public_key_der);
      relayed->set_new_public_key_der(change.new_public_key_der);
      relayed->set_signature(change.signature);
    }
  }
}

void RoundEngine::MaskedInputTask(uint32_t id, v1::PollTaskResponse& response) const {
  v1::MaskedInputTask* task = response.mutable_masked_input();
  task->set_round_id(round_->id);
  for (const secure_agg::SealedShares& bundle : round_->secagg->SharesFor(id)) {
    v1::EncryptedShares* out = task->add_incoming_shares();
    out->set_peer_participant_id(bundle.sender);
    out->set_ciphertext(bundle.ciphertext);
  }
}

void RoundEngine::UnmaskTask(uint32_t id, v1::PollTaskResponse& response) const {
  v1::UnmaskTask* task = response.mutable_unmask();
  task->set_round_id(round_->id);
  const secure_agg::UnmaskRequest unmask = round_->secagg->UnmaskRequestFor(id);
  for (uint32_t alive : unmask.alive) task->add_alive_neighbors(alive);
  for (uint32_t dropped : unmask.dropped) task->add_dropped_neighbors(dropped);
}

RoundEngine::Snapshot RoundEngine::snapshot() {
  absl::MutexLock lock(&mutex_);
  Snapshot snapshot;
  snapshot.model_version = static_cast<uint64_t>(global_record_.version);
  snapshot.epsilon_spent = ledger_.epsilon_spent();
  snapshot.sampler_total_variation = ledger_.sampler_total_variation();
  snapshot.paused_reason = paused_reason_;
  if (round_ != nullptr) {
    snapshot.round_id = round_->id;
    snapshot.stage = round_->stage;
  } else if (finished_.id != 0) {
    snapshot.round_id = finished_.id;
    snapshot.stage = finished_.outcome;
  } else {
    snapshot.round_id = last_round_id_;
    snapshot.stage = last_round_id_ == 0 ? v1::ROUND_STAGE_WAITING : v1::ROUND_STAGE_ABORTED;
  }
  return snapshot;
}

}  // namespace fedmoe::coordinator
