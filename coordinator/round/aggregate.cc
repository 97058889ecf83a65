#include "coordinator/round/aggregate.h"

#include <optional>
#include <utility>

#include "coordinator/round/privacy_plan.h"
#include "privacy/ring_encoder.h"
#include "privacy/secure_random.h"

namespace fedmoe::coordinator {

absl::StatusOr<AggregatedRound> Aggregate(secure_agg::SecAggServer& secagg,
                                          const v1::UpdateSpec& spec, const RoundTerms& terms,
                                          double expert_weight_floor, const GlobalModel& global,
                                          const ServerOptimizer& optimizer) {
  absl::StatusOr<std::vector<uint64_t>> sum = secagg.Finish();
  if (!sum.ok()) return sum.status();
  const auto survivors = static_cast<int64_t>(secagg.survivors().size());
  const std::optional<privacy::DistributedRound> priced = PriceTerms(terms, survivors);

  if (terms.privacy.mode() == v1::PrivacySpec::MODE_CENTRAL) {
    absl::StatusOr<privacy::SecureRandom> random = privacy::SecureRandom::FromSystem();
    if (!random.ok()) return random.status();
    if (absl::Status status = privacy::RingEncoder::AddCentralNoise(
            *sum, terms.encoding.ring_bits, priced->local_noise_variance, *random);
        !status.ok()) {
      return status;
    }
  }

  absl::StatusOr<privacy::RingEncoder> decoder =
      privacy::RingEncoder::Create(spec.layout().plain_values(), terms.encoding);
  if (!decoder.ok()) return decoder.status();
  absl::StatusOr<std::vector<double>> decoded = decoder->DecodeSum(*sum);
  // The sum and the decoded vector are each as long as the update: free one before the next.
  std::vector<uint64_t>().swap(*sum);
  if (!decoded.ok()) return decoded.status();

  absl::StatusOr<MergedUpdate> merged = MergeUpdate(*decoded, spec, survivors, expert_weight_floor,
                                                    DecodedNoiseStddev(priced, terms.encoding));
  std::vector<double>().swap(*decoded);
  if (!merged.ok()) return merged.status();

  AggregatedRound round{.survivors = {secagg.survivors().begin(), secagg.survivors().end()},
                        .merged = std::move(*merged),
                        .next = global,
                        .optimizer = optimizer};
  if (absl::Status status = round.optimizer.Apply(spec, round.merged, round.next); !status.ok()) {
    return status;
  }
  return round;
}

}  // namespace fedmoe::coordinator
