// The coordinator's round state machine (DESIGN §3):
//   WAITING → SELECTED → KEYS_ADVERTISED → KEYS_SHARED → MASKED_COLLECTED → UNMASKED →
//   COMMITTED, or ABORTED from any of them.
// One thread drives it: it samples a cohort when enough clients poll, closes each stage at
// its deadline or as soon as every live participant has done its part, and merges and
// commits. The RPC handlers only record submissions. Stage names follow what has closed: in
// SELECTED the cohort trains and advertises keys, in KEYS_ADVERTISED it shares keys, in
// KEYS_SHARED it uploads masked inputs, in MASKED_COLLECTED it reveals shares.
//
// Memory is O(model + cohort·neighbours): one running sum of the masked inputs, the global
// model, and per participant its keys and share bundles, whatever the cohort size.
//
// Durability (DESIGN §6): a round's row is written when it starts and at each stage; the new
// version, the ledger entry and the COMMITTED row are one transaction after the checkpoint is
// on disk. At start-up every unfinished round becomes ABORTED.
#ifndef FEDMOE_COORDINATOR_ROUND_ROUND_ENGINE_H_
#define FEDMOE_COORDINATOR_ROUND_ROUND_ENGINE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/config.h"
#include "coordinator/round/aggregate.h"
#include "coordinator/round/client_presence.h"
#include "coordinator/round/clock.h"
#include "coordinator/round/expert_merge.h"
#include "coordinator/round/global_model.h"
#include "coordinator/round/planner.h"
#include "coordinator/round/poll_hub.h"
#include "coordinator/round/privacy_ledger.h"
#include "coordinator/round/round_observer.h"
#include "coordinator/state/model_repository.h"
#include "coordinator/state/store.h"
#include "fedmoe/v1/federation.pb.h"
#include "pki/certificate.h"
#include "secure_agg/server/secagg_server.h"

namespace fedmoe::coordinator {

// The stage's proto name without its prefix ("KEYS_SHARED"), as the store records it.
std::string StageName(v1::RoundStage stage);
// The inverse; UNSPECIFIED for an unknown name.
v1::RoundStage StageFromName(const std::string& name);

class RoundEngine {
 public:
  struct Snapshot {
    uint64_t round_id = 0;
    v1::RoundStage stage = v1::ROUND_STAGE_WAITING;
    uint64_t model_version = 0;
    double epsilon_spent = 0;
    // The ledger's total charge for its samplers, which epsilon_spent accounts for.
    double sampler_total_variation = 0;
    // Why no round starts (budget spent, max_rounds reached, no model); empty otherwise.
    std::string paused_reason;
  };

  // Aborts rounds a crash left open, removes unpublished model directories, publishes the
  // initial model if there is none yet, and loads the newest version and the ledger. Stage
  // deadlines, round intervals and the store's timestamps follow `clock`.
  static absl::StatusOr<std::unique_ptr<RoundEngine>> Create(const CoordinatorConfig* config,
                                                             Store* store, ClientPresence* presence,
                                                             PollHub* polls,
                                                             const Clock* clock = &Clock::System());
  RoundEngine(const RoundEngine&) = delete;
  RoundEngine& operator=(const RoundEngine&) = delete;
  ~RoundEngine();

  // Starts the driving thread, which Ticks every 50 ms.
  void Start();
  // One step of the driving thread: starts a round when the policy allows, closes the open
  // stage when it is done or past its deadline, and commits an unmasked round. Unit tests on a
  // fake clock call it themselves instead of Start.
  void Tick();
  // Stops the driving thread; an open round stays in the store as it is, and the next start
  // aborts it.
  void Stop();

  // The caller's next task, or nullopt when it has none now.
  std::optional<v1::PollTaskResponse> NextTask(const std::string& client_id,
                                               const v1::PollTaskRequest& request);
  // Whether the client is in the open round's cohort and has not dropped out.
  bool InOpenRound(const std::string& client_id);
  absl::StatusOr<v1::StageAck> AdvertiseKeys(const std::string& client_id,
                                             const std::string& certificate_der,
                                             const v1::AdvertiseKeysRequest& request);
  absl::StatusOr<v1::StageAck> ShareKeys(const std::string& client_id,
                                         const v1::ShareKeysRequest& request);
  // A client's masked input arrives as one stream of chunks, and none of it enters the sum
  // until the whole vector is here: a client that dies mid-upload must leave nothing behind,
  // because no share could remove part of a masked vector. Staging costs D·b/8 bytes per
  // stream, so at most limits.concurrent_uploads stream at once; the others get
  // RESOURCE_EXHAUSTED and retry. A broken stream starts again from value 0.
  class MaskedUpload {
   public:
    MaskedUpload(MaskedUpload&& other) noexcept;
    MaskedUpload& operator=(MaskedUpload&&) = delete;
    MaskedUpload(const MaskedUpload&) = delete;
    ~MaskedUpload();
    uint64_t round_id() const { return round_id_; }
    int bits() const { return bits_; }
    uint64_t total_values() const { return total_values_; }
    // The client's vector is already in the sum (a retry whose acknowledgement was lost).
    bool already_in_sum() const { return engine_ == nullptr; }

   private:
    friend class RoundEngine;
    MaskedUpload(RoundEngine* engine, uint64_t round_id, int bits, uint64_t total_values)
        : engine_(engine), round_id_(round_id), bits_(bits), total_values_(total_values) {}
    RoundEngine* engine_;  // Holds an upload slot while not null.
    uint64_t round_id_;
    int bits_;
    uint64_t total_values_;
  };
  struct StagedChunk {
    uint32_t value_count = 0;
    std::string packed_values;
  };
  // Checks the caller, the stage and the vector's length (a wrong length drops the client)
  // before anything is staged.
  absl::StatusOr<MaskedUpload> BeginMaskedInput(const std::string& client_id, uint64_t round_id,
                                                uint64_t total_values);
  // Adds a complete upload (its chunks in order) to the sum.
  absl::StatusOr<v1::StageAck> FinishMaskedInput(const std::string& client_id,
                                                 const MaskedUpload& upload,
                                                 std::span<const StagedChunk> chunks);
  absl::StatusOr<v1::StageAck> Unmask(const std::string& client_id,
                                      const v1::UnmaskRequest& request);
  v1::RoundStatus RoundStatusFor(const std::string& client_id, uint64_t round_id);

  // A revoked client leaves the open round at once, rather than at the stage's deadline.
  void ClientRevoked(const std::string& client_id);
  // Stage and round durations go here from now on; null stops them.
  void SetObserver(RoundObserver* observer) {
    absl::MutexLock lock(&mutex_);
    observer_ = observer;
  }

  // Version 0: the newest.
  absl::StatusOr<ModelVersionRecord> Model(uint64_t version);
  std::filesystem::path ModelDirectory(const ModelVersionRecord& record) const {
    return models_.Directory(record);
  }
  // An adapter federation's frozen base, which sites without a copy download; NotFound for a
  // federation of whole models. Set by Load and unchanged after, so any thread may ask.
  absl::StatusOr<const BaseIdentity*> Base() const;
  Snapshot snapshot();

 private:
  struct Participant {
    std::string client_id;
    std::string certificate_der;
    // Relayed with its advertised keys, for peers that pinned an older key of it.
    std::vector<pki::KeyChange> key_changes;
    bool dropped = false;
    // The furthest stage this participant's accepted messages took it to: KEYS_ADVERTISED once
    // its keys are in, ..., UNMASKED once its shares are; UNSPECIFIED before.
    v1::RoundStage completed = v1::ROUND_STAGE_UNSPECIFIED;
    // Whether it has done what `stage` asks of it (advertise in SELECTED, share in
    // KEYS_ADVERTISED, and so on).
    bool DidItsPartIn(v1::RoundStage stage) const { return completed > stage; }
  };
  struct Round {
    uint64_t id = 0;
    v1::RoundStage stage = v1::ROUND_STAGE_SELECTED;
    absl::Time started_at;
    // When the current stage opened, for its latency.
    absl::Time stage_started_at;
    absl::Time stage_deadline;
    v1::StageDeadlines deadlines;
    ModelVersionRecord base;
    v1::UpdateSpec spec;
    // What the ledger prices the round on: spec.privacy(), the ring encoding it describes, and
    // the rate the cohort was really drawn at.
    RoundTerms terms;
    std::string session_id;
    SecAggShape shape;
    std::optional<secure_agg::NeighborGraph> graph;
    std::optional<secure_agg::SecAggServer> secagg;
    std::vector<Participant> participants;  // Index: participant id − 1.
    absl::flat_hash_map<std::string, uint32_t> participant_ids;
  };
  // The last finished round, so that its cohort hears how it ended.
  struct Finished {
    uint64_t id = 0;
    v1::RoundStage outcome = v1::ROUND_STAGE_UNSPECIFIED;
    uint64_t new_model_version = 0;
    std::string abort_reason;
    absl::flat_hash_map<std::string, bool> cohort;
  };

  RoundEngine(const CoordinatorConfig* config, Store* store, ClientPresence* presence,
              PollHub* polls, const Clock* clock);
  absl::Status Load();
  void Run();
  absl::Time Now() const { return clock_->Now(); }
  // Starts a round if the policy allows one now.
  void MaybeSelect() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void MaybeCloseStage() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // How a stage that waits on the cohort runs and closes (round_engine.cc's kStageRules): what its
  // participants do, what closes with it, and what comes after. Each stage's part is one message,
  // and a participant's Participant::completed says which it has sent; the stage closes as soon as
  // every live participant has done its part, or at its deadline.
  struct StageRule {
    v1::RoundStage stage;
    // For the laggards' drop reason ("missed the share-keys deadline") and the abort reason
    // ("only 2 participants shared keys").
    const char* deadline_name;
    const char* done_phrase;
    // The SecAgg+ stage that closes with this one; null for unmask, whose end is Finish, which
    // the commit calls.
    absl::Status (secure_agg::SecAggServer::*close_secagg)();
    // Whether the stage drops its laggards and needs MinimumSurvivors after them. Not unmask: a
    // late unmasker's masked input is in the sum, and the others' shares can still remove its
    // masks; too few shares fail Finish, which aborts the round then.
    bool drops_laggards;
    v1::RoundStage next;
    // The next stage's deadline among the round's; null for UNMASKED, which commits at once.
    const google::protobuf::Timestamp& (v1::StageDeadlines::*next_deadline)() const;
    // The task of a participant that has yet to do its part.
    void (RoundEngine::*task)(uint32_t id, v1::PollTaskResponse& response) const;
  };
  static const StageRule* RuleFor(v1::RoundStage stage);
  // The tasks of the open round's stages, for participant `id`.
  void JoinTask(uint32_t id, v1::PollTaskResponse& response) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void ShareKeysTask(uint32_t id, v1::PollTaskResponse& response) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void MaskedInputTask(uint32_t id, v1::PollTaskResponse& response) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void UnmaskTask(uint32_t id, v1::PollTaskResponse& response) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Records that `participant` did its part in `open_stage`, and acknowledges it (a duplicate
  // when it had already).
  v1::StageAck Accepted(Participant& participant, v1::RoundStage open_stage)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void Abort(const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Records how long the round's current stage was open, and restarts its clock.
  void StageEnded(Round& round) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void EnterStage(v1::RoundStage stage, absl::Time deadline) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Aggregates, charges the ledger, checkpoints and commits; runs without the lock held (the
  // round is in UNMASKED, which no submission can change).
  void Commit(Round& round);
  // Makes a committed round's model, optimizer and ledger row the engine's own.
  void Publish(Round& round, AggregatedRound aggregated, const ModelVersionRecord& record,
               const LedgerEntry& charge, absl::Time commit_started);
  // The participant behind a submission for `round_id`, or why there is none.
  absl::StatusOr<Participant*> Submitter(const std::string& client_id, uint64_t round_id,
                                         v1::RoundStage open_stage)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // A participant that sent something malformed or contradictory leaves the round.
  void Drop(Participant& participant, const absl::Status& why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Participants not dropped from the open round.
  int64_t Live() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // MinimumSurvivors of the round's SecAgg+ shape.
  static int64_t MinimumSurvivors(const Round& round);

  const CoordinatorConfig* config_;
  const RoundPolicy& policy_;
  Store* store_;
  ClientPresence* presence_;
  PollHub* polls_;
  const Clock* clock_;
  ModelRepository models_;

  absl::Mutex mutex_;
  std::unique_ptr<Round> round_ ABSL_GUARDED_BY(mutex_);
  Finished finished_ ABSL_GUARDED_BY(mutex_);
  bool committing_ ABSL_GUARDED_BY(mutex_) = false;
  RoundObserver* observer_ ABSL_GUARDED_BY(mutex_) = nullptr;
  // Masked-input streams being staged now (MaskedUpload holds one each).
  int64_t uploads_in_flight_ ABSL_GUARDED_BY(mutex_) = 0;
  absl::Time next_round_at_ ABSL_GUARDED_BY(mutex_);
  uint64_t last_round_id_ ABSL_GUARDED_BY(mutex_) = 0;
  std::string paused_reason_ ABSL_GUARDED_BY(mutex_);
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;

  // Owned by the driving thread (and Load); the lock guards the fields readers see.
  std::optional<GlobalModel> global_;
  std::optional<BaseIdentity> base_;
  ModelVersionRecord global_record_ ABSL_GUARDED_BY(mutex_);
  PrivacyLedger ledger_ ABSL_GUARDED_BY(mutex_);
  int64_t committed_rounds_ ABSL_GUARDED_BY(mutex_) = 0;
  ServerOptimizer server_optimizer_;
  std::thread thread_;
};

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_ROUND_ROUND_ENGINE_H_
