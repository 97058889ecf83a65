// How a round starts, decided before the round engine records anything:
//   - the cohort, drawn by Poisson sampling from the clients online, and the sampling rate the
//     ledger charges for it;
//   - the SecAgg+ graph's degree and threshold for the cohort's size;
//   - the session id that binds the round to its update spec;
//   - the update spec and its ring encoding;
//   - the session id that binds the round to its update spec;
//   - the neighbour graph;
//   - whether the privacy budget allows the round;
//   - the stage deadlines.
// Each is a function of its inputs (and of OpenSSL's generator, for the cohort and the seeds),
// so each is tested alone; PlanRound puts them together. The round engine (round_engine.h)
// records the planned round and runs it.
#ifndef FEDMOE_COORDINATOR_ROUND_PLANNER_H_
#define FEDMOE_COORDINATOR_ROUND_PLANNER_H_

#include <google/protobuf/timestamp.pb.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coordinator/round/global_model.h"
#include "coordinator/round/privacy_ledger.h"
#include "coordinator/round/round_policy.h"
#include "coordinator/state/model_repository.h"
#include "fedmoe/v1/federation.pb.h"
#include "privacy/secure_random.h"
#include "secure_agg/shared/neighbor_graph.h"

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

// The fewest participants a round of this shape can commit with: every survivor needs
// `threshold` live neighbours, and a sum of one would be that client's update.
int64_t MinimumSurvivors(const SecAggShape& shape);

// SHA-256("fedmoe/v1/session" ‖ federation ‖ round id, 8 bytes big-endian ‖ spec, serialized
// deterministically): what every message of the round is bound to.
absl::StatusOr<std::string> SessionId(const std::string& federation, uint64_t round_id,
                                      const v1::UpdateSpec& spec);

// The stages' deadlines for a round selected at `selected_at`, one timeout after another.
v1::StageDeadlines ScheduleStages(absl::Time selected_at, const RoundPolicy& policy);

// `count` bytes from OpenSSL's generator (the round's rotation and graph seeds).
absl::StatusOr<std::string> RandomSeed(size_t count);

google::protobuf::Timestamp ToTimestamp(absl::Time time);

// Everything a round needs before its first message.
struct RoundPlan {
  std::vector<std::string> cohort;
  SecAggShape shape;
  v1::UpdateSpec spec;
  // What the ledger prices the round on; terms.encoding is what spec.privacy() describes.
  RoundTerms terms;
  std::string session_id;
  secure_agg::NeighborGraph graph;
};

// Draws a cohort from `online` and plans round `round_id` of `federation` on the global model
// `global` (published as `base`). nullopt when the draw is outside [min_clients, max_clients]
// (draw again soon); an error when the round cannot be planned at all.
absl::StatusOr<std::optional<RoundPlan>> PlanRound(
    uint64_t round_id, const std::vector<std::string>& online, const RoundPolicy& policy,
    const std::string& federation, const GlobalModel& global, const ModelVersionRecord& base,
    privacy::SecureRandom& random);

// Why the planned round must not start under rounds.target_epsilon: its worst case (fewest
// survivors' RDP, whole cohort's sampler distance) would take the ledger past the target.
// Empty when it may start, or when no target is set.
std::string BudgetPause(const PrivacyLedger& ledger, const RoundPlan& plan,
                        const RoundPolicy& policy);

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_ROUND_PLANNER_H_
