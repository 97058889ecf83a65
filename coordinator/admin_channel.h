// The operator's mutual-TLS channel to a running coordinator, authenticated with the admin
// certificate that `init` wrote into the state directory. Used by the admin commands and by
// bench/federation, which enrolls its simulated fleet through it.
#ifndef FEDMOE_COORDINATOR_ADMIN_CHANNEL_H_
#define FEDMOE_COORDINATOR_ADMIN_CHANNEL_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "coordinator/config.h"
#include "fedmoe/v1/admin.grpc.pb.h"

namespace fedmoe::coordinator {

// `address` defaults to config.listen; a wildcard bind is reached through loopback.
absl::StatusOr<std::unique_ptr<v1::Admin::Stub>> DialAdmin(const CoordinatorConfig& config,
                                                           std::string address = "");

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_ADMIN_CHANNEL_H_
