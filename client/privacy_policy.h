// The site's own privacy floor (`privacy_policy:` in client.yaml): what this site accepts of a
// round before it trains, whatever the coordinator asks. A coordinator that is wrong or hostile
// can send any spec; the site checks the spec against this floor and refuses, with a specific
// reason, a round below it, so nothing is trained and nothing uploaded.
#ifndef FEDMOE_CLIENT_PRIVACY_POLICY_H_
#define FEDMOE_CLIENT_PRIVACY_POLICY_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "config/yaml_config.h"
#include "fedmoe/v1/federation.pb.h"
#include "model/data.h"

namespace fedmoe::client {

struct PrivacyPolicy {
  // What one record of this site's data is; the DP-SGD guarantee is about one of these.
  model::RecordUnit record_unit = model::RecordUnit::kParagraph;
  // Rounds must run DP-SGD with at least this noise multiplier; 0 accepts rounds without it.
  double min_record_noise_multiplier = 0;
  // The record-level budget per dataset: a round whose charge would take the dataset's ε past
  // it is refused, and the dataset is not trained on again. 0: no budget.
  double max_record_epsilon = 0;
  // δ of the record-level guarantee; 0: a tenth of 1/records (DefaultRecordDelta).
  double record_delta = 0;
  // The client-level modes this site joins: none, central, distributed.
  std::vector<std::string> accepted_modes = {"none", "central", "distributed"};
  // The least client-level noise multiplier z a round may have (modes central and distributed;
  // mode none has no noise and is refused whenever this is above 0).
  double min_client_noise_multiplier = 0;
  // SecAgg+: the threshold t must exceed this fraction of the caller's neighbourhood k, so that
  // fewer than that many colluding neighbours cannot unmask its update alone.
  double min_secagg_threshold_fraction = 0.5;
  // The range the update's clip norm C must fall in; 0 leaves that side open.
  double min_clip_norm = 0;
  double max_clip_norm = 0;

  // Reads privacy_policy.* from client.yaml, reporting bad values through the reader.
  static void Read(config::YamlConfigReader& reader, PrivacyPolicy* policy);
  // The block as client.yaml writes it.
  std::string ToYaml() const;
};

// OK when the round meets the policy's rules that the spec alone decides (the budget needs the
// ledger: the daemon checks it too). Otherwise FailedPrecondition with the rule and the values.
absl::Status CheckRoundAgainstPolicy(const PrivacyPolicy& policy, const v1::JoinRoundTask& task);

}  // namespace fedmoe::client

#endif  // FEDMOE_CLIENT_PRIVACY_POLICY_H_
