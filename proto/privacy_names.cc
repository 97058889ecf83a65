#include "proto/privacy_names.h"

namespace fedmoe {

const char* PrivacyModeName(v1::PrivacySpec::Mode mode) {
  switch (mode) {
    case v1::PrivacySpec::MODE_NONE:
      return "none";
    case v1::PrivacySpec::MODE_CENTRAL:
      return "central";
    case v1::PrivacySpec::MODE_DISTRIBUTED:
      return "distributed";
    default:
      return "unspecified";
  }
}

const char* MechanismName(v1::PrivacySpec::Mechanism mechanism) {
  switch (mechanism) {
    case v1::PrivacySpec::MECHANISM_GAUSSIAN:
      return "gaussian";
    case v1::PrivacySpec::MECHANISM_DISCRETE_GAUSSIAN:
      return "discrete_gaussian";
    case v1::PrivacySpec::MECHANISM_SKELLAM:
      return "skellam";
    default:
      return "none";
  }
}

}  // namespace fedmoe
