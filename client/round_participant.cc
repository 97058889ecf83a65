#include "client/round_participant.h"

#include <google/protobuf/util/time_util.h>

#include <algorithm>
#include <functional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "client/grpc_status.h"
#include "client/secagg_wire.h"
#include "logging/log.h"
#include "pki/key_change.h"
#include "secure_agg/shared/packing.h"

namespace fedmoe::client {

using google::protobuf::util::TimeUtil;

grpc::Status CallWithRetries(absl::Time deadline,
                             const std::function<grpc::Status(grpc::ClientContext&)>& call,
                             absl::Duration first_wait) {
  absl::Duration wait = first_wait;
  while (true) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(std::min(deadline, absl::Now() + absl::Minutes(5))));
    grpc::Status status = call(context);
    if (status.ok() || !IsRetryable(status) || absl::Now() + wait >= deadline) return status;
    std::this_thread::sleep_for(absl::ToChronoNanoseconds(wait));
    wait = std::min(wait * 2, absl::Seconds(8));
  }
}

bool IsRetryable(const grpc::Status& status) {
  switch (status.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::ABORTED:
    case grpc::StatusCode::UNKNOWN:
    // HTTP/2 reports a stream reset by the peer (RST_STREAM) as INTERNAL, and so does a
    // coordinator whose storage failed for a moment. Both are worth another try: every stage
    // call is idempotent, and the stage's deadline bounds the tries.
    case grpc::StatusCode::INTERNAL:
      return true;
    default:
      return false;
  }
}

namespace {

struct PeerCertificate {
  pki::Certificate certificate;
  pki::SpiffeId id;
};

// A neighbour's certificate (DER), checked against the federation's CAs as a client's.
absl::StatusOr<PeerCertificate> VerifyPeerCertificate(const pki::TrustBundle& trust,
                                                      uint32_t participant_id,
                                                      const std::string& certificate_der) {
  absl::StatusOr<pki::Certificate> certificate = pki::Certificate::FromDer(certificate_der);
  if (!certificate.ok()) return certificate.status();
  absl::StatusOr<pki::SpiffeId> id = trust.Verify(*certificate, pki::Purpose::kClient);
  if (!id.ok()) {
    return absl::PermissionDeniedError(absl::StrCat("participant ", participant_id,
                                                    "'s certificate is not a federation "
                                                    "client's: ",
                                                    id.status().message()));
  }
  return PeerCertificate{*std::move(certificate), *std::move(id)};
}

}  // namespace

absl::StatusOr<std::unique_ptr<RoundParticipant>> RoundParticipant::Create(
    const v1::JoinRoundTask& task, ParticipantIdentity identity) {
  const v1::SecAggParameters& parameters = task.secagg();
  if (parameters.shamir_field() != v1::SecAggParameters::SHAMIR_FIELD_MERSENNE61 ||
      parameters.prg() != v1::SecAggParameters::PRG_AES128_CTR_HKDF_SHA256) {
    return absl::UnimplementedError("the round asks for a Shamir field or PRG this client lacks");
  }
  std::unique_ptr<RoundParticipant> participant(new RoundParticipant(task, std::move(identity)));
  const secure_agg::RoundSetup setup = RoundSetupOf(task);
  std::vector<uint32_t> neighbors(parameters.neighbors().begin(), parameters.neighbors().end());
  participant->peer_certificates_ = std::make_shared<std::map<uint32_t, std::string>>();
  const pki::PrivateKey* key = participant->identity_.key;
  // The verifier outlives nothing it captures by pointer: the map and CA are shared or copied.
  auto certificates = participant->peer_certificates_;
  pki::TrustBundle trust = participant->identity_.trust;
  secure_agg::SignatureVerifier verify = [certificates, trust](
                                             uint32_t peer, std::string_view message,
                                             std::string_view signature) -> absl::Status {
    auto found = certificates->find(peer);
    if (found == certificates->end()) {
      return absl::PermissionDeniedError(absl::StrCat("no certificate for participant ", peer));
    }
    absl::StatusOr<PeerCertificate> verified = VerifyPeerCertificate(trust, peer, found->second);
    if (!verified.ok()) return verified.status();
    return pki::VerifySignature(verified->certificate.PublicKeyDer(), std::string(message),
                                std::string(signature));
  };
  absl::StatusOr<secure_agg::SecAggClient> client = secure_agg::SecAggClient::Create(
      setup, parameters.participant_id(), std::move(neighbors),
      [key](std::string_view message) { return key->Sign(std::string(message)); },
      std::move(verify));
  if (!client.ok()) return client.status();
  participant->secagg_ = std::make_unique<secure_agg::SecAggClient>(std::move(*client));
  return participant;
}

absl::Time RoundParticipant::Deadline(const google::protobuf::Timestamp& stage_deadline) const {
  return absl::FromUnixMillis(TimeUtil::TimestampToMilliseconds(stage_deadline));
}

absl::Status RoundParticipant::AdvertiseKeys(v1::Federation::StubInterface& stub) {
  absl::StatusOr<secure_agg::AdvertisedKeys> keys = secagg_->AdvertiseKeys();
  if (!keys.ok()) return keys.status();
  v1::AdvertiseKeysRequest request = AdvertiseKeysRequestOf(round_id(), *keys);
  v1::StageAck ack;
  grpc::Status status = CallWithRetries(Deadline(task_.deadlines().advertise_keys()),
                                        [&](grpc::ClientContext& context) {
                                          bytes_sent_ += request.ByteSizeLong();
                                          return stub.AdvertiseKeys(&context, request, &ack);
                                        });
  if (!status.ok()) return FromGrpc(status, "AdvertiseKeys");
  bytes_received_ += ack.ByteSizeLong();
  advertised_ = std::move(request);
  completed_ = v1::ROUND_STAGE_KEYS_ADVERTISED;
  return absl::OkStatus();
}

absl::Status RoundParticipant::ShareKeys(v1::Federation::StubInterface& stub,
                                         const v1::ShareKeysTask& task) {
  for (const v1::AdvertisedKeys& keys : task.neighbor_keys()) {
    (*peer_certificates_)[keys.participant_id()] = keys.certificate_der();
  }
  absl::StatusOr<std::optional<PeerKeyPins>> pins = CheckPeerKeys(task);
  if (!pins.ok()) return pins.status();
  absl::StatusOr<std::vector<secure_agg::SealedShares>> sealed =
      secagg_->ShareKeys(NeighbourKeysOf(task));
  if (!sealed.ok()) return sealed.status();
  // Every neighbour's signature verified: its key is worth remembering.
  if (pins->has_value()) {
    if (absl::Status status = (*pins)->Save(); !status.ok()) return status;
  }
  const v1::ShareKeysRequest request = ShareKeysRequestOf(round_id(), *sealed);
  v1::StageAck ack;
  grpc::Status status =
      CallWithRetries(Deadline(task_.deadlines().share_keys()), [&](grpc::ClientContext& context) {
        bytes_sent_ += request.ByteSizeLong();
        return stub.ShareKeys(&context, request, &ack);
      });
  if (!status.ok()) return FromGrpc(status, "ShareKeys");
  bytes_received_ += ack.ByteSizeLong();
  completed_ = v1::ROUND_STAGE_KEYS_SHARED;
  return absl::OkStatus();
}

absl::StatusOr<std::optional<PeerKeyPins>> RoundParticipant::CheckPeerKeys(
    const v1::ShareKeysTask& task) const {
  if (identity_.peer_keys.empty()) return std::nullopt;
  absl::StatusOr<PeerKeyPins> pins = PeerKeyPins::Load(identity_.peer_keys);
  if (!pins.ok()) return pins.status();
  for (const v1::AdvertisedKeys& keys : task.neighbor_keys()) {
    absl::StatusOr<PeerCertificate> verified =
        VerifyPeerCertificate(identity_.trust, keys.participant_id(), keys.certificate_der());
    if (!verified.ok()) return verified.status();
    const pki::SpiffeId& peer = verified->id;
    std::vector<pki::KeyChange> changes;
    for (const v1::KeyChange& change : keys.key_changes()) {
      changes.push_back(
          {change.old_public_key_der(), change.new_public_key_der(), change.signature()});
    }
    absl::StatusOr<PeerKeyPins::Outcome> outcome =
        pins->Check(peer, verified->certificate.PublicKeyDer(), changes);
    if (!outcome.ok()) return outcome.status();
    if (*outcome != PeerKeyPins::Outcome::kKnown) {
      LogEvent(LogLevel::kInfo,
               *outcome == PeerKeyPins::Outcome::kPinned ? "peer_key_pinned" : "peer_key_changed")
          .Field("round_id", round_id())
          .Field("peer", peer.name)
          .Field("public_key_sha256", pins->pins().at(peer.name));
    }
  }
  return std::optional<PeerKeyPins>(*std::move(pins));
}

absl::Status RoundParticipant::UploadMaskedInput(v1::Federation::StubInterface& stub,
                                                 const v1::MaskedInputTask& task,
                                                 std::vector<uint64_t> encoded) {
  if (encoded.size() != task_.update_spec().layout().encoded_values()) {
    return absl::InvalidArgumentError(absl::StrCat("the encoded update has ", encoded.size(),
                                                   " values; the round expects ",
                                                   task_.update_spec().layout().encoded_values()));
  }
  if (absl::Status status =
          secagg_->ReceiveShares(IncomingSharesOf(task, task_.secagg().participant_id()));
      !status.ok()) {
    return status;
  }
  if (absl::Status status = secagg_->MaskChunk(encoded); !status.ok()) return status;
  masked_ = std::move(encoded);

  bool first_attempt = true;
  grpc::Status status = CallWithRetries(
      Deadline(task_.deadlines().masked_input()), [&](grpc::ClientContext& context) {
        uint64_t next = 0;
        if (!first_attempt) {
          // Ask whether the coordinator took the whole vector before the stream broke.
          v1::GetRoundStatusRequest request;
          request.set_round_id(round_id());
          v1::RoundStatus round_status;
          grpc::ClientContext status_context;
          status_context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
          grpc::Status asked = stub.GetRoundStatus(&status_context, request, &round_status);
          if (!asked.ok()) return asked;
          next = round_status.caller_completed_stage() >= v1::ROUND_STAGE_MASKED_COLLECTED
                     ? masked_.size()
                     : round_status.caller_values_received();
        }
        first_attempt = false;
        return StreamFrom(stub, context, next);
      });
  if (!status.ok()) return FromGrpc(status, "UploadMaskedInput");
  // The coordinator holds the whole vector now; a retry can no longer need it.
  std::vector<uint64_t>().swap(masked_);
  completed_ = v1::ROUND_STAGE_MASKED_COLLECTED;
  return absl::OkStatus();
}

grpc::Status RoundParticipant::StreamFrom(v1::Federation::StubInterface& stub,
                                          grpc::ClientContext& context, uint64_t first_value) {
  // The coordinator already holds the whole vector (an earlier stream's acknowledgement was
  // lost); it keeps nothing of an incomplete one.
  if (first_value >= masked_.size()) return grpc::Status::OK;
  const int bits = static_cast<int>(task_.secagg().ring_bits());
  // At most 1 MiB of packed values, a multiple of 8 so that chunks start on byte boundaries.
  const uint64_t per_chunk = ((uint64_t{8} << 20) / static_cast<uint64_t>(bits)) / 8 * 8;
  v1::StageAck ack;
  std::unique_ptr<grpc::ClientWriterInterface<v1::MaskedInputChunk>> writer =
      stub.UploadMaskedInput(&context, &ack);
  v1::MaskedInputChunk chunk;
  chunk.set_round_id(round_id());
  chunk.set_total_values(masked_.size());
  for (uint64_t offset = first_value; offset < masked_.size(); offset += per_chunk) {
    const uint64_t count = std::min<uint64_t>(per_chunk, masked_.size() - offset);
    chunk.set_first_value(offset);
    chunk.set_value_count(static_cast<uint32_t>(count));
    if (absl::Status packed =
            secure_agg::PackValues(std::span<const uint64_t>(masked_).subspan(offset, count), bits,
                                   *chunk.mutable_packed_values());
        !packed.ok()) {
      context.TryCancel();
      writer->Finish().IgnoreError();
      // A value outside the ring is this client's own fault: no retry mends it.
      return {grpc::StatusCode::INVALID_ARGUMENT, std::string(packed.message())};
    }
    bytes_sent_ += chunk.ByteSizeLong();
    if (!writer->Write(chunk)) break;  // Finish() says why.
  }
  writer->WritesDone();
  grpc::Status status = writer->Finish();
  bytes_received_ += ack.ByteSizeLong();
  if (status.ok() && ack.values_received() != masked_.size()) {
    return {grpc::StatusCode::UNAVAILABLE,
            absl::StrCat("the coordinator holds ", ack.values_received(), " of ", masked_.size(),
                         " values")};
  }
  return status;
}

absl::Status RoundParticipant::Unmask(v1::Federation::StubInterface& stub,
                                      const v1::UnmaskTask& task) {
  absl::StatusOr<secure_agg::RevealedShares> revealed = secagg_->Unmask(UnmaskRequestOf(task));
  if (!revealed.ok()) return revealed.status();
  const v1::UnmaskRequest request = UnmaskRequestOf(round_id(), *revealed);
  v1::StageAck ack;
  grpc::Status status =
      CallWithRetries(Deadline(task_.deadlines().unmask()), [&](grpc::ClientContext& context) {
        bytes_sent_ += request.ByteSizeLong();
        return stub.Unmask(&context, request, &ack);
      });
  if (!status.ok()) return FromGrpc(status, "Unmask");
  bytes_received_ += ack.ByteSizeLong();
  completed_ = v1::ROUND_STAGE_UNMASKED;
  return absl::OkStatus();
}

}  // namespace fedmoe::client
