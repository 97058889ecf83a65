// `fedmoe-client run`: the client daemon. It only dials out: it long-polls the coordinator for
// its next task over mutual TLS (waiting as told when the coordinator cannot hold the poll),
// reconnects by itself with exponential backoff and full jitter
// after any failure (a coordinator restart included), renews its certificate when less than a
// third of its lifetime is left or when the coordinator announces another trust bundle (a CA
// rotation), and stops cleanly when asked.
#ifndef FEDMOE_CLIENT_DAEMON_H_
#define FEDMOE_CLIENT_DAEMON_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <optional>
#include <random>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "client/client_config.h"
#include "client/client_metrics.h"
#include "client/personal_model.h"
#include "client/record_ledger.h"
#include "client/round_participant.h"
#include "client/serve_host.h"
#include "client/update.h"
#include "fedmoe/v1/enrollment.grpc.pb.h"
#include "fedmoe/v1/federation.grpc.pb.h"
#include "metrics/metrics_server.h"
#include "model/frozen_base.h"
#include "pki/certificate.h"
#include "pki/private_key.h"
#include "privacy/secure_random.h"

namespace fedmoe::client {

// Exit statuses of `fedmoe-client run`, so that a service manager can tell a revoked client
// (do not restart) from a crash (restart).
inline constexpr int kExitRevoked = 3;

class ClientDaemon {
 public:
  explicit ClientDaemon(ClientConfig config);

  // Polls until Stop(). Returns OK after Stop(), PermissionDenied when the coordinator refuses
  // this client (revoked or unknown), or another error that retrying cannot fix.
  absl::Status Run();
  // Thread-safe; cancels the poll in flight and wakes a backoff sleep.
  void Stop();

 private:
  // Loads key and certificate and builds the mTLS channel.
  absl::Status Connect();
  absl::Status RenewIfDue();
  // One long poll. Returns its status; OK means the coordinator answered.
  grpc::Status PollOnce();
  // Sleeps for the backoff interval unless stopped; returns false if stopped.
  bool Backoff(int attempt);
  // Waits, unless the daemon is stopping; false when it is.
  bool Pause(absl::Duration wait);
  void WriteStatus(const std::string& state, const std::string& detail);
  // Asks for a renewal when the coordinator's trust bundle differs from this client's.
  void NoteAnnouncedTrust(const std::string& announced);
  // Carries out a task PollTask returned; a failure takes this client out of the round.
  void HandleTask(const v1::PollTaskResponse& response);
  // Syncs the model, trains on the local data, builds, clips and encodes the update, and
  // advertises keys (DESIGN §3.2–§4).
  absl::Status JoinRound(const v1::JoinRoundTask& task);
  void Withdraw(uint64_t round_id, const absl::Status& why);
  // DP-SGD's part of joining: sets the record unit and a device that clips per record, and
  // refuses a round that would take the dataset past the site's record-level budget (or one
  // without DP-SGD when the site has a budget). Returns the dataset's account before the round.
  // `released_values` is what one private step releases (model::PrivateReleaseValues).
  absl::StatusOr<DatasetAccount> PrepareRecordPrivacy(uint64_t round_id,
                                                      const model::MoeConfig& model_config,
                                                      int64_t released_values,
                                                      const model::Tokenizer& tokenizer,
                                                      model::TrainOptions& options);
  // A frozen base, opened once per daemon and named by its content hash, which costs a pass
  // over its bytes.
  struct HeldBase {
    model::FrozenBase base;
    std::string content_sha256;
    std::filesystem::path directory;
  };
  // The base `adapters` names: training.base, opened on first use, or without one the
  // coordinator's copy, downloaded once into the state directory and kept. FailedPrecondition
  // saying which base the federation holds and which this site has when they differ; DataLoss
  // when a download does not hash to it (the download is discarded).
  absl::StatusOr<const HeldBase*> BaseFor(const v1::AdapterSpec& adapters);
  // A round's local training of whole tensors (optionally beside private experts), or of
  // adapters over `base`, from the version downloaded to `directory`; each returns the plain
  // update after charging the record-level ledger.
  absl::StatusOr<PlainUpdate> TrainModelRound(const v1::JoinRoundTask& task,
                                              const std::filesystem::path& directory,
                                              privacy::SecureRandom& random);
  absl::StatusOr<PlainUpdate> TrainAdapterRound(const v1::JoinRoundTask& task,
                                                const model::FrozenBase& base,
                                                const std::filesystem::path& directory,
                                                privacy::SecureRandom& random);
  // The site's compute settings fitted to `config` (a device that cannot hold it falls back, and
  // the round's log says why).
  absl::StatusOr<ComputeSettings> ComputeForRound(uint64_t round_id,
                                                  const model::MoeConfig& config) const;
  void LogTrainingStarted(const v1::JoinRoundTask& task, const model::TrainOptions& options) const;
  // What both kinds of round do once training is done: status, the log, and the record-level
  // charge of a DP-SGD run, made before anything derived from the training leaves the process.
  absl::Status FinishLocalTraining(uint64_t round_id, const model::TrainResult& trained,
                                   const DatasetAccount& account);
  // Saves the personal model after a round trained it under private experts: the round's base
  // global model plus the private experts and router rows of `trained`.
  absl::Status KeepPrivateExperts(const model::ModelParameters& global,
                                  const model::ModelParameters& trained,
                                  const std::filesystem::path& global_directory,
                                  uint64_t global_version,
                                  const std::optional<PersonalModelInfo>& held, int64_t steps);
  // Brings the personal model to a newly published global version (personal_model.h's
  // RefreshPersonal), downloading the version first. Tried once per version; a failure is
  // logged, and the site keeps the personal model it has.
  void RefreshPersonalModel(uint64_t version);
  // Global version `version`'s directory, downloaded if this site does not hold it yet.
  absl::StatusOr<std::filesystem::path> DownloadVersion(uint64_t version);
  // Hands global version `version` to the serve: block's server (downloading it first), when
  // serving is on and it is newer than what is served. Tried once per version; a failure is
  // logged, and the server keeps the model it serves.
  void ServeVersion(uint64_t version);
  // The record-level ledger's accounts for status.json, as a JSON array.
  std::string RecordPrivacyStatus() const;
  // A later SecAgg+ stage of the round this client is in: `step` does it, and on success the
  // client reports `completes` on its next poll.
  void RunStage(uint64_t round_id, v1::RoundStage completes,
                const std::function<absl::Status()>& step);
  // Why the coordinator is unavailable to this client, as far as a direct TLS probe and a
  // local check of the certificate can tell.
  std::string DiagnoseUnavailable();

  ClientConfig config_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Federation::Stub> federation_;
  std::unique_ptr<v1::Certificates::Stub> certificates_;
  std::optional<pki::Certificate> certificate_;
  std::optional<pki::PrivateKey> key_;
  // ca.pem: the CAs this client trusts.
  std::optional<pki::TrustBundle> trust_;
  // Digest (hex) of a trust bundle a poll answer announced that differs from ours; a renewal
  // fetches it. The last one renewed for is remembered, so that a coordinator whose answer
  // does not match its announcement cannot make the client renew on every poll.
  std::string trust_renewal_wanted_;
  std::string trust_renewed_for_;
  std::mt19937_64 jitter_;

  // The round this client is in, if any, and its encoded update until it is uploaded.
  std::unique_ptr<RoundParticipant> participant_;
  std::vector<uint64_t> encoded_update_;
  // Reported on every poll, so the coordinator knows what this client has done.
  uint64_t known_round_ = 0;
  v1::RoundStage known_stage_ = v1::ROUND_STAGE_UNSPECIFIED;
  // Why this client left known_round_ on its own, sent with the polls that report it.
  std::string left_reason_;
  // Where local training runs: the configured device, or the CPU after a GPU that auto chose
  // could not train the federation's model.
  std::optional<model::Device> training_device_;
  // training.base once an adapter round opened it.
  std::optional<HeldBase> held_base_;
  // What status.json and /metrics show of the local progress.
  ClientProgress progress_;
  // The last round's training settings, which a Ditto refresh reuses for its steps.
  std::optional<model::TrainOptions> last_round_options_;
  // The newest global version the personal model was brought to, or tried.
  uint64_t personal_version_ = 0;
  // The serve: block's server, when it is on, and the newest version handed to it or tried.
  std::unique_ptr<ServeHost> serve_host_;
  uint64_t serve_tried_version_ = 0;
  // status.json's record_privacy array, refreshed at each charge or refusal.
  std::string record_privacy_status_ = "[]";
  std::shared_ptr<ClientMetrics> metrics_ = std::make_shared<ClientMetrics>();
  std::unique_ptr<metrics::MetricsServer> metrics_server_;

  absl::Mutex mutex_;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  grpc::ClientContext* in_flight_ ABSL_GUARDED_BY(mutex_) = nullptr;
};

}  // namespace fedmoe::client

#endif  // FEDMOE_CLIENT_DAEMON_H_
