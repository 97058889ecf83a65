// CoordinatorApi's federation service: polls, the round's stage messages, model downloads and
// masked uploads (api.h).
#include <google/protobuf/util/time_util.h>

#include <algorithm>
#include <fstream>
#include <optional>

#include "absl/strings/str_cat.h"
#include "coordinator/service/api.h"
#include "coordinator/service/wire.h"
#include "logging/log.h"
#include "secure_agg/shared/packing.h"

namespace fedmoe::coordinator {

using google::protobuf::util::TimeUtil;

void CoordinatorApi::PollTask(const grpc::AuthContext& peer, const v1::PollTaskRequest& request,
                              PollFinish finish, PollHub::Abandoned abandoned) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeClient(peer);
  if (!caller.ok()) {
    finish(LogRefusal("PollTask", caller.status()));
    return;
  }
  const absl::Time now = absl::Now();
  context_.store->TouchClient(caller->id.name, now).IgnoreError();
  const int polls_allowed = static_cast<int>(context_.config->polls_per_client);
  if (!context_.presence->TryStartPoll(caller->id.name, now, polls_allowed)) {
    // Polls of a daemon that restarted or reconnected may still be parked, abandoned.
    context_.polls->FinishAbandoned();
    if (!context_.presence->TryStartPoll(caller->id.name, now, polls_allowed)) {
      finish(Throttled("PollTask", caller->id.name,
                       absl::ResourceExhaustedError(absl::StrCat(
                           "client '", caller->id.name, "' already has ", polls_allowed,
                           " polls open (limits.polls_per_client); a daemon needs one"))));
      return;
    }
  }

  absl::Duration wait = context_.config->poll_max_wait;
  if (request.has_max_wait()) wait = std::min(wait, FromProto(request.max_wait()));
  wait = std::max(wait, absl::ZeroDuration());
  // Answers with the caller's task if it has one; otherwise, when the wait is over or the hub
  // has no room for it, Idle with when to poll again.
  auto answer = [this, finish = std::move(finish), request,
                 client_id = caller->id.name](PollHub::Reason reason) -> bool {
    if (RevokedWhilePolling(client_id)) {
      context_.presence->PollFinished(client_id, absl::Now());
      finish(absl::PermissionDeniedError(
          absl::StrCat("client '", client_id, "' is revoked; its open poll ends here")));
      return true;
    }
    std::optional<v1::PollTaskResponse> task = context_.rounds->NextTask(client_id, request);
    if (!task.has_value() && reason == PollHub::Reason::kWoken) return false;
    v1::PollTaskResponse response;
    if (task.has_value()) {
      response = std::move(*task);
    } else {
      v1::Idle* idle = response.mutable_idle();
      // After a full wait the client polls again at once; told there was no room, it waits.
      if (reason == PollHub::Reason::kNoRoom) {
        *idle->mutable_retry_after() =
            TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(DeferredPollInterval()));
        if (context_.metrics != nullptr) context_.metrics->PollDeferred();
      }
      idle->set_latest_model_version(context_.rounds->snapshot().model_version);
    }
    response.set_trust_bundle_sha256(trust_bundle_sha256_);
    context_.presence->PollFinished(client_id, absl::Now());
    finish(std::move(response));
    return true;
  };
  if (answer(PollHub::Reason::kWoken)) return;
  const PollPriority priority = context_.rounds->InOpenRound(caller->id.name)
                                    ? PollPriority::kInRound
                                    : PollPriority::kAwaitingRound;
  context_.polls->Park(now + wait, priority, std::move(answer), std::move(abandoned));
}

bool CoordinatorApi::RevokedWhilePolling(const std::string& client_id) {
  absl::MutexLock lock(&revoked_mutex_);
  return revoked_.contains(client_id);
}

absl::Duration CoordinatorApi::DeferredPollInterval() {
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&deferral_mutex_);
  // Counting the online clients walks all of them; once a second is often enough.
  if (now - deferral_computed_at_ >= absl::Seconds(1)) {
    deferral_interval_ = coordinator::DeferredPollInterval(
        context_.presence->CountOnline(now), context_.polls->capacity(),
        context_.config->deferred_polls_per_second, context_.config->poll_max_wait);
    deferral_computed_at_ = now;
  }
  return deferral_interval_;
}

grpc::Status CoordinatorApi::RunStage(
    std::string_view method, const grpc::AuthContext& peer,
    absl::FunctionRef<absl::StatusOr<v1::StageAck>(const Caller&)> handle, v1::StageAck& response) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeClient(peer);
  if (!caller.ok()) return RefuseCall(method, caller.status());
  absl::StatusOr<v1::StageAck> ack = handle(*caller);
  if (!ack.ok()) return RefuseCall(method, ack.status());
  response = *std::move(ack);
  return grpc::Status::OK;
}

grpc::Status CoordinatorApi::AdvertiseKeys(const grpc::AuthContext& peer,
                                           const v1::AdvertiseKeysRequest& request,
                                           v1::StageAck& response) {
  return RunStage(
      "AdvertiseKeys", peer,
      [&](const Caller& caller) {
        return context_.rounds->AdvertiseKeys(caller.id.name, caller.certificate_der, request);
      },
      response);
}

grpc::Status CoordinatorApi::ShareKeys(const grpc::AuthContext& peer,
                                       const v1::ShareKeysRequest& request,
                                       v1::StageAck& response) {
  return RunStage(
      "ShareKeys", peer,
      [&](const Caller& caller) { return context_.rounds->ShareKeys(caller.id.name, request); },
      response);
}

grpc::Status CoordinatorApi::Unmask(const grpc::AuthContext& peer, const v1::UnmaskRequest& request,
                                    v1::StageAck& response) {
  return RunStage(
      "Unmask", peer,
      [&](const Caller& caller) { return context_.rounds->Unmask(caller.id.name, request); },
      response);
}

grpc::Status CoordinatorApi::GetModelManifest(const grpc::AuthContext& peer,
                                              const v1::GetModelManifestRequest& request,
                                              v1::ModelManifest& response) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeClient(peer);
  if (!caller.ok()) return RefuseCall("GetModelManifest", caller.status());
  absl::StatusOr<ModelVersionRecord> record = context_.rounds->Model(request.version());
  if (!record.ok()) return ToGrpc(record.status());
  absl::StatusOr<v1::ModelManifest> manifest = ModelRepository::Manifest(*record);
  if (!manifest.ok()) return ToGrpc(manifest.status());
  response = *std::move(manifest);
  return grpc::Status::OK;
}

grpc::Status CoordinatorApi::DownloadModel(const grpc::AuthContext& peer,
                                           const v1::DownloadModelRequest& request,
                                           absl::FunctionRef<bool(const v1::ModelChunk&)> write,
                                           absl::FunctionRef<bool()> cancelled) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeClient(peer);
  if (!caller.ok()) return RefuseCall("DownloadModel", caller.status());
  // A version's files, or the frozen base's.
  v1::ModelManifest manifest;
  std::filesystem::path directory;
  std::string what;
  if (request.base()) {
    absl::StatusOr<const BaseIdentity*> base = context_.rounds->Base();
    if (!base.ok()) return RefuseCall("DownloadModel", base.status());
    manifest = (*base)->files;
    directory = (*base)->directory;
    what = "the base";
  } else {
    absl::StatusOr<ModelVersionRecord> record = context_.rounds->Model(request.version());
    if (!record.ok()) return ToGrpc(record.status());
    absl::StatusOr<v1::ModelManifest> listed = ModelRepository::Manifest(*record);
    if (!listed.ok()) return ToGrpc(listed.status());
    manifest = *std::move(listed);
    directory = context_.rounds->ModelDirectory(*record);
    what = absl::StrCat("model version ", record->version);
  }
  const v1::ModelFile* file = nullptr;
  for (const v1::ModelFile& candidate : manifest.files()) {
    if (candidate.name() == request.file_name()) file = &candidate;
  }
  if (file == nullptr) {
    return RefuseCall(
        "DownloadModel",
        absl::NotFoundError(absl::StrCat(what, " has no file named '", request.file_name(), "'")));
  }
  if (request.offset() > file->size_bytes()) {
    return RefuseCall("DownloadModel", absl::OutOfRangeError(absl::StrCat(
                                           "offset ", request.offset(), " is past the end of ",
                                           file->name(), " (", file->size_bytes(), " bytes)")));
  }
  std::ifstream in(directory / file->name(), std::ios::binary);
  if (!in) return ToGrpc(absl::InternalError(absl::StrCat("cannot open ", file->name())));
  in.seekg(static_cast<std::streamoff>(request.offset()));
  constexpr uint64_t kMaxChunk = uint64_t{1} << 20;
  const uint64_t chunk_bytes = request.max_chunk_bytes() == 0
                                   ? kMaxChunk
                                   : std::min<uint64_t>(request.max_chunk_bytes(), kMaxChunk);
  uint64_t offset = request.offset();
  v1::ModelChunk chunk;
  chunk.set_file_size(file->size_bytes());
  chunk.set_file_sha256(file->sha256());
  std::string buffer;
  while (offset < file->size_bytes()) {
    if (cancelled()) return grpc::Status::CANCELLED;
    const uint64_t n = std::min(chunk_bytes, file->size_bytes() - offset);
    buffer.resize(n);
    if (!in.read(buffer.data(), static_cast<std::streamsize>(n))) {
      return ToGrpc(
          absl::DataLossError(absl::StrCat(file->name(), " is shorter than its manifest says")));
    }
    chunk.set_offset(offset);
    chunk.set_data(buffer);
    if (!write(chunk)) return grpc::Status::CANCELLED;
    if (context_.metrics != nullptr) context_.metrics->BytesSent(chunk.ByteSizeLong());
    offset += n;
  }
  return grpc::Status::OK;
}

grpc::Status CoordinatorApi::UploadMaskedInput(const grpc::AuthContext& peer,
                                               absl::FunctionRef<bool(v1::MaskedInputChunk&)> read,
                                               v1::StageAck& response) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeClient(peer);
  if (!caller.ok()) return RefuseCall("UploadMaskedInput", caller.status());
  v1::MaskedInputChunk chunk;
  if (!read(chunk)) {
    return RefuseCall("UploadMaskedInput",
                      absl::InvalidArgumentError("the upload carried no chunk"));
  }
  absl::StatusOr<RoundEngine::MaskedUpload> upload =
      context_.rounds->BeginMaskedInput(caller->id.name, chunk.round_id(), chunk.total_values());
  if (!upload.ok()) return RefuseCall("UploadMaskedInput", upload.status());
  const uint64_t max_values = (uint64_t{8} << 20) / static_cast<uint64_t>(upload->bits());
  std::vector<RoundEngine::StagedChunk> staged;
  std::vector<uint64_t> values;
  uint64_t received = 0;
  do {
    if (context_.metrics != nullptr) context_.metrics->BytesReceived(chunk.ByteSizeLong());
    if (upload->already_in_sum()) continue;  // Drained; the acknowledgement says so.
    if (chunk.round_id() != upload->round_id() || chunk.total_values() != upload->total_values()) {
      return RefuseCall(
          "UploadMaskedInput",
          absl::InvalidArgumentError("a masked-input stream changed its round or length"));
    }
    if (chunk.first_value() != received) {
      return RefuseCall("UploadMaskedInput",
                        absl::OutOfRangeError(absl::StrCat(
                            "a masked-input chunk starts at value ", chunk.first_value(), ", not ",
                            received, "; an upload is sent whole, from value 0")));
    }
    if (chunk.value_count() == 0 || chunk.value_count() > max_values ||
        chunk.value_count() > upload->total_values() - received) {
      return RefuseCall(
          "UploadMaskedInput",
          absl::InvalidArgumentError(absl::StrCat(
              "a chunk must carry 1 to ", std::min(max_values, upload->total_values() - received),
              " values, not ", chunk.value_count())));
    }
    // Unpacking checks the packed length and that every value fits in b bits.
    values.resize(chunk.value_count());
    if (absl::Status status =
            secure_agg::UnpackValues(chunk.packed_values(), upload->bits(), values);
        !status.ok()) {
      return RefuseCall("UploadMaskedInput", status);
    }
    received += chunk.value_count();
    staged.push_back({chunk.value_count(), std::move(*chunk.mutable_packed_values())});
  } while (read(chunk));
  if (!upload->already_in_sum() && received != upload->total_values()) {
    // Nothing of it is in the sum; ABORTED tells the client to send it again.
    return RefuseCall("UploadMaskedInput",
                      absl::AbortedError(absl::StrCat("the upload ended after ", received, " of ",
                                                      upload->total_values(),
                                                      " values; send it again from value 0")));
  }
  absl::StatusOr<v1::StageAck> ack =
      context_.rounds->FinishMaskedInput(caller->id.name, *upload, staged);
  if (!ack.ok()) return RefuseCall("UploadMaskedInput", ack.status());
  response = *std::move(ack);
  return grpc::Status::OK;
}

grpc::Status CoordinatorApi::GetRoundStatus(const grpc::AuthContext& peer,
                                            const v1::GetRoundStatusRequest& request,
                                            v1::RoundStatus& response) {
  absl::StatusOr<Caller> caller = context_.authorizer->AuthorizeClient(peer);
  if (!caller.ok()) return RefuseCall("GetRoundStatus", caller.status());
  response = context_.rounds->RoundStatusFor(caller->id.name, request.round_id());
  return grpc::Status::OK;
}

}  // namespace fedmoe::coordinator
