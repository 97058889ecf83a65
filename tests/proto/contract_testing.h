// Helpers shared by the wire-contract tests: every message type of fedmoe.v1, the descriptor
// set that keeps the .proto comments, and a reflection-driven filler that sets every field.
#ifndef FEDMOE_TESTS_PROTO_CONTRACT_TESTING_H_
#define FEDMOE_TESTS_PROTO_CONTRACT_TESTING_H_

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace fedmoe::testing {

// The .proto files of the contract, as protoc sees them.
const std::vector<std::string>& ContractFiles();

// Every message type declared in the contract, nested ones included, from the generated pool
// (what the binaries speak).
std::vector<const google::protobuf::Descriptor*> ContractMessages();

// A pool built from the descriptor set that protoc wrote with --include_source_info, so that
// GetSourceLocation() returns the comments.
absl::StatusOr<std::unique_ptr<google::protobuf::DescriptorPool>> PoolWithSourceInfo();

// Sets every field of `message` to a random valid value: repeated fields get 1–3 elements,
// nested messages are filled down to a depth of 4, and of each oneof exactly the member
// `oneof_choice` (modulo the oneof's size) is set.
void FillMessage(google::protobuf::Message& message, std::mt19937_64& random, int oneof_choice,
                 int depth = 0);

// An instance of the generated class for `descriptor`.
std::unique_ptr<google::protobuf::Message> NewMessage(
    const google::protobuf::Descriptor* descriptor);

}  // namespace fedmoe::testing

#endif  // FEDMOE_TESTS_PROTO_CONTRACT_TESTING_H_
