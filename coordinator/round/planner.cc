#include "coordinator/round/planner.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/util/time_util.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "privacy/rdp_accountant.h"
#include "secure_agg/neighbor_graph.h"

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

}  // namespace fedmoe::coordinator
