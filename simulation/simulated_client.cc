#include "simulation/simulated_client.h"

#include <algorithm>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/enroll.h"
#include "client/grpc_status.h"
#include "client/round_participant.h"
#include "coordinator/config.h"
#include "coordinator/service/admin_channel.h"
#include "logging/log.h"
#include "secure_agg/shared/packing.h"

namespace fedmoe::simulation {
namespace {

// Holds one of the process's upload slots for a scope.
class UploadSlot {
 public:
  explicit UploadSlot(std::counting_semaphore<>* slots) : slots_(slots) {
    if (slots_ != nullptr) slots_->acquire();
  }
  ~UploadSlot() {
    if (slots_ != nullptr) slots_->release();
  }
  UploadSlot(const UploadSlot&) = delete;
  UploadSlot& operator=(const UploadSlot&) = delete;

 private:
  std::counting_semaphore<>* slots_;
};

// The coordinator's stage while it hands out a task; UNSPECIFIED for Idle and RoundFinished.
v1::RoundStage StageOfTask(const v1::PollTaskResponse& response) {
  switch (response.task_case()) {
    case v1::PollTaskResponse::kJoinRound:
      return v1::ROUND_STAGE_SELECTED;
    case v1::PollTaskResponse::kShareKeys:
      return v1::ROUND_STAGE_KEYS_ADVERTISED;
    case v1::PollTaskResponse::kMaskedInput:
      return v1::ROUND_STAGE_KEYS_SHARED;
    case v1::PollTaskResponse::kUnmask:
      return v1::ROUND_STAGE_MASKED_COLLECTED;
    default:
      return v1::ROUND_STAGE_UNSPECIFIED;
  }
}

}  // namespace

SimulatedClient::SimulatedClient(client::ClientConfig config, client::CoordinatorChannel channel)
    : config_(std::move(config)),
      channel_(std::move(channel)),
      federation_(v1::Federation::NewStub(channel_.channel)) {}

absl::Status SimulatedClient::Redial() {
  absl::StatusOr<client::CoordinatorChannel> channel =
      client::DialCoordinator(config_, /*own_connection=*/true);
  if (!channel.ok()) return channel.status();
  channel_ = *std::move(channel);
  federation_ = v1::Federation::NewStub(channel_.channel);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<SimulatedClient>> SimulatedClient::Open(
    const std::filesystem::path& state_dir) {
  absl::StatusOr<client::ClientConfig> config =
      client::ClientConfig::Load(client::ClientStateDir{state_dir}.config());
  if (!config.ok()) return config.status();
  absl::StatusOr<client::CoordinatorChannel> channel =
      client::DialCoordinator(*config, /*own_connection=*/true);
  if (!channel.ok()) return channel.status();
  return std::unique_ptr<SimulatedClient>(
      new SimulatedClient(*std::move(config), *std::move(channel)));
}

grpc::Status SimulatedClient::Poll(v1::PollTaskResponse& response, RoundReport& report) {
  v1::PollTaskRequest request;
  request.mutable_max_wait()->set_seconds(absl::ToInt64Seconds(config_.poll_max_wait));
  request.mutable_capabilities()->set_software_version("simulated");
  request.mutable_capabilities()->set_device("cpu");
  request.set_known_round_id(known_round_);
  request.set_known_stage(known_stage_);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + config_.poll_max_wait + absl::Seconds(15)));
  report.bytes_sent += request.ByteSizeLong();
  grpc::Status status = federation_->PollTask(&context, request, &response);
  if (status.ok()) report.bytes_received += response.ByteSizeLong();
  return status;
}

absl::Status SimulatedClient::SendPartialUpload(const v1::JoinRoundTask& task,
                                                uint64_t total_values, uint64_t values_sent,
                                                bool cancel, RoundReport& report) {
  const int bits = static_cast<int>(task.secagg().ring_bits());
  v1::MaskedInputChunk chunk;
  chunk.set_round_id(task.round_id());
  chunk.set_total_values(total_values);
  chunk.set_first_value(0);
  chunk.set_value_count(static_cast<uint32_t>(values_sent));
  std::vector<uint64_t> values(values_sent, 1);
  if (absl::Status status = secure_agg::PackValues(values, bits, *chunk.mutable_packed_values());
      !status.ok()) {
    return status;
  }
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  v1::StageAck ack;
  auto writer = federation_->UploadMaskedInput(&context, &ack);
  report.bytes_sent += chunk.ByteSizeLong();
  writer->Write(chunk);
  if (cancel) {
    // Long enough for the chunk to reach the coordinator before the stream breaks.
    absl::SleepFor(absl::Milliseconds(200));
    context.TryCancel();
  } else {
    writer->WritesDone();
  }
  return client::FromGrpc(writer->Finish(), "UploadMaskedInput");
}

absl::Status SimulatedClient::WaitAsTold(const v1::Idle& idle, absl::Time until) {
  const absl::Duration delay = client::NextPollDelay(idle, jitter_);
  if (delay <= absl::ZeroDuration()) return absl::OkStatus();
  // Like the daemon, give the connection back while waiting.
  if (absl::Status redialled = Redial(); !redialled.ok()) return redialled;
  std::this_thread::sleep_for(absl::ToChronoNanoseconds(std::min(delay, until - absl::Now())));
  return absl::OkStatus();
}

void SimulatedClient::Wait(absl::Duration duration) {
  const absl::Time until = absl::Now() + duration;
  RoundReport ignored;
  while (absl::Now() < until) {
    v1::PollTaskResponse response;
    if (grpc::Status status = Poll(response, ignored); !status.ok()) {
      std::this_thread::sleep_for(absl::ToChronoNanoseconds(config_.backoff_initial));
    } else if (response.has_idle() && !WaitAsTold(response.idle(), until).ok()) {
      return;
    }
  }
}

RoundReport SimulatedClient::RunRound(const UpdateSource& update, const RoundBehaviour& behaviour,
                                      absl::Duration timeout) {
  RoundReport report;
  const absl::Time deadline = absl::Now() + timeout;
  std::unique_ptr<client::RoundParticipant> participant;
  absl::Duration backoff = config_.backoff_initial;
  auto account = [&] {
    if (participant == nullptr) return;
    report.bytes_sent += participant->bytes_sent();
    report.bytes_received += participant->bytes_received();
    report.completed = participant->completed();
  };
  // The client gives up its part: the coordinator hears of it at the next poll, as from the
  // daemon, unless the client vanished.
  auto leave = [&](absl::Status why) {
    account();
    LogEvent(LogLevel::kWarning, "simulated_client_left")
        .Field("client_id", client_id())
        .Field("round_id", report.round_id)
        .Error(why);
    report.error = std::move(why);
    known_round_ = report.round_id;
    known_stage_ = v1::ROUND_STAGE_ABORTED;
    report.finished_at = absl::Now();
    return report;
  };
  while (absl::Now() < deadline) {
    v1::PollTaskResponse response;
    if (grpc::Status status = Poll(response, report); !status.ok()) {
      if (status.error_code() == grpc::StatusCode::PERMISSION_DENIED ||
          status.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
        return leave(client::FromGrpc(status, "PollTask"));
      }
      std::this_thread::sleep_for(absl::ToChronoNanoseconds(backoff));
      backoff = std::min(backoff * 2, config_.backoff_max);
      continue;
    }
    backoff = config_.backoff_initial;
    const v1::RoundStage stage = StageOfTask(response);
    if (stage != v1::ROUND_STAGE_UNSPECIFIED) {
      if (behaviour.on_task) behaviour.on_task(stage);
      if (behaviour.vanish_at == stage && (participant != nullptr || response.has_join_round())) {
        if (response.has_join_round()) report.round_id = response.join_round().round_id();
        return leave(absl::CancelledError("vanished"));
      }
    }
    absl::Status step;
    switch (response.task_case()) {
      case v1::PollTaskResponse::kJoinRound: {
        const v1::JoinRoundTask& task = response.join_round();
        // Polls before selection count toward this round's bytes; nothing else carries over.
        RoundReport joined_report;
        joined_report.round_id = task.round_id();
        joined_report.bytes_sent = report.bytes_sent;
        joined_report.bytes_received = report.bytes_received;
        joined_report.selected_at = absl::Now();
        report = std::move(joined_report);
        absl::StatusOr<std::unique_ptr<client::RoundParticipant>> joined =
            client::RoundParticipant::Create(
                task, client::ParticipantIdentity{&channel_.key, channel_.trust,
                                                  /*peer_keys=*/{}});
        if (!joined.ok()) return leave(joined.status());
        participant = *std::move(joined);
        step = participant->AdvertiseKeys(*federation_);
        known_stage_ = v1::ROUND_STAGE_KEYS_ADVERTISED;
        break;
      }
      case v1::PollTaskResponse::kShareKeys:
        if (participant == nullptr) continue;
        step = participant->ShareKeys(*federation_, response.share_keys());
        known_stage_ = v1::ROUND_STAGE_KEYS_SHARED;
        break;
      case v1::PollTaskResponse::kMaskedInput: {
        if (participant == nullptr) continue;
        const uint64_t length = participant->task().update_spec().layout().encoded_values();
        if (behaviour.misbehaviour == Misbehaviour::kWrongLength) {
          // One chunk claiming one value more than the layout has.
          return leave(SendPartialUpload(participant->task(), length + 1,
                                         std::min<uint64_t>(length + 1, 4096),
                                         /*cancel=*/false, report));
        }
        if (behaviour.misbehaviour == Misbehaviour::kAbandonUpload) {
          return leave(SendPartialUpload(participant->task(), length, length / 2,
                                         /*cancel=*/true, report));
        }
        if (behaviour.misbehaviour == Misbehaviour::kReplayAdvertiseKeys) {
          grpc::ClientContext context;
          context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
          v1::StageAck ack;
          return leave(client::FromGrpc(
              federation_->AdvertiseKeys(&context, participant->advertised(), &ack),
              "AdvertiseKeys"));
        }
        UploadSlot slot(behaviour.upload_slots);
        absl::StatusOr<std::vector<uint64_t>> encoded = update(*this, participant->task());
        if (!encoded.ok()) return leave(encoded.status());
        step = participant->UploadMaskedInput(*federation_, response.masked_input(),
                                              *std::move(encoded));
        known_stage_ = v1::ROUND_STAGE_MASKED_COLLECTED;
        break;
      }
      case v1::PollTaskResponse::kUnmask:
        if (participant == nullptr) continue;
        step = participant->Unmask(*federation_, response.unmask());
        known_stage_ = v1::ROUND_STAGE_UNMASKED;
        break;
      case v1::PollTaskResponse::kRoundFinished: {
        const v1::RoundFinished& finished = response.round_finished();
        known_round_ = finished.round_id();
        known_stage_ = finished.outcome();
        if (participant == nullptr || finished.round_id() != report.round_id) continue;
        account();
        report.outcome = finished.outcome();
        report.new_model_version = finished.new_model_version();
        report.abort_reason = finished.abort_reason();
        report.finished_at = absl::Now();
        return report;
      }
      case v1::PollTaskResponse::kIdle:
        if (absl::Status waited = WaitAsTold(response.idle(), deadline); !waited.ok()) {
          return leave(waited);
        }
        continue;
      default:
        continue;
    }
    known_round_ = report.round_id;
    if (!step.ok()) return leave(step);
  }
  return leave(absl::DeadlineExceededError(absl::StrCat(
      client_id(), " saw no end of its round within ", absl::FormatDuration(timeout))));
}

absl::StatusOr<std::vector<std::filesystem::path>> EnrollFleet(
    const std::filesystem::path& coordinator_config, const std::string& enroll_address,
    const std::filesystem::path& root, const std::string& prefix, int count) {
  absl::StatusOr<coordinator::CoordinatorConfig> config =
      coordinator::CoordinatorConfig::Load(coordinator_config);
  if (!config.ok()) return config.status();
  absl::StatusOr<std::unique_ptr<v1::Admin::Stub>> admin = coordinator::DialAdmin(*config);
  if (!admin.ok()) return admin.status();
  std::vector<std::filesystem::path> directories;
  for (int i = 1; i <= count; ++i) {
    const std::string client_id = absl::StrFormat("%s-%05d", prefix, i);
    std::filesystem::path state_dir = root / client_id;
    {
      v1::CreateEnrollmentTokenRequest request;
      request.set_client_id(client_id);
      request.mutable_ttl()->set_seconds(3600);
      v1::CreateEnrollmentTokenResponse token;
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
      if (grpc::Status status = (*admin)->CreateEnrollmentToken(&context, request, &token);
          !status.ok()) {
        return client::FromGrpc(status, "CreateEnrollmentToken");
      }
      client::EnrollOptions options;
      options.coordinator = enroll_address;
      options.token = token.token();
      options.ca_fingerprint = token.ca_fingerprint_sha256();
      options.state_dir = state_dir;
      if (absl::StatusOr<client::ClientConfig> enrolled = client::Enroll(options); !enrolled.ok()) {
        return enrolled.status();
      }
    }
    directories.push_back(std::move(state_dir));
  }
  return directories;
}

}  // namespace fedmoe::simulation
