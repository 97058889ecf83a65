// The enrolled client's mutual-TLS channel to the coordinator, shared by the daemon and the
// simulated clients of bench/federation: the identity comes from the state directory, and the
// channel's reconnect backoff is bounded by the configured one.
#ifndef FEDMOE_CLIENT_COORDINATOR_CHANNEL_H_
#define FEDMOE_CLIENT_COORDINATOR_CHANNEL_H_

#include <google/protobuf/repeated_ptr_field.h>
#include <grpcpp/grpcpp.h>

#include <memory>
#include <optional>
#include <random>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/client_config.h"
#include "fedmoe/v1/federation.pb.h"
#include "pki/certificate.h"
#include "pki/private_key.h"
#include "pki/trust_bundle.h"

namespace fedmoe::client {

struct CoordinatorChannel {
  std::shared_ptr<grpc::Channel> channel;
  pki::Certificate certificate;
  pki::PrivateKey key;
  // ca.pem: the CAs this client trusts for the coordinator and its peers.
  pki::TrustBundle trust;
};

// FailedPrecondition when the certificate in the state directory is not for its key.
// `own_connection` keeps the channel off gRPC's shared subchannel pool, so that many clients
// in one process (the federation load generator) each hold a connection of their own.
absl::StatusOr<CoordinatorChannel> DialCoordinator(const ClientConfig& config,
                                                   bool own_connection = false);

// The most CAs a coordinator may ask a client to trust at once (a rotation needs two).
inline constexpr int kMaxTrustedCas = 4;

// The trust bundle a coordinator sent with the certificate it issued (EnrollResponse and
// RenewCertificateResponse): nullopt when it sent none, as a coordinator from before CA
// rotation does. InvalidArgument for too many or malformed certificates or a CA of another
// federation; PermissionDenied when `issued` is not a client certificate under the bundle.
absl::StatusOr<std::optional<pki::TrustBundle>> ReceivedTrustBundle(
    const google::protobuf::RepeatedPtrField<std::string>& ders, const pki::Certificate& issued,
    const std::string& federation);

// How long to wait before the next poll after an Idle answer: zero after a full long poll;
// after a poll the coordinator had no room to hold, its retry_after with ±50% jitter, so that
// clients told the same thing at once do not return together. Capped at 10 minutes, the
// longest poll a coordinator may configure, so that no answer parks a client for good.
absl::Duration NextPollDelay(const v1::Idle& idle, std::mt19937_64& jitter);

}  // namespace fedmoe::client

#endif  // FEDMOE_CLIENT_COORDINATOR_CHANNEL_H_
