#include "pki/spiffe_id.h"

#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "config/enum_names.h"

namespace fedmoe::pki {
namespace {

constexpr std::string_view kScheme = "spiffe://";
constexpr size_t kMaxNameLength = 63;

bool IsNameChar(char c, bool first) {
  const bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
  return alnum || (!first && (c == '.' || c == '_' || c == '-'));
}

constexpr config::EnumName<IdentityKind> kIdentityKindNames[] = {{IdentityKind::kClient, "client"},
                                                                 {IdentityKind::kAdmin, "admin"},
                                                                 {IdentityKind::kServer, "server"}};

}  // namespace

std::string_view IdentityKindName(IdentityKind kind) {
  return config::NameOf(kIdentityKindNames, kind, "unknown");
}

absl::Status ValidateName(std::string_view what, std::string_view name) {
  const auto invalid = [&](std::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(what), " '", std::string(name), "' ", std::string(why)));
  };
  if (name.empty()) return invalid("is empty");
  if (name.size() > kMaxNameLength) return invalid("is longer than 63 characters");
  for (size_t i = 0; i < name.size(); ++i) {
    if (!IsNameChar(name[i], i == 0)) {
      return invalid(
          "must be lower-case letters, digits, '.', '_' or '-', starting with a letter or digit");
    }
  }
  return absl::OkStatus();
}

std::string SpiffeId::ToUri() const {
  return absl::StrCat(std::string(kScheme), federation, "/", std::string(IdentityKindName(kind)),
                      "/", name);
}

absl::StatusOr<SpiffeId> SpiffeId::Parse(std::string_view uri) {
  const auto invalid = [&](std::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("SPIFFE ID '", std::string(uri), "' ", std::string(why)));
  };
  if (uri.substr(0, kScheme.size()) != kScheme) return invalid("does not start with spiffe://");
  const std::vector<std::string> parts =
      absl::StrSplit(std::string(uri.substr(kScheme.size())), '/');
  if (parts.size() != 3) return invalid("is not spiffe://<federation>/<kind>/<name>");
  SpiffeId id;
  id.federation = parts[0];
  id.name = parts[2];
  const std::optional<IdentityKind> kind = config::ValueOf(kIdentityKindNames, parts[1]);
  if (!kind.has_value()) return invalid("has an unknown kind (expected client, admin or server)");
  id.kind = *kind;
  if (absl::Status status = ValidateName("federation", id.federation); !status.ok()) return status;
  if (absl::Status status = ValidateName("name", id.name); !status.ok()) return status;
  return id;
}

}  // namespace fedmoe::pki
