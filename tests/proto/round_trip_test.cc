// Every message of the contract survives serialize → parse unchanged, with every field set and
// with each member of each oneof in turn.
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include <algorithm>

#include "tests/proto/contract_testing.h"

namespace fedmoe::testing {
namespace {

using google::protobuf::Descriptor;

class RoundTripTest : public ::testing::TestWithParam<const Descriptor*> {};

int LargestOneof(const Descriptor* descriptor) {
  int largest = 1;
  for (int i = 0; i < descriptor->real_oneof_decl_count(); ++i) {
    largest = std::max(largest, descriptor->oneof_decl(i)->field_count());
  }
  return largest;
}

TEST_P(RoundTripTest, EveryFieldSurvivesSerializeAndParse) {
  const Descriptor* descriptor = GetParam();
  for (int oneof_choice = 0; oneof_choice < LargestOneof(descriptor); ++oneof_choice) {
    for (uint64_t seed = 1; seed <= 3; ++seed) {
      SCOPED_TRACE(::testing::Message() << "oneof choice " << oneof_choice << ", seed " << seed);
      std::mt19937_64 random(seed);
      auto original = NewMessage(descriptor);
      FillMessage(*original, random, oneof_choice);

      std::vector<const google::protobuf::FieldDescriptor*> set_fields;
      original->GetReflection()->ListFields(*original, &set_fields);
      const int expected_set = descriptor->field_count() - [&] {
        int unset_oneof_members = 0;
        for (int i = 0; i < descriptor->real_oneof_decl_count(); ++i) {
          unset_oneof_members += descriptor->oneof_decl(i)->field_count() - 1;
        }
        return unset_oneof_members;
      }();
      ASSERT_EQ(static_cast<int>(set_fields.size()), expected_set)
          << "the filler left fields unset: " << original->DebugString();

      std::string bytes;
      ASSERT_TRUE(original->SerializeToString(&bytes));
      auto parsed = NewMessage(descriptor);
      ASSERT_TRUE(parsed->ParseFromString(bytes));
      std::string differences;
      google::protobuf::util::MessageDifferencer differencer;
      differencer.ReportDifferencesToString(&differences);
      EXPECT_TRUE(differencer.Compare(*original, *parsed)) << differences;
    }
  }
}

std::string MessageName(const ::testing::TestParamInfo<const Descriptor*>& info) {
  std::string name = info.param->full_name();
  std::replace(name.begin(), name.end(), '.', '_');
  return name;
}

INSTANTIATE_TEST_SUITE_P(Contract, RoundTripTest, ::testing::ValuesIn(ContractMessages()),
                         MessageName);

TEST(ContractTest, CoversEveryFile) {
  std::set<std::string> files;
  for (const Descriptor* descriptor : ContractMessages()) files.insert(descriptor->file()->name());
  EXPECT_EQ(files, std::set<std::string>(ContractFiles().begin(), ContractFiles().end()));
}

}  // namespace
}  // namespace fedmoe::testing
