// The coordinator's privacy ledger (DESIGN §5): every committed round's charge, in memory as
// the accountant's running sums and on disk as one ledger row a round. A round is priced in
// exactly one place, Charge, which returns the whole row (its RDP at every order, the
// samplers' total variation, the noise multiplier the survivors' shares really add up to, and
// ε after it); the round engine writes that row in the commit's transaction and only then
// Records it here, so that the ledger in memory never runs ahead of the one on disk.
#ifndef FEDMOE_COORDINATOR_ROUND_PRIVACY_LEDGER_H_
#define FEDMOE_COORDINATOR_ROUND_PRIVACY_LEDGER_H_

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coordinator/state/store.h"
#include "fedmoe/v1/federation.pb.h"
#include "privacy/distributed_accounting.h"
#include "privacy/rdp_accountant.h"
#include "privacy/ring_encoder.h"

namespace fedmoe::coordinator {

// What a round's price depends on, fixed when the round starts.
struct RoundTerms {
  uint64_t round_id = 0;
  // Its mode, mechanism and noise multiplier, as the clients were told.
  v1::PrivacySpec privacy;
  privacy::RingEncoding encoding;
  int64_t encoded_values = 0;
  // The rate the cohort was really drawn at (Cohort::charged_sampling_rate).
  double sampling_rate = 1;
};

// The round as the accountant prices it with `survivors` noise shares in the sum; none without
// noise (MODE_NONE).
std::optional<privacy::DistributedRound> PriceTerms(const RoundTerms& terms, int64_t survivors);

class PrivacyLedger {
 public:
  explicit PrivacyLedger(double delta) : delta_(delta) {}

  // Adds a committed round's row: each row of the store at start-up, and each new round once
  // its commit is on disk. A row priced at other orders than this build's is DATA_LOSS.
  absl::Status Record(const LedgerEntry& entry);

  // The row that committing the round with `survivors` survivors would write, ε after it
  // included. The ledger is unchanged until that row is Recorded.
  absl::StatusOr<LedgerEntry> Charge(const RoundTerms& terms, int64_t survivors,
                                     absl::Time committed_at) const;

  // ε at the ledger's δ if the round is charged at its worst: the RDP of its fewest possible
  // survivors (the least noise) with the samplers' distance of its whole cohort (the most
  // noise shares). What the budget check compares with rounds.target_epsilon before a round
  // starts. +∞ where no finite ε exists.
  double WorstCaseEpsilonAfter(const RoundTerms& terms, int64_t fewest_survivors,
                               int64_t cohort) const;

  double delta() const { return delta_; }
  double epsilon_spent() const { return epsilon_spent_; }
  double sampler_total_variation() const { return accountant_.sampler_total_variation(); }

 private:
  // The RDP at each of the accountant's orders (+∞ at all of them without noise).
  absl::StatusOr<std::vector<double>> Rdp(
      const std::optional<privacy::DistributedRound>& priced) const;
  // How far a priced round's noise can be from what Rdp prices (0 without noise).
  static double SamplerTotalVariation(const std::optional<privacy::DistributedRound>& priced);
  // The accountant as it would be with one more round of this RDP and sampler distance.
  absl::StatusOr<privacy::RdpAccountant> AccountantWith(std::span<const double> rdp,
                                                        double sampler_total_variation) const;

  double delta_;
  privacy::RdpAccountant accountant_;
  double epsilon_spent_ = 0;
};

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_ROUND_PRIVACY_LEDGER_H_
