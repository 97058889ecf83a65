// The client's gRPC calls report failures as absl::Status, keeping gRPC's code and prefixing
// what the client was doing.
#ifndef FEDMOE_CLIENT_GRPC_STATUS_H_
#define FEDMOE_CLIENT_GRPC_STATUS_H_

#include <grpcpp/grpcpp.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace fedmoe::client {

inline absl::Status FromGrpc(const grpc::Status& status, const std::string& doing) {
  if (status.ok()) return absl::OkStatus();
  return {static_cast<absl::StatusCode>(status.error_code()),
          absl::StrCat(doing, ": ", status.error_message())};
}

}  // namespace fedmoe::client

#endif  // FEDMOE_CLIENT_GRPC_STATUS_H_
