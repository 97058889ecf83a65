#include "coordinator/service/wire.h"

#include <google/protobuf/util/time_util.h>

#include <vector>

namespace fedmoe::coordinator {

std::string BufferBytes(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (!buffer.Dump(&slices).ok()) return bytes;
  bytes.reserve(buffer.Length());
  for (const grpc::Slice& slice : slices) {
    bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return bytes;
}

absl::Status ParseRequest(const grpc::ByteBuffer& buffer, google::protobuf::Message& request) {
  const std::string bytes = BufferBytes(buffer);
  if (!request.ParseFromString(bytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed ", request.GetTypeName(), ": ", bytes.size(),
                     " bytes that are not a valid protobuf encoding of it (truncated, wrong "
                     "wire type, or invalid UTF-8 in a string field)"));
  }
  return absl::OkStatus();
}

absl::Status SerializeReply(const google::protobuf::Message& reply, grpc::ByteBuffer& buffer) {
  std::string bytes;
  if (!reply.SerializeToString(&bytes)) {
    return absl::InternalError(absl::StrCat("cannot serialize ", reply.GetTypeName()));
  }
  grpc::Slice slice(bytes);
  buffer = grpc::ByteBuffer(&slice, 1);
  return absl::OkStatus();
}

void SetTimestamp(absl::Time time, google::protobuf::Timestamp* out) {
  *out = google::protobuf::util::TimeUtil::MillisecondsToTimestamp(absl::ToUnixMillis(time));
}

absl::Duration FromProto(const google::protobuf::Duration& duration) {
  return absl::Seconds(duration.seconds()) + absl::Nanoseconds(duration.nanos());
}

}  // namespace fedmoe::coordinator
