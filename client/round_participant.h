// One client's SecAgg+ conversation in one round (DESIGN §3.3): sign and advertise two X25519
// keys, seal Shamir shares for the neighbours, mask the encoded update and stream it, reveal
// the shares the coordinator needs. The daemon drives it from PollTask's tasks; the federation
// load generator (bench/federation) drives many of them.
//
// Each call is idempotent on the coordinator's side, so a transport failure is retried with
// backoff until the stage's deadline; a broken upload is sent again whole (the coordinator adds
// a masked vector to its sum only once all of it has arrived).
#ifndef FEDMOE_CLIENT_ROUND_PARTICIPANT_H_
#define FEDMOE_CLIENT_ROUND_PARTICIPANT_H_

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/peer_keys.h"
#include "fedmoe/v1/federation.grpc.pb.h"
#include "pki/certificate.h"
#include "pki/private_key.h"
#include "pki/trust_bundle.h"
#include "secure_agg/client/secagg_client.h"

namespace fedmoe::client {

struct ParticipantIdentity {
  // The client's enrolled key: it signs the advertised keys.
  const pki::PrivateKey* key = nullptr;
  // Peers' certificates are checked against these CAs (two during a CA rotation, when peers
  // may hold certificates from either) and their federation before their signatures.
  pki::TrustBundle trust;
  // The peer-keys file (client/peer_keys.h): each neighbour's key must match its pin or reach
  // it through signed key changes. Empty only in simulations, which pin nothing.
  std::filesystem::path peer_keys;
};

class RoundParticipant {
 public:
  static absl::StatusOr<std::unique_ptr<RoundParticipant>> Create(const v1::JoinRoundTask& task,
                                                                  ParticipantIdentity identity);

  uint64_t round_id() const { return task_.round_id(); }
  const v1::JoinRoundTask& task() const { return task_; }
  // The last stage this participant completed (UNSPECIFIED before AdvertiseKeys).
  v1::RoundStage completed() const { return completed_; }
  // Request bytes sent so far (serialized messages), for the bytes-per-round report.
  uint64_t bytes_sent() const { return bytes_sent_; }
  // Response bytes received from the stage calls (acknowledgements).
  uint64_t bytes_received() const { return bytes_received_; }
  // The AdvertiseKeys message this participant sent (its public keys and their signature).
  const v1::AdvertiseKeysRequest& advertised() const { return advertised_; }

  absl::Status AdvertiseKeys(v1::Federation::StubInterface& stub);
  absl::Status ShareKeys(v1::Federation::StubInterface& stub, const v1::ShareKeysTask& task);
  // Masks `encoded` (UpdateLayout.encoded_values ring elements) and streams it.
  absl::Status UploadMaskedInput(v1::Federation::StubInterface& stub,
                                 const v1::MaskedInputTask& task, std::vector<uint64_t> encoded);
  absl::Status Unmask(v1::Federation::StubInterface& stub, const v1::UnmaskTask& task);

 private:
  RoundParticipant(v1::JoinRoundTask task, ParticipantIdentity identity)
      : task_(std::move(task)), identity_(std::move(identity)) {}
  absl::Time Deadline(const google::protobuf::Timestamp& stage_deadline) const;
  // Each neighbour's key against the site's pins (nullopt without a peer-keys file): the pins
  // as they would be after the round, or PermissionDenied naming a peer whose key changed
  // without its old key's word.
  absl::StatusOr<std::optional<PeerKeyPins>> CheckPeerKeys(const v1::ShareKeysTask& task) const;
  // Streams masked_ from `first_value`: 0, or its length when the coordinator has it all.
  grpc::Status StreamFrom(v1::Federation::StubInterface& stub, grpc::ClientContext& context,
                          uint64_t first_value);

  v1::JoinRoundTask task_;
  ParticipantIdentity identity_;
  std::unique_ptr<secure_agg::SecAggClient> secagg_;
  // Neighbours' certificates, by participant id, for verifying their advertised keys.
  std::shared_ptr<std::map<uint32_t, std::string>> peer_certificates_;
  std::vector<uint64_t> masked_;
  v1::RoundStage completed_ = v1::ROUND_STAGE_UNSPECIFIED;
  uint64_t bytes_sent_ = 0;
  uint64_t bytes_received_ = 0;
  v1::AdvertiseKeysRequest advertised_;
};

// Whether a failed stage RPC may be retried (transport trouble, a reset stream, a coordinator
// busy or failing for a moment) or means the client is out of the round (the coordinator
// refused, dropped it, or the stage closed).
bool IsRetryable(const grpc::Status& status);

// Calls `call` with a fresh context until it succeeds, fails for good (not IsRetryable), or
// the next wait would pass `deadline`; waits `first_wait`, then twice as long each time, at
// most 8 s. Each attempt's own deadline is `deadline`, and at most 5 minutes.
grpc::Status CallWithRetries(absl::Time deadline,
                             const std::function<grpc::Status(grpc::ClientContext&)>& call,
                             absl::Duration first_wait = absl::Milliseconds(500));

}  // namespace fedmoe::client

#endif  // FEDMOE_CLIENT_ROUND_PARTICIPANT_H_
