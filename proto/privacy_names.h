// The names configs, reports and logs give the privacy spec's wire enums (federation.proto's
// PrivacySpec): the coordinator writes them into coordinator.yaml and the ledger, and a site's
// privacy_policy lists the modes it accepts by the same names.
#ifndef FEDMOE_PROTO_PRIVACY_NAMES_H_
#define FEDMOE_PROTO_PRIVACY_NAMES_H_

#include <optional>
#include <string_view>

#include "fedmoe/v1/federation.pb.h"

namespace fedmoe {

// none, central, distributed; "unspecified" otherwise.
const char* PrivacyModeName(v1::PrivacySpec::Mode mode);
// The mode of that name; nullopt for any other name ("unspecified" included).
std::optional<v1::PrivacySpec::Mode> PrivacyModeNamed(std::string_view name);
// gaussian, discrete_gaussian, skellam; "none" otherwise.
const char* MechanismName(v1::PrivacySpec::Mechanism mechanism);
// The mechanism of that name; nullopt for any other name.
std::optional<v1::PrivacySpec::Mechanism> MechanismNamed(std::string_view name);

}  // namespace fedmoe

#endif  // FEDMOE_PROTO_PRIVACY_NAMES_H_
