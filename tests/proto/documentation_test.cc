// The contract documents itself, and no request names its caller.
//
// DESIGN §2: the coordinator takes a caller's identity from its verified certificate, never
// from a request field. A field that looks like a caller identity in a request is how that rule
// gets broken by accident, so the requests are checked for one.
#include <gtest/gtest.h>

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tests/proto/contract_testing.h"

namespace fedmoe::testing {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::SourceLocation;

template <typename T>
bool HasComment(const T* element) {
  SourceLocation location;
  if (!element->GetSourceLocation(&location)) return false;
  return !location.leading_comments.empty() || !location.trailing_comments.empty();
}

// An enum's comment documents its values: they are named states, described where the enum is.
void CollectUndocumented(const google::protobuf::EnumDescriptor* type,
                         std::vector<std::string>& out) {
  if (!HasComment(type)) out.push_back(type->full_name());
}

void CollectUndocumented(const Descriptor* type, std::vector<std::string>& out) {
  if (!HasComment(type)) out.push_back(type->full_name());
  for (int i = 0; i < type->field_count(); ++i) {
    if (!HasComment(type->field(i))) out.push_back(type->field(i)->full_name());
  }
  for (int i = 0; i < type->nested_type_count(); ++i) {
    CollectUndocumented(type->nested_type(i), out);
  }
  for (int i = 0; i < type->enum_type_count(); ++i) CollectUndocumented(type->enum_type(i), out);
}

TEST(DocumentationTest, EveryElementOfTheContractIsDocumented) {
  auto pool = PoolWithSourceInfo();
  ASSERT_TRUE(pool.ok()) << pool.status();
  std::vector<std::string> undocumented;
  for (const std::string& name : ContractFiles()) {
    const auto* file = (*pool)->FindFileByName(name);
    ASSERT_NE(file, nullptr) << name;
    for (int i = 0; i < file->message_type_count(); ++i) {
      CollectUndocumented(file->message_type(i), undocumented);
    }
    for (int i = 0; i < file->enum_type_count(); ++i) {
      CollectUndocumented(file->enum_type(i), undocumented);
    }
    for (int i = 0; i < file->service_count(); ++i) {
      const auto* service = file->service(i);
      if (!HasComment(service)) undocumented.push_back(service->full_name());
      for (int m = 0; m < service->method_count(); ++m) {
        if (!HasComment(service->method(m))) {
          undocumented.push_back(service->method(m)->full_name());
        }
      }
    }
  }
  EXPECT_TRUE(undocumented.empty()) << "undocumented:\n  " << absl::StrJoin(undocumented, "\n  ");
}

// Field names that would carry the caller's own identity.
const std::set<std::string>& CallerIdentityNames() {
  static const auto* const names = new std::set<std::string>{
      "client_id", "caller",          "caller_id", "identity",
      "spiffe_id", "client_name",     "admin",     "admin_name",
      "operator",  "certificate_der", "sender",    "sender_participant_id"};
  return *names;
}

void CollectIdentityFields(const Descriptor* type, std::set<const Descriptor*>& seen,
                           std::vector<std::string>& out) {
  if (!seen.insert(type).second) return;
  for (int i = 0; i < type->field_count(); ++i) {
    const auto* field = type->field(i);
    if (CallerIdentityNames().contains(field->name())) out.push_back(field->full_name());
    if (field->message_type() != nullptr) CollectIdentityFields(field->message_type(), seen, out);
  }
}

TEST(DocumentationTest, NoMtlsRequestCarriesTheCallersIdentity) {
  auto pool = PoolWithSourceInfo();
  ASSERT_TRUE(pool.ok()) << pool.status();
  // Admin requests name the client an operator acts on (client_id), which is a target, not the
  // caller; the admin's own identity never appears.
  const std::map<std::string, std::set<std::string>> allowed = {{"fedmoe.v1.Admin", {"client_id"}}};
  std::vector<std::string> offending;
  for (const char* name : {"fedmoe.v1.Federation", "fedmoe.v1.Certificates", "fedmoe.v1.Admin",
                           "fedmoe.v1.Enrollment"}) {
    const auto* service = (*pool)->FindServiceByName(name);
    ASSERT_NE(service, nullptr) << name;
    for (int m = 0; m < service->method_count(); ++m) {
      std::set<const Descriptor*> seen;
      std::vector<std::string> found;
      CollectIdentityFields(service->method(m)->input_type(), seen, found);
      for (const std::string& field : found) {
        const auto it = allowed.find(name);
        const std::string short_name = field.substr(field.rfind('.') + 1);
        if (it != allowed.end() && it->second.contains(short_name)) continue;
        offending.push_back(absl::StrCat(service->method(m)->full_name(), ": ", field));
      }
    }
  }
  EXPECT_TRUE(offending.empty()) << absl::StrJoin(offending, "\n");
}

}  // namespace
}  // namespace fedmoe::testing
