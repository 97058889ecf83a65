#include "proto/privacy_names.h"

#include "config/enum_names.h"

namespace fedmoe {
namespace {

// String literals: the names' data() are NUL-terminated C strings.
constexpr config::EnumName<v1::PrivacySpec::Mode> kModeNames[] = {
    {v1::PrivacySpec::MODE_NONE, "none"},
    {v1::PrivacySpec::MODE_CENTRAL, "central"},
    {v1::PrivacySpec::MODE_DISTRIBUTED, "distributed"}};

constexpr config::EnumName<v1::PrivacySpec::Mechanism> kMechanismNames[] = {
    {v1::PrivacySpec::MECHANISM_GAUSSIAN, "gaussian"},
    {v1::PrivacySpec::MECHANISM_DISCRETE_GAUSSIAN, "discrete_gaussian"},
    {v1::PrivacySpec::MECHANISM_SKELLAM, "skellam"}};

}  // namespace

const char* PrivacyModeName(v1::PrivacySpec::Mode mode) {
  return config::NameOf(kModeNames, mode, "unspecified").data();
}

std::optional<v1::PrivacySpec::Mode> PrivacyModeNamed(std::string_view name) {
  return config::ValueOf(kModeNames, name);
}

const char* MechanismName(v1::PrivacySpec::Mechanism mechanism) {
  return config::NameOf(kMechanismNames, mechanism, "none").data();
}

std::optional<v1::PrivacySpec::Mechanism> MechanismNamed(std::string_view name) {
  return config::ValueOf(kMechanismNames, name);
}

}  // namespace fedmoe
