// What the round engine reports while rounds run, for whoever measures them: the coordinator's
// /metrics (coordinator/service/metrics.h) implements it. An interface, so that round/ does not
// depend on the service room above it.
#ifndef FEDMOE_COORDINATOR_ROUND_ROUND_OBSERVER_H_
#define FEDMOE_COORDINATOR_ROUND_ROUND_OBSERVER_H_

#include "absl/time/time.h"
#include "fedmoe/v1/federation.pb.h"

namespace fedmoe::coordinator {

class RoundObserver {
 public:
  virtual ~RoundObserver() = default;
  // A round stage closed after `took`; UNMASKED covers the unmasking, decode, merge and commit.
  virtual void StageClosed(v1::RoundStage stage, absl::Duration took) = 0;
  // A round ended, COMMITTED or ABORTED, `took` after its cohort was selected.
  virtual void RoundEnded(v1::RoundStage outcome, absl::Duration took) = 0;
};

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_ROUND_ROUND_OBSERVER_H_
