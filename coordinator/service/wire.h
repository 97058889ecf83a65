// Parsing requests and serializing replies ourselves, for the methods that face clients.
//
// gRPC 1.51 answers a request it cannot parse with a bare INTERNAL or UNIMPLEMENTED and no
// message. The client-facing methods (Enroll, Renew, PollTask, ...) are therefore registered
// as raw methods: they receive the bytes, and a malformed request gets INVALID_ARGUMENT naming
// the message type, its size and what is wrong.
#ifndef FEDMOE_COORDINATOR_SERVICE_WIRE_H_
#define FEDMOE_COORDINATOR_SERVICE_WIRE_H_

#include <google/protobuf/duration.pb.h>
#include <google/protobuf/message.h>
#include <google/protobuf/timestamp.pb.h>
#include <grpcpp/support/byte_buffer.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace fedmoe::coordinator {

// The buffer's bytes, joined.
std::string BufferBytes(const grpc::ByteBuffer& buffer);

absl::Status ParseRequest(const grpc::ByteBuffer& buffer, google::protobuf::Message& request);

absl::Status SerializeReply(const google::protobuf::Message& reply, grpc::ByteBuffer& buffer);

// Times and durations between absl and the wire.
void SetTimestamp(absl::Time time, google::protobuf::Timestamp* out);
absl::Duration FromProto(const google::protobuf::Duration& duration);

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_SERVICE_WIRE_H_
