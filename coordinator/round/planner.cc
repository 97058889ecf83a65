#include "coordinator/round/planner.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/util/time_util.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "coordinator/round/update_spec.h"
#include "privacy/rdp_accountant.h"
#include "secure_agg/shared/neighbor_graph.h"

namespace fedmoe::coordinator {

absl::StatusOr<std::optional<Cohort>> DrawCohort(const std::vector<std::string>& online,
                                                 const RoundPolicy& policy,
                                                 privacy::SecureRandom& random) {
  Cohort cohort;
  for (const std::string& client_id : online) {
    if (random.Bernoulli(policy.sampling_rate)) cohort.members.push_back(client_id);
  }
  const auto size = static_cast<int64_t>(cohort.members.size());
  if (size < policy.min_clients || size > policy.max_clients) return std::nullopt;
  absl::StatusOr<double> rate =
      privacy::ConditionedSamplingRate(static_cast<int64_t>(online.size()), policy.sampling_rate,
                                       policy.min_clients, policy.max_clients);
  if (!rate.ok()) return rate.status();
  cohort.charged_sampling_rate = *rate;
  return cohort;
}

SecAggShape ChooseSecAggShape(int64_t cohort_size, const RoundPolicy& policy) {
  SecAggShape shape;
  absl::StatusOr<secure_agg::GraphParameters> graph = secure_agg::ChooseGraphParameters(
      static_cast<uint32_t>(cohort_size), policy.dropout_rate, policy.corrupt_fraction);
  if (graph.ok()) {
    shape.degree = graph->degree;
    shape.threshold = graph->threshold;
  } else {
    shape.degree = static_cast<uint32_t>(cohort_size - 1);
  }
  shape.threshold = std::max(shape.threshold, shape.degree / 2 + 1);
  return shape;
}

absl::StatusOr<std::string> SessionId(const std::string& federation, uint64_t round_id,
                                      const v1::UpdateSpec& spec) {
  std::string spec_bytes;
  {
    google::protobuf::io::StringOutputStream stream(&spec_bytes);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    if (!spec.SerializeToCodedStream(&coded)) {
      return absl::InternalError("cannot serialize the update spec");
    }
  }
  std::string input = absl::StrCat("fedmoe/v1/session", federation);
  for (int shift = 56; shift >= 0; shift -= 8) {
    input.push_back(static_cast<char>((round_id >> shift) & 0xff));
  }
  input += spec_bytes;
  std::string digest(32, '\0');
  unsigned int length = 0;
  if (EVP_Digest(input.data(), input.size(), reinterpret_cast<unsigned char*>(digest.data()),
                 &length, EVP_sha256(), nullptr) != 1) {
    return absl::InternalError("OpenSSL's SHA-256 failed");
  }
  return digest;
}

v1::StageDeadlines ScheduleStages(absl::Time selected_at, const RoundPolicy& policy) {
  const absl::Time advertise = selected_at + policy.timeouts.train;
  const absl::Time share = advertise + policy.timeouts.share_keys;
  const absl::Time masked = share + policy.timeouts.masked_input;
  const absl::Time unmask = masked + policy.timeouts.unmask;
  v1::StageDeadlines deadlines;
  *deadlines.mutable_advertise_keys() = ToTimestamp(advertise);
  *deadlines.mutable_share_keys() = ToTimestamp(share);
  *deadlines.mutable_masked_input() = ToTimestamp(masked);
  *deadlines.mutable_unmask() = ToTimestamp(unmask);
  return deadlines;
}

absl::StatusOr<std::string> RandomSeed(size_t count) {
  std::string bytes(count, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(bytes.data()), static_cast<int>(count)) != 1) {
    return absl::InternalError("OpenSSL's random generator failed");
  }
  return bytes;
}

google::protobuf::Timestamp ToTimestamp(absl::Time time) {
  return google::protobuf::util::TimeUtil::MillisecondsToTimestamp(absl::ToUnixMillis(time));
}

int64_t MinimumSurvivors(const SecAggShape& shape) {
  return std::max<int64_t>(static_cast<int64_t>(shape.threshold) + 1, 2);
}

absl::StatusOr<std::optional<RoundPlan>> PlanRound(
    uint64_t round_id, const std::vector<std::string>& online, const RoundPolicy& policy,
    const std::string& federation, const GlobalModel& global, const ModelVersionRecord& base,
    privacy::SecureRandom& random) {
  absl::StatusOr<std::optional<Cohort>> drawn = DrawCohort(online, policy, random);
  if (!drawn.ok()) return drawn.status();
  if (!drawn->has_value()) return std::nullopt;
  const auto cohort_size = static_cast<int64_t>((*drawn)->members.size());
  const SecAggShape shape = ChooseSecAggShape(cohort_size, policy);

  absl::StatusOr<std::string> rotation_seed = RandomSeed(32);
  if (!rotation_seed.ok()) return rotation_seed.status();
  absl::StatusOr<std::string> graph_seed = RandomSeed(32);
  if (!graph_seed.ok()) return graph_seed.status();
  absl::StatusOr<v1::ModelManifest> manifest = ModelRepository::Manifest(base);
  if (!manifest.ok()) return manifest.status();
  absl::StatusOr<PlannedUpdate> update =
      BuildUpdateSpec(global, policy, *manifest, cohort_size, *rotation_seed);
  if (!update.ok()) return update.status();
  absl::StatusOr<std::string> session = SessionId(federation, round_id, update->spec);
  if (!session.ok()) return session.status();
  absl::StatusOr<secure_agg::NeighborGraph> graph = secure_agg::NeighborGraph::Create(
      static_cast<uint32_t>(cohort_size), shape.degree, *graph_seed);
  if (!graph.ok()) return graph.status();

  RoundTerms terms{.round_id = round_id,
                   .privacy = update->spec.privacy(),
                   .encoding = std::move(update->encoding),
                   .encoded_values = static_cast<int64_t>(update->spec.layout().encoded_values()),
                   .sampling_rate = (*drawn)->charged_sampling_rate};
  return RoundPlan{.cohort = std::move((*drawn)->members),
                   .shape = shape,
                   .spec = std::move(update->spec),
                   .terms = std::move(terms),
                   .session_id = std::move(*session),
                   .graph = std::move(*graph)};
}

std::string BudgetPause(const PrivacyLedger& ledger, const RoundPlan& plan,
                        const RoundPolicy& policy) {
  if (!(policy.target_epsilon > 0)) return "";
  const double epsilon = ledger.WorstCaseEpsilonAfter(plan.terms, MinimumSurvivors(plan.shape),
                                                      static_cast<int64_t>(plan.cohort.size()));
  if (epsilon <= policy.target_epsilon) return "";
  return absl::StrFormat(
      "privacy budget exhausted: another round could take epsilon from %.4g to %.4g, past the "
      "target %.4g (delta %.3g)",
      ledger.epsilon_spent(), epsilon, policy.target_epsilon, policy.delta);
}

}  // namespace fedmoe::coordinator
