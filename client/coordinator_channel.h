// The enrolled client's mutual-TLS channel to the coordinator, shared by the daemon and the
// simulated clients of bench/federation: the identity comes from the state directory, and the
// channel's reconnect backoff is bounded by the configured one.
#ifndef FEDMOE_CLIENT_COORDINATOR_CHANNEL_H_
#define FEDMOE_CLIENT_COORDINATOR_CHANNEL_H_

#include <grpcpp/grpcpp.h>

#include <memory>

#include "absl/status/statusor.h"
#include "client/client_config.h"
#include "pki/certificate.h"
#include "pki/private_key.h"

namespace fedmoe::client {

struct CoordinatorChannel {
  std::shared_ptr<grpc::Channel> channel;
  pki::Certificate certificate;
  pki::PrivateKey key;
  pki::Certificate ca;
};

// FailedPrecondition when the certificate in the state directory is not for its key.
// `own_connection` keeps the channel off gRPC's shared subchannel pool, so that many clients
// in one process (the federation load generator) each hold a connection of their own.
absl::StatusOr<CoordinatorChannel> DialCoordinator(const ClientConfig& config,
                                                   bool own_connection = false);

}  // namespace fedmoe::client

#endif  // FEDMOE_CLIENT_COORDINATOR_CHANNEL_H_
