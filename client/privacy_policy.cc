#include "client/privacy_policy.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "logging/log.h"
#include "proto/privacy_names.h"

namespace fedmoe::client {
namespace {

absl::Status Refuse(std::string why) {
  return absl::FailedPreconditionError(absl::StrCat("privacy policy: ", why));
}

}  // namespace

void PrivacyPolicy::Read(config::YamlConfigReader& reader, PrivacyPolicy* policy) {
  std::string unit(model::RecordUnitName(policy->record_unit));
  reader.Read("privacy_policy.record", &unit);
  if (absl::StatusOr<model::RecordUnit> parsed = model::ParseRecordUnit(unit); parsed.ok()) {
    policy->record_unit = *parsed;
  } else {
    reader.Invalid("privacy_policy.record", std::string(parsed.status().message()));
  }
  auto read_non_negative = [&reader](const char* key, double* value) {
    reader.Read(key, value);
    if (!(*value >= 0) || !std::isfinite(*value)) reader.Invalid(key, "must be a number ≥ 0");
  };
  read_non_negative("privacy_policy.min_record_noise_multiplier",
                    &policy->min_record_noise_multiplier);
  read_non_negative("privacy_policy.max_record_epsilon", &policy->max_record_epsilon);
  read_non_negative("privacy_policy.record_delta", &policy->record_delta);
  if (policy->record_delta >= 1) {
    reader.Invalid("privacy_policy.record_delta", "must be below 1 (and at most 1/records)");
  }
  read_non_negative("privacy_policy.min_client_noise_multiplier",
                    &policy->min_client_noise_multiplier);
  read_non_negative("privacy_policy.min_secagg_threshold_fraction",
                    &policy->min_secagg_threshold_fraction);
  if (policy->min_secagg_threshold_fraction >= 1) {
    reader.Invalid("privacy_policy.min_secagg_threshold_fraction", "must be below 1");
  }
  read_non_negative("privacy_policy.min_clip_norm", &policy->min_clip_norm);
  read_non_negative("privacy_policy.max_clip_norm", &policy->max_clip_norm);
  if (policy->max_clip_norm > 0 && policy->max_clip_norm < policy->min_clip_norm) {
    reader.Invalid("privacy_policy.max_clip_norm", "must be 0 (open) or at least min_clip_norm");
  }
  std::vector<std::string> modes;
  reader.Read("privacy_policy.accepted_modes", &modes);
  if (!modes.empty()) {
    for (const std::string& mode : modes) {
      if (mode != "none" && mode != "central" && mode != "distributed") {
        reader.Invalid("privacy_policy.accepted_modes",
                       absl::StrCat("unknown mode '", mode, "' (none, central, distributed)"));
      }
    }
    policy->accepted_modes = modes;
  }
}

std::string PrivacyPolicy::ToYaml() const {
  return absl::StrCat(
      "privacy_policy:\n"
      "  # What one record is (line, paragraph or file): the unit DP-SGD's guarantee protects.\n"
      "  record: ",
      std::string(model::RecordUnitName(record_unit)),
      "\n"
      "  # Refuse rounds whose DP-SGD noise multiplier is below this (0: accept rounds without).\n"
      "  min_record_noise_multiplier: ",
      JsonNumber(min_record_noise_multiplier),
      "\n"
      "  # The record-level ε budget per dataset (0: none), at record_delta (0: 0.1/records).\n"
      "  max_record_epsilon: ",
      JsonNumber(max_record_epsilon), "\n  record_delta: ", JsonNumber(record_delta),
      "\n"
      "  # Client-level: the modes joined, and the least noise multiplier z.\n"
      "  accepted_modes: [",
      absl::StrJoin(accepted_modes, ", "),
      "]\n  min_client_noise_multiplier: ", JsonNumber(min_client_noise_multiplier),
      "\n"
      "  # SecAgg+: the threshold must exceed this fraction of the neighbourhood.\n"
      "  min_secagg_threshold_fraction: ",
      JsonNumber(min_secagg_threshold_fraction),
      "\n"
      "  # The update clip norm's accepted range (0: open).\n"
      "  min_clip_norm: ",
      JsonNumber(min_clip_norm), "\n  max_clip_norm: ", JsonNumber(max_clip_norm), "\n");
}

absl::Status CheckRoundAgainstPolicy(const PrivacyPolicy& policy, const v1::JoinRoundTask& task) {
  const v1::UpdateSpec& spec = task.update_spec();
  const v1::PrivacySpec& privacy = spec.privacy();
  const double record_sigma = spec.training().record_noise_multiplier();
  if (policy.min_record_noise_multiplier > 0 && record_sigma < policy.min_record_noise_multiplier) {
    return Refuse(absl::StrCat(
        record_sigma > 0
            ? absl::StrCat("the round's DP-SGD noise multiplier ", JsonNumber(record_sigma))
            : std::string("the round runs no DP-SGD (record noise multiplier 0)"),
        " is below this site's min_record_noise_multiplier ",
        JsonNumber(policy.min_record_noise_multiplier)));
  }
  const std::string mode = PrivacyModeName(privacy.mode());
  if (std::find(policy.accepted_modes.begin(), policy.accepted_modes.end(), mode) ==
      policy.accepted_modes.end()) {
    return Refuse(absl::StrCat("client-level mode ", mode, " is not in accepted_modes [",
                               absl::StrJoin(policy.accepted_modes, ", "), "]"));
  }
  if (policy.min_client_noise_multiplier > 0) {
    const double z =
        privacy.mode() == v1::PrivacySpec::MODE_NONE ? 0.0 : privacy.noise_multiplier();
    if (!(z >= policy.min_client_noise_multiplier)) {
      return Refuse(absl::StrCat("the round's client-level noise multiplier ", JsonNumber(z),
                                 " is below min_client_noise_multiplier ",
                                 JsonNumber(policy.min_client_noise_multiplier)));
    }
  }
  const double clip = privacy.clip_norm();
  if ((policy.min_clip_norm > 0 && clip < policy.min_clip_norm) ||
      (policy.max_clip_norm > 0 && clip > policy.max_clip_norm)) {
    return Refuse(absl::StrCat(
        "the round's clip norm ", JsonNumber(clip), " is outside [",
        JsonNumber(policy.min_clip_norm), ", ",
        policy.max_clip_norm > 0 ? JsonNumber(policy.max_clip_norm) : std::string("open"), "]"));
  }
  const auto neighbours = static_cast<double>(task.secagg().neighbors_size());
  const auto threshold = static_cast<double>(task.secagg().threshold());
  if (!(threshold > policy.min_secagg_threshold_fraction * neighbours)) {
    return Refuse(absl::StrCat("the SecAgg+ threshold t = ", task.secagg().threshold(),
                               " does not exceed ",
                               JsonNumber(policy.min_secagg_threshold_fraction), " of the ",
                               task.secagg().neighbors_size(),
                               " neighbours, so that few colluding neighbours could unmask this "
                               "site's update"));
  }
  return absl::OkStatus();
}

}  // namespace fedmoe::client
