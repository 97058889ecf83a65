// A federation client without local training: an enrolled identity with its own mutual-TLS
// channel that takes part in a round's SecAgg+ stages with an update it is handed. The
// federation load generator (bench/federation) runs a thousand of them in one process against a
// real coordinator; the rounds integration tests use a few to know every client's plain update
// and to make clients vanish or misbehave at a chosen stage.
#ifndef FEDMOE_SIMULATION_SIMULATED_CLIENT_H_
#define FEDMOE_SIMULATION_SIMULATED_CLIENT_H_

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <random>
#include <semaphore>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/client_config.h"
#include "client/coordinator_channel.h"
#include "fedmoe/v1/federation.grpc.pb.h"

namespace fedmoe::simulation {

enum class Misbehaviour {
  kNone,
  // Streams a masked input one value longer than the round's layout.
  kWrongLength,
  // After its own ShareKeys, sends its AdvertiseKeys message again.
  kReplayAdvertiseKeys,
  // Streams half of a masked input, then breaks the stream and vanishes, as a client killed
  // in mid-upload.
  kAbandonUpload,
};

struct RoundBehaviour {
  // The client disappears when the task of this stage arrives: SELECTED (before AdvertiseKeys),
  // KEYS_ADVERTISED (before ShareKeys), KEYS_SHARED (before its masked input) or
  // MASKED_COLLECTED (before Unmask). UNSPECIFIED: it stays to the end.
  v1::RoundStage vanish_at = v1::ROUND_STAGE_UNSPECIFIED;
  Misbehaviour misbehaviour = Misbehaviour::kNone;
  // Called when the task of a stage arrives (the coordinator is at that stage, as for
  // vanish_at), before the client acts on it: tests hold a round at a stage this way.
  std::function<void(v1::RoundStage)> on_task;
  // Bounds how many clients of a process mask and upload at once (their masked vectors are the
  // load generator's memory); null: no bound.
  std::counting_semaphore<>* upload_slots = nullptr;
};

class SimulatedClient;

// The encoded update (UpdateLayout.encoded_values ring elements) a client sends in a round.
using UpdateSource = std::function<absl::StatusOr<std::vector<uint64_t>>(
    const SimulatedClient& client, const v1::JoinRoundTask& task)>;

struct RoundReport {
  uint64_t round_id = 0;
  // COMMITTED or ABORTED as the coordinator announced it; UNSPECIFIED when the client vanished,
  // was dropped, or gave up before the round finished.
  v1::RoundStage outcome = v1::ROUND_STAGE_UNSPECIFIED;
  uint64_t new_model_version = 0;
  std::string abort_reason;
  // The last stage the client completed.
  v1::RoundStage completed = v1::ROUND_STAGE_UNSPECIFIED;
  // Why the client left the round early (a refused message, a misbehaviour's answer).
  absl::Status error;
  // Serialized request and response bytes of this round, polls included.
  uint64_t bytes_sent = 0;
  uint64_t bytes_received = 0;
  absl::Time selected_at;
  absl::Time finished_at;
};

class SimulatedClient {
 public:
  // `state_dir` is an enrolled client's (fedmoe-client enroll); the client gets a connection of
  // its own, never shared with the others of the process.
  static absl::StatusOr<std::unique_ptr<SimulatedClient>> Open(
      const std::filesystem::path& state_dir);

  const std::string& client_id() const { return config_.client_id; }

  // Polls for `duration` as a client waiting for a round does, obeying retry_after; for
  // measuring what the waiting fleet costs the coordinator, so no round may start meanwhile.
  void Wait(absl::Duration duration);

  // Polls until selected for a round, takes part as `behaviour` says, and returns when that
  // round finishes, the client leaves it, or `timeout` passes (DeadlineExceeded in `error`).
  RoundReport RunRound(const UpdateSource& update, const RoundBehaviour& behaviour,
                       absl::Duration timeout);

 private:
  SimulatedClient(client::ClientConfig config, client::CoordinatorChannel channel);
  // A new channel in place of the old, whose connection closes.
  absl::Status Redial();
  // After an Idle answer: waits as long as it says (never past `until`), disconnected.
  absl::Status WaitAsTold(const v1::Idle& idle, absl::Time until);
  // One long poll; reports the last round and stage this client finished.
  grpc::Status Poll(v1::PollTaskResponse& response, RoundReport& report);
  // Streams one chunk of `values_sent` values of a vector said to have `total_values`, then
  // ends the stream, or breaks it when `cancel`.
  absl::Status SendPartialUpload(const v1::JoinRoundTask& task, uint64_t total_values,
                                 uint64_t values_sent, bool cancel, RoundReport& report);

  client::ClientConfig config_;
  client::CoordinatorChannel channel_;
  std::unique_ptr<v1::Federation::Stub> federation_;
  uint64_t known_round_ = 0;
  v1::RoundStage known_stage_ = v1::ROUND_STAGE_UNSPECIFIED;
  std::mt19937_64 jitter_{std::random_device{}()};
};

// Enrolled state directories under `root` for `count` clients named <prefix>-00001, ...: each
// gets a one-time token from the admin API and enrolls through `enroll_address` like
// `fedmoe-client enroll`.
absl::StatusOr<std::vector<std::filesystem::path>> EnrollFleet(
    const std::filesystem::path& coordinator_config, const std::string& enroll_address,
    const std::filesystem::path& root, const std::string& prefix, int count);

}  // namespace fedmoe::simulation

#endif  // FEDMOE_SIMULATION_SIMULATED_CLIENT_H_
