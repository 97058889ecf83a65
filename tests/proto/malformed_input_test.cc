// Bytes that are not a whole, well-formed message are refused by the parse.
//
// Protobuf has no end marker, so a message cut exactly between two fields is a valid, shorter
// message. What must hold is: a cut inside a field is refused, and a cut that parses is exactly
// the fields before it (re-serializing it gives back the prefix). The transport (gRPC's length
// prefix) catches the field-boundary cut.
#include <gtest/gtest.h>

#include <algorithm>

#include "fedmoe/v1/enrollment.pb.h"
#include "fedmoe/v1/federation.pb.h"
#include "tests/proto/contract_testing.h"

namespace fedmoe::testing {
namespace {

using google::protobuf::Descriptor;

class TruncationTest : public ::testing::TestWithParam<const Descriptor*> {};

TEST_P(TruncationTest, CutsInsideAFieldAreRefused) {
  std::mt19937_64 random(7);
  auto original = NewMessage(GetParam());
  FillMessage(*original, random, /*oneof_choice=*/0);
  std::string bytes;
  ASSERT_TRUE(original->SerializeToString(&bytes));
  ASSERT_FALSE(bytes.empty());

  auto parsed = NewMessage(GetParam());
  EXPECT_FALSE(parsed->ParseFromString(bytes.substr(0, bytes.size() - 1)))
      << "dropping the last byte leaves a partial field";

  int refused = 0;
  for (size_t cut = 0; cut < bytes.size(); ++cut) {
    const std::string prefix = bytes.substr(0, cut);
    parsed->Clear();
    if (!parsed->ParseFromString(prefix)) {
      ++refused;
      continue;
    }
    std::string again;
    ASSERT_TRUE(parsed->SerializeToString(&again));
    EXPECT_EQ(again, prefix) << "a cut at byte " << cut << " parsed into something else";
  }
  EXPECT_GT(refused, 0);
}

std::string MessageName(const ::testing::TestParamInfo<const Descriptor*>& info) {
  std::string name = info.param->full_name();
  std::replace(name.begin(), name.end(), '.', '_');
  return name;
}

// Messages without fields serialize to nothing and have nothing to cut.
std::vector<const Descriptor*> MessagesWithFields() {
  std::vector<const Descriptor*> out;
  for (const Descriptor* descriptor : ContractMessages()) {
    if (descriptor->field_count() > 0) out.push_back(descriptor);
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Contract, TruncationTest, ::testing::ValuesIn(MessagesWithFields()),
                         MessageName);

std::string Bytes(std::initializer_list<int> values) {
  std::string out;
  for (int v : values) out.push_back(static_cast<char>(v));
  return out;
}

TEST(MalformedBytesTest, StructuralGarbageIsRefused) {
  const struct {
    const char* what;
    std::string bytes;
  } cases[] = {
      {"field number 0", Bytes({0x00, 0x01})},
      {"wire type 6", Bytes({0x0e, 0x01})},
      {"wire type 7", Bytes({0x0f, 0x01})},
      {"length past the end", Bytes({0x0a, 0x05, 'a', 'b'})},
      {"unterminated varint", Bytes({0x08, 0xff, 0xff, 0xff})},
      {"varint longer than 10 bytes",
       Bytes({0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})},
      {"end-group without start-group", Bytes({0x0c})},
      {"tag without value", Bytes({0x10})},
  };
  for (const auto& c : cases) {
    v1::MaskedInputChunk chunk;
    EXPECT_FALSE(chunk.ParseFromString(c.bytes)) << c.what;
    v1::EnrollRequest enroll;
    EXPECT_FALSE(enroll.ParseFromString(c.bytes)) << c.what;
  }
}

TEST(MalformedBytesTest, InvalidUtf8InAStringFieldIsRefused) {
  // EnrollRequest.token (field 1, string) holding a lone continuation byte.
  v1::EnrollRequest enroll;
  EXPECT_FALSE(enroll.ParseFromString(Bytes({0x0a, 0x02, 'a', 0x80})));
  // The same bytes in a bytes field are fine: EnrollRequest.csr_der is field 2.
  EXPECT_TRUE(enroll.ParseFromString(Bytes({0x12, 0x02, 'a', 0x80})));
  EXPECT_EQ(enroll.csr_der(), Bytes({'a', 0x80}));
}

TEST(MalformedBytesTest, RandomBytesNeverCrashTheParser) {
  // Run under ASan/UBSan (tests/run.sh --sanitize) this is a small fuzz pass over every type.
  std::mt19937_64 random(11);
  std::uniform_int_distribution<int> length(1, 64);
  std::uniform_int_distribution<int> byte(0, 255);
  int refused = 0;
  int total = 0;
  for (const Descriptor* descriptor : ContractMessages()) {
    auto message = NewMessage(descriptor);
    for (int i = 0; i < 500; ++i) {
      std::string bytes(static_cast<size_t>(length(random)), '\0');
      for (char& c : bytes) c = static_cast<char>(byte(random));
      message->Clear();
      refused += message->ParseFromString(bytes) ? 0 : 1;
      ++total;
    }
  }
  // Random bytes almost never form a valid message; most must be refused.
  EXPECT_GT(refused, total * 9 / 10);
}

}  // namespace
}  // namespace fedmoe::testing
