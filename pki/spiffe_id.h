// Federation identities: spiffe://<federation>/<kind>/<name>, carried as the SAN URI of every
// certificate the federation CA issues. The coordinator reads a caller's identity from its
// verified certificate in this form, never from a request field.
#ifndef FEDMOE_PKI_SPIFFE_ID_H_
#define FEDMOE_PKI_SPIFFE_ID_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace fedmoe::pki {

enum class IdentityKind { kClient, kAdmin, kServer };

struct SpiffeId {
  std::string federation;
  IdentityKind kind = IdentityKind::kClient;
  std::string name;

  std::string ToUri() const;
  static absl::StatusOr<SpiffeId> Parse(std::string_view uri);

  friend bool operator==(const SpiffeId&, const SpiffeId&) = default;
};

std::string_view IdentityKindName(IdentityKind kind);

// Client ids, admin names and federation names: [a-z0-9][a-z0-9._-]{0,62}. Lower case only, so
// that two ids never differ by case alone, and safe in paths, URIs and logs.
absl::Status ValidateName(std::string_view what, std::string_view name);

}  // namespace fedmoe::pki

#endif  // FEDMOE_PKI_SPIFFE_ID_H_
