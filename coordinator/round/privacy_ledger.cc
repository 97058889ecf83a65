#include "coordinator/round/privacy_ledger.h"

#include <cmath>
#include <limits>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "coordinator/round/privacy_plan.h"
#include "proto/privacy_names.h"

namespace fedmoe::coordinator {

std::optional<privacy::DistributedRound> PriceTerms(const RoundTerms& terms, int64_t survivors) {
  return PriceRound(terms.privacy.mode(), terms.encoding, terms.encoded_values, terms.sampling_rate,
                    terms.privacy.noise_multiplier(), survivors);
}

absl::Status PrivacyLedger::Record(const LedgerEntry& entry) {
  if (entry.rdp.size() != accountant_.orders().size()) {
    return absl::DataLossError(absl::StrCat("the privacy ledger entry of round ", entry.round_id,
                                            " has ", entry.rdp.size(), " orders, not ",
                                            accountant_.orders().size()));
  }
  privacy::RdpAccountant next = accountant_;
  absl::Status status = next.AddRdp(entry.rdp);
  if (status.ok()) status = next.AddSamplerTotalVariation(entry.sampler_total_variation);
  if (!status.ok()) {
    return absl::DataLossError(
        absl::StrCat("the privacy ledger entry of round ", entry.round_id, ": ", status.message()));
  }
  accountant_ = std::move(next);
  epsilon_spent_ = entry.epsilon_after;
  return absl::OkStatus();
}

absl::StatusOr<privacy::RdpAccountant> PrivacyLedger::AccountantWith(
    std::span<const double> rdp, double sampler_total_variation) const {
  privacy::RdpAccountant after = accountant_;
  if (absl::Status status = after.AddRdp(rdp); !status.ok()) return status;
  if (absl::Status status = after.AddSamplerTotalVariation(sampler_total_variation); !status.ok()) {
    return status;
  }
  return after;
}

double PrivacyLedger::SamplerTotalVariation(
    const std::optional<privacy::DistributedRound>& priced) {
  return priced.has_value() ? privacy::DistributedRoundTotalVariation(*priced) : 0.0;
}

absl::StatusOr<std::vector<double>> PrivacyLedger::Rdp(
    const std::optional<privacy::DistributedRound>& priced) const {
  // No noise: no privacy.
  if (!priced.has_value()) {
    return std::vector<double>(accountant_.orders().size(),
                               std::numeric_limits<double>::infinity());
  }
  return privacy::DistributedRoundRdp(*priced, accountant_.orders());
}

absl::StatusOr<LedgerEntry> PrivacyLedger::Charge(const RoundTerms& terms, int64_t survivors,
                                                  absl::Time committed_at) const {
  const std::optional<privacy::DistributedRound> priced = PriceTerms(terms, survivors);
  absl::StatusOr<std::vector<double>> rdp = Rdp(priced);
  if (!rdp.ok()) return rdp.status();
  LedgerEntry entry;
  entry.round_id = static_cast<int64_t>(terms.round_id);
  entry.sampling_rate = terms.sampling_rate;
  entry.planned_noise_multiplier = terms.privacy.noise_multiplier();
  entry.effective_noise_multiplier = priced.has_value() ? privacy::EffectiveNoiseMultiplier(*priced)
                                                        : terms.privacy.noise_multiplier();
  entry.mechanism = MechanismName(terms.privacy.mechanism());
  entry.mode = PrivacyModeName(terms.privacy.mode());
  entry.orders = accountant_.orders();
  entry.rdp = std::move(*rdp);
  entry.sampler_total_variation = SamplerTotalVariation(priced);
  entry.delta = delta_;
  entry.committed_at = committed_at;

  absl::StatusOr<privacy::RdpAccountant> after =
      AccountantWith(entry.rdp, entry.sampler_total_variation);
  if (!after.ok()) return after.status();
  entry.epsilon_after = std::numeric_limits<double>::infinity();
  if (absl::StatusOr<privacy::PrivacyLoss> loss = after->Epsilon(delta_); loss.ok()) {
    entry.epsilon_after = loss->epsilon;
    // No finite ε (privacy.mode none) has no best order either; the ledger stores 0 then.
    entry.best_order = std::isnan(loss->order) ? 0 : loss->order;
  }
  return entry;
}

double PrivacyLedger::WorstCaseEpsilonAfter(const RoundTerms& terms, int64_t fewest_survivors,
                                            int64_t cohort) const {
  absl::StatusOr<std::vector<double>> rdp = Rdp(PriceTerms(terms, fewest_survivors));
  if (!rdp.ok()) return std::numeric_limits<double>::infinity();
  absl::StatusOr<privacy::RdpAccountant> after =
      AccountantWith(*rdp, SamplerTotalVariation(PriceTerms(terms, cohort)));
  if (!after.ok()) return std::numeric_limits<double>::infinity();
  absl::StatusOr<privacy::PrivacyLoss> loss = after->Epsilon(delta_);
  return loss.ok() ? loss->epsilon : std::numeric_limits<double>::infinity();
}

}  // namespace fedmoe::coordinator
