#include "tests/proto/contract_testing.h"

#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/dynamic_message.h>

#include <fstream>

#include "fedmoe/v1/admin.pb.h"
#include "fedmoe/v1/common.pb.h"
#include "fedmoe/v1/enrollment.pb.h"
#include "fedmoe/v1/federation.pb.h"

namespace fedmoe::testing {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

constexpr int kMaxDepth = 4;

void CollectMessages(const Descriptor* descriptor, std::vector<const Descriptor*>& out) {
  out.push_back(descriptor);
  for (int i = 0; i < descriptor->nested_type_count(); ++i) {
    CollectMessages(descriptor->nested_type(i), out);
  }
}

std::string RandomText(std::mt19937_64& random) {
  std::uniform_int_distribution<int> length(1, 24);
  std::uniform_int_distribution<int> letter(0x20, 0x7e);
  std::string text(static_cast<size_t>(length(random)), ' ');
  for (char& c : text) c = static_cast<char>(letter(random));
  // One multi-byte character, so UTF-8 validation is exercised on the way back.
  text += "\xc3\xa9";
  return text;
}

std::string RandomBytes(std::mt19937_64& random) {
  std::uniform_int_distribution<int> length(1, 48);
  std::uniform_int_distribution<int> byte(0, 255);
  std::string bytes(static_cast<size_t>(length(random)), '\0');
  for (char& c : bytes) c = static_cast<char>(byte(random));
  return bytes;
}

const google::protobuf::EnumValueDescriptor* RandomEnumValue(const FieldDescriptor* field,
                                                             std::mt19937_64& random) {
  // Proto3 does not serialize the zero value, so a field set to it would look unset.
  const auto* type = field->enum_type();
  std::uniform_int_distribution<int> index(type->value_count() > 1 ? 1 : 0,
                                           type->value_count() - 1);
  return type->value(index(random));
}

// Sets one value of `field`: the singular value, or one appended element when repeated.
void SetOne(Message& message, const FieldDescriptor* field, std::mt19937_64& random,
            int oneof_choice, int depth) {
  const Reflection* reflection = message.GetReflection();
  const bool repeated = field->is_repeated();
  switch (field->cpp_type()) {
#define FEDMOE_SET_SCALAR(CPPTYPE, Name, value)  \
  case FieldDescriptor::CPPTYPE: {               \
    auto v = (value);                            \
    if (repeated) {                              \
      reflection->Add##Name(&message, field, v); \
    } else {                                     \
      reflection->Set##Name(&message, field, v); \
    }                                            \
    break;                                       \
  }
    FEDMOE_SET_SCALAR(CPPTYPE_INT32, Int32, static_cast<int32_t>(random()))
    FEDMOE_SET_SCALAR(CPPTYPE_INT64, Int64, static_cast<int64_t>(random()))
    FEDMOE_SET_SCALAR(CPPTYPE_UINT32, UInt32, static_cast<uint32_t>(random() | 1))
    FEDMOE_SET_SCALAR(CPPTYPE_UINT64, UInt64, static_cast<uint64_t>(random() | 1))
    FEDMOE_SET_SCALAR(CPPTYPE_DOUBLE, Double,
                      std::uniform_real_distribution<double>(-1e6, 1e6)(random))
    FEDMOE_SET_SCALAR(CPPTYPE_FLOAT, Float,
                      std::uniform_real_distribution<float>(-1e3F, 1e3F)(random))
    FEDMOE_SET_SCALAR(CPPTYPE_BOOL, Bool, true)
    FEDMOE_SET_SCALAR(CPPTYPE_ENUM, Enum, RandomEnumValue(field, random))
#undef FEDMOE_SET_SCALAR
    case FieldDescriptor::CPPTYPE_STRING: {
      std::string value =
          field->type() == FieldDescriptor::TYPE_STRING ? RandomText(random) : RandomBytes(random);
      if (repeated) {
        reflection->AddString(&message, field, std::move(value));
      } else {
        reflection->SetString(&message, field, std::move(value));
      }
      break;
    }
    case FieldDescriptor::CPPTYPE_MESSAGE: {
      Message* child = repeated ? reflection->AddMessage(&message, field)
                                : reflection->MutableMessage(&message, field);
      FillMessage(*child, random, oneof_choice, depth + 1);
      break;
    }
  }
}

}  // namespace

const std::vector<std::string>& ContractFiles() {
  static const auto* const files =
      new std::vector<std::string>{"fedmoe/v1/common.proto", "fedmoe/v1/enrollment.proto",
                                   "fedmoe/v1/federation.proto", "fedmoe/v1/admin.proto"};
  return *files;
}

std::vector<const Descriptor*> ContractMessages() {
  // Touching one type per file links and registers each generated file.
  const google::protobuf::FileDescriptor* files[] = {
      fedmoe::v1::ModelManifest::descriptor()->file(),
      fedmoe::v1::EnrollRequest::descriptor()->file(),
      fedmoe::v1::PollTaskRequest::descriptor()->file(),
      fedmoe::v1::GetStatusRequest::descriptor()->file()};
  std::vector<const Descriptor*> messages;
  for (const auto* file : files) {
    for (int i = 0; i < file->message_type_count(); ++i) {
      CollectMessages(file->message_type(i), messages);
    }
  }
  return messages;
}

absl::StatusOr<std::unique_ptr<google::protobuf::DescriptorPool>> PoolWithSourceInfo() {
  std::ifstream in(FEDMOE_PROTO_DESCRIPTOR_SET, std::ios::binary);
  google::protobuf::FileDescriptorSet set;
  if (!in || !set.ParseFromIstream(&in)) {
    return absl::NotFoundError("cannot read descriptor set " FEDMOE_PROTO_DESCRIPTOR_SET);
  }
  auto pool = std::make_unique<google::protobuf::DescriptorPool>();
  for (const auto& file : set.file()) {
    if (pool->BuildFile(file) == nullptr) {
      return absl::InvalidArgumentError("cannot build " + file.name() + " from the descriptor set");
    }
  }
  return pool;
}

void FillMessage(Message& message, std::mt19937_64& random, int oneof_choice, int depth) {
  const Descriptor* descriptor = message.GetDescriptor();
  std::uniform_int_distribution<int> repeat_count(1, 3);
  for (int i = 0; i < descriptor->field_count(); ++i) {
    const FieldDescriptor* field = descriptor->field(i);
    if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE && depth >= kMaxDepth) continue;
    if (const auto* oneof = field->real_containing_oneof(); oneof != nullptr) {
      if (oneof->field(oneof_choice % oneof->field_count()) != field) continue;
    }
    const int count = field->is_repeated() ? repeat_count(random) : 1;
    for (int n = 0; n < count; ++n) SetOne(message, field, random, oneof_choice, depth);
  }
}

std::unique_ptr<Message> NewMessage(const Descriptor* descriptor) {
  const Message* prototype =
      google::protobuf::MessageFactory::generated_factory()->GetPrototype(descriptor);
  return std::unique_ptr<Message>(prototype->New());
}

}  // namespace fedmoe::testing
