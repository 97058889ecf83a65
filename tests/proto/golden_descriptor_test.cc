// The published shape of the contract: every field's number, type and label, every enum
// value's number and every RPC's signature, compared with tests/proto/wire_contract.golden.
//
// A renumbered, retyped or removed field fails with a "changed" or "removed" line: that breaks
// peers already deployed. An added one fails with an "added" line until the golden file records
// it, so that every change to the wire is a reviewed change to that file. To record additions:
//   FEDMOE_UPDATE_GOLDEN=1 build/bin/wire_contract_test --gtest_filter='Golden*'
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "tests/proto/contract_testing.h"

namespace fedmoe::testing {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::EnumDescriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::FileDescriptor;

// Key → the rest of the line. The key names an element; the rest is what must not change.
using Shape = std::map<std::string, std::string>;

std::string FieldType(const FieldDescriptor* field) {
  if (field->message_type() != nullptr) return field->message_type()->full_name();
  if (field->enum_type() != nullptr) return field->enum_type()->full_name();
  return field->type_name();
}

void AddEnum(const EnumDescriptor* type, Shape& shape) {
  for (int i = 0; i < type->value_count(); ++i) {
    shape[absl::StrCat("enum ", type->full_name(), " value ", type->value(i)->name())] =
        absl::StrCat("= ", type->value(i)->number());
  }
}

void AddMessage(const Descriptor* type, Shape& shape) {
  for (int i = 0; i < type->field_count(); ++i) {
    const FieldDescriptor* field = type->field(i);
    std::string rest = absl::StrCat("= ", field->number(), " ",
                                    field->is_repeated() ? "repeated " : "", FieldType(field));
    if (const auto* oneof = field->real_containing_oneof(); oneof != nullptr) {
      absl::StrAppend(&rest, " oneof ", oneof->name());
    }
    if (field->has_optional_keyword()) absl::StrAppend(&rest, " optional");
    shape[absl::StrCat("message ", type->full_name(), " field ", field->name())] = rest;
  }
  for (int i = 0; i < type->reserved_range_count(); ++i) {
    const auto* range = type->reserved_range(i);
    shape[absl::StrCat("message ", type->full_name(), " reserved ", range->start)] =
        absl::StrCat("to ", range->end - 1);
  }
  for (int i = 0; i < type->nested_type_count(); ++i) AddMessage(type->nested_type(i), shape);
  for (int i = 0; i < type->enum_type_count(); ++i) AddEnum(type->enum_type(i), shape);
}

Shape CurrentShape() {
  Shape shape;
  std::set<const FileDescriptor*> files;
  for (const Descriptor* message : ContractMessages()) files.insert(message->file());
  for (const FileDescriptor* file : files) {
    for (int i = 0; i < file->message_type_count(); ++i) AddMessage(file->message_type(i), shape);
    for (int i = 0; i < file->enum_type_count(); ++i) AddEnum(file->enum_type(i), shape);
    for (int i = 0; i < file->service_count(); ++i) {
      const auto* service = file->service(i);
      for (int m = 0; m < service->method_count(); ++m) {
        const auto* method = service->method(m);
        shape[absl::StrCat("service ", service->full_name(), " rpc ", method->name())] =
            absl::StrCat("(", method->client_streaming() ? "stream " : "",
                         method->input_type()->full_name(), ") returns (",
                         method->server_streaming() ? "stream " : "",
                         method->output_type()->full_name(), ")");
      }
    }
  }
  return shape;
}

constexpr char kSeparator[] = " | ";

Shape ReadGolden(const std::string& path) {
  Shape shape;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    const size_t split = line.find(kSeparator);
    if (split == std::string::npos) continue;
    shape[line.substr(0, split)] = line.substr(split + sizeof(kSeparator) - 1);
  }
  return shape;
}

void WriteGolden(const std::string& path, const Shape& shape) {
  std::ofstream out(path);
  out << "# The published shape of fedmoe.v1. Written by golden_descriptor_test.cc; see there.\n";
  for (const auto& [key, rest] : shape) out << key << kSeparator << rest << "\n";
}

const std::string kGoldenPath = FEDMOE_SOURCE_DIR "/tests/proto/wire_contract.golden";

// What breaks between the recorded and the current shape, one line per difference; empty when
// they agree.
std::string Differences(const Shape& golden, const Shape& current) {
  std::ostringstream problems;
  for (const auto& [key, rest] : golden) {
    const auto it = current.find(key);
    if (it == current.end()) {
      problems << "removed (breaks deployed peers; reserve the number instead): " << key << "\n";
    } else if (it->second != rest) {
      problems << "changed (breaks deployed peers): " << key << " was '" << rest << "', now '"
               << it->second << "'\n";
    }
  }
  for (const auto& [key, rest] : current) {
    if (!golden.contains(key)) {
      problems << "added (record it with FEDMOE_UPDATE_GOLDEN=1): " << key << " " << rest << "\n";
    }
  }
  return problems.str();
}

TEST(GoldenDescriptorTest, MatchesThePublishedContract) {
  const Shape current = CurrentShape();
  if (const char* update = std::getenv("FEDMOE_UPDATE_GOLDEN"); update && *update == '1') {
    WriteGolden(kGoldenPath, current);
    GTEST_SKIP() << "wrote " << kGoldenPath;
  }
  const Shape golden = ReadGolden(kGoldenPath);
  ASSERT_FALSE(golden.empty()) << "cannot read " << kGoldenPath;
  const std::string differences = Differences(golden, current);
  EXPECT_TRUE(differences.empty()) << differences;
}

TEST(GoldenDescriptorTest, ReportsARenumberedRetypedOrRemovedField) {
  const Shape golden = CurrentShape();
  const std::string round_id = "message fedmoe.v1.MaskedInputChunk field round_id";
  ASSERT_EQ(golden.at(round_id), "= 1 uint64");

  Shape renumbered = golden;
  renumbered[round_id] = "= 5 uint64";
  EXPECT_NE(Differences(golden, renumbered).find("changed (breaks deployed peers): " + round_id),
            std::string::npos);

  Shape retyped = golden;
  retyped[round_id] = "= 1 uint32";
  EXPECT_NE(Differences(golden, retyped).find("changed"), std::string::npos);

  Shape removed = golden;
  removed.erase(round_id);
  EXPECT_NE(Differences(golden, removed).find("removed"), std::string::npos);

  EXPECT_EQ(Differences(golden, golden), "");
}

}  // namespace
}  // namespace fedmoe::testing
