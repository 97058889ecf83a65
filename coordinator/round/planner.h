// How a round starts, decided before the round engine records anything:
//   - the cohort, drawn by Poisson sampling from the clients online, and the sampling rate the
//     ledger charges for it;
//   - the SecAgg+ graph's degree and threshold for the cohort's size;
//   - the session id that binds the round to its update spec;
//   - the stage deadlines.
// Each is a function of its inputs (and of OpenSSL's generator, for the cohort and the seeds),
// so each is tested alone. The round engine (round_engine.h) builds the update spec, checks the
// privacy budget against the plan, and records the round.
#ifndef FEDMOE_COORDINATOR_ROUND_PLANNER_H_
#define FEDMOE_COORDINATOR_ROUND_PLANNER_H_

#include <google/protobuf/timestamp.pb.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coordinator/round/round_policy.h"
#include "fedmoe/v1/federation.pb.h"
#include "privacy/secure_random.h"

namespace fedmoe::coordinator {

struct Cohort {
  std::vector<std::string> members;
  // The policy's rate q as the size-conditioned draw really took it: a draw outside
  // [min_clients, max_clients] is made again, so membership of the one kept is not at rate q
  // (privacy::ConditionedSamplingRate).
  double charged_sampling_rate = 1;
};

// Each of `online` independently with probability rounds.sampling_rate, from `random` so that
// nobody can predict or steer the cohort. nullopt when the draw is outside [min_clients,
// max_clients]: the caller draws again later. An error when no rate can be charged for it.
absl::StatusOr<std::optional<Cohort>> DrawCohort(const std::vector<std::string>& online,
                                                 const RoundPolicy& policy,
                                                 privacy::SecureRandom& random);

struct SecAggShape {
  uint32_t degree = 0;
  uint32_t threshold = 0;
};

// The neighbour graph's degree and the shares needed to unmask, for `cohort_size` clients under
// the policy's dropout rate and corrupt fraction; the complete graph when no sparse one fits.
// The threshold is always over half the degree: a coordinator that told one neighbour a client
// dropped and another that it lived would otherwise gather both of its secrets.
SecAggShape ChooseSecAggShape(int64_t cohort_size, const RoundPolicy& policy);

// SHA-256("fedmoe/v1/session" ‖ federation ‖ round id, 8 bytes big-endian ‖ spec, serialized
// deterministically): what every message of the round is bound to.
absl::StatusOr<std::string> SessionId(const std::string& federation, uint64_t round_id,
                                      const v1::UpdateSpec& spec);

// The stages' deadlines for a round selected at `selected_at`, one timeout after another.
v1::StageDeadlines ScheduleStages(absl::Time selected_at, const RoundPolicy& policy);

// `count` bytes from OpenSSL's generator (the round's rotation and graph seeds).
absl::StatusOr<std::string> RandomSeed(size_t count);

google::protobuf::Timestamp ToTimestamp(absl::Time time);

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_ROUND_PLANNER_H_
