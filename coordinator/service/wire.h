// Parsing requests and serializing replies ourselves, for the methods that face clients.
//
// gRPC 1.51 answers a request it cannot parse with a bare INTERNAL or UNIMPLEMENTED and no
// message. The client-facing methods (Enroll, Renew, PollTask, ...) are therefore registered
// as raw methods: they receive the bytes, and a malformed request gets INVALID_ARGUMENT naming
// the message type, its size and what is wrong.
#ifndef FEDMOE_COORDINATOR_SERVICE_WIRE_H_
#define FEDMOE_COORDINATOR_SERVICE_WIRE_H_

#include <google/protobuf/message.h>
#include <grpcpp/support/byte_buffer.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace fedmoe::coordinator {

// The buffer's bytes, joined.
std::string BufferBytes(const grpc::ByteBuffer& buffer);

absl::Status ParseRequest(const grpc::ByteBuffer& buffer, google::protobuf::Message& request);

absl::Status SerializeReply(const google::protobuf::Message& reply, grpc::ByteBuffer& buffer);

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_SERVICE_WIRE_H_
