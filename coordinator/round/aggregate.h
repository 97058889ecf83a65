// A round's secure sum turned into the next global model, in the order the data flows:
//   1. unmask: SecAgg+ recovers the dropped clients' masks and returns Σ x mod 2^b;
//   2. central noise (privacy.mode central only), added in the ring so that it is exact
//      integer noise of the variance the ledger prices;
//   3. decode: RingEncoder undoes the rotation and the scaling;
//   4. merge: expert by expert, each weighted by the tokens its clients routed to it (DESIGN §4);
//   5. the server optimizer (FedAvg or FedAdam).
// Nothing here is persisted or charged to the privacy ledger: the round engine does both after.
#ifndef FEDMOE_COORDINATOR_ROUND_AGGREGATE_H_
#define FEDMOE_COORDINATOR_ROUND_AGGREGATE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/round/expert_merge.h"
#include "coordinator/round/privacy_ledger.h"
#include "fedmoe/v1/federation.pb.h"
#include "secure_agg/server/secagg_server.h"

namespace fedmoe::coordinator {

struct AggregatedRound {
  // The participant ids whose inputs are in the sum.
  std::vector<uint32_t> survivors;
  MergedUpdate merged;
  GlobalModel next;
  // The server optimizer after this round: the engine keeps it only if the round commits, so a
  // failed commit leaves FedAdam's moments as they were.
  ServerOptimizer optimizer;
};

// `secagg` must have closed its unmask stage; `spec` and `terms` are the round's.
absl::StatusOr<AggregatedRound> Aggregate(secure_agg::SecAggServer& secagg,
                                          const v1::UpdateSpec& spec, const RoundTerms& terms,
                                          double expert_weight_floor, const GlobalModel& global,
                                          const ServerOptimizer& optimizer);

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_ROUND_AGGREGATE_H_
