#include "secure_agg/shared/neighbor_graph.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>

#include "absl/strings/str_cat.h"
#include "secure_agg/shared/mask_generator.h"

namespace fedmoe::secure_agg {
namespace {

double LogBinomialTerm(uint32_t n, uint32_t k, double p) {
  return std::lgamma(n + 1.0) - std::lgamma(k + 1.0) - std::lgamma(n - k + 1.0) + k * std::log(p) +
         (n - k) * std::log1p(-p);
}

// log P[Binomial(n, p) ≥ t], summed in log space: independent dropouts.
double LogUpperTail(uint32_t n, double p, uint32_t t) {
  if (t == 0) return 0.0;
  if (t > n) return -INFINITY;
  if (p <= 0.0) return -INFINITY;
  if (p >= 1.0) return 0.0;
  double log_sum = -INFINITY;
  for (uint32_t k = t; k <= n; ++k) {
    const double term = LogBinomialTerm(n, k, p);
    const double high = std::max(log_sum, term);
    log_sum = high + std::log(std::exp(log_sum - high) + std::exp(term - high));
  }
  return log_sum;
}

double LogChoose(double n, double k) {
  return std::lgamma(n + 1.0) - std::lgamma(k + 1.0) - std::lgamma(n - k + 1.0);
}

// log P[X ≥ t] for X hypergeometric: k draws from `population` holding `marked` marked items.
// Exact for the corrupt clients among a random neighbourhood when the adversary holds a fixed
// number of clients; zero once t exceeds either the draws or the marked items.
double LogHypergeometricUpperTail(uint32_t population, uint32_t marked, uint32_t k, uint32_t t) {
  if (t == 0) return 0.0;
  if (t > std::min(k, marked)) return -INFINITY;
  double log_sum = -INFINITY;
  const double log_total = LogChoose(population, k);
  for (uint32_t i = t; i <= std::min(k, marked); ++i) {
    if (k - i > population - marked) continue;
    const double term = LogChoose(marked, i) + LogChoose(population - marked, k - i) - log_total;
    const double high = std::max(log_sum, term);
    log_sum = high + std::log(std::exp(log_sum - high) + std::exp(term - high));
  }
  return log_sum;
}

}  // namespace

absl::StatusOr<GraphParameters> ChooseGraphParameters(uint32_t num_participants,
                                                      double dropout_rate, double corrupt_fraction,
                                                      int security_bits, int correctness_bits) {
  if (num_participants < 2) {
    return absl::InvalidArgumentError("secure aggregation needs at least 2 participants");
  }
  if (!(dropout_rate >= 0 && dropout_rate < 1) ||
      !(corrupt_fraction >= 0 && corrupt_fraction < 1)) {
    return absl::InvalidArgumentError("dropout rate and corrupt fraction must be in [0, 1)");
  }
  const double log_n = std::log(static_cast<double>(num_participants));
  const double security_budget = -security_bits * std::log(2.0) - log_n;
  const double correctness_budget = -correctness_bits * std::log(2.0) - log_n;
  const uint32_t complete = num_participants - 1;
  // The adversary holds ⌊γ·n⌋ clients; a neighbourhood is k of the other n − 1.
  const auto corrupt = static_cast<uint32_t>(std::floor(corrupt_fraction * num_participants));
  auto fits = [&](uint32_t k) -> std::optional<GraphParameters> {
    // The smallest t that keeps the corrupt below it, then check survivors reach it.
    for (uint32_t t = 1; t <= k; ++t) {
      if (LogHypergeometricUpperTail(complete, corrupt, k, t) > security_budget) continue;
      // P[Bin(k, 1 − δ) < t] = P[Bin(k, δ) > k − t] = P[Bin(k, δ) ≥ k − t + 1].
      if (LogUpperTail(k, dropout_rate, k - t + 1) <= correctness_budget) {
        return GraphParameters{k, t};
      }
      return std::nullopt;
    }
    return std::nullopt;
  };
  for (uint32_t k = 2; k < complete; k += 2) {
    if (auto chosen = fits(k)) return *chosen;
  }
  if (auto chosen = fits(complete)) return *chosen;
  return absl::FailedPreconditionError(absl::StrCat(
      "no neighbour graph over ", num_participants, " participants meets 2^-", security_bits,
      " security and 2^-", correctness_bits, " correctness at dropout rate ", dropout_rate,
      " and corrupt fraction ", corrupt_fraction));
}

absl::StatusOr<NeighborGraph> NeighborGraph::Create(uint32_t num_participants, uint32_t degree,
                                                    std::string_view seed) {
  if (num_participants < 2 || degree < 1 || degree >= num_participants) {
    return absl::InvalidArgumentError(
        absl::StrCat("no ", degree, "-regular graph over ", num_participants, " participants"));
  }
  const bool complete = degree == num_participants - 1;
  if (!complete && degree % 2 != 0) {
    return absl::InvalidArgumentError("the degree of a Harary graph below n - 1 must be even");
  }
  // A seeded Fisher-Yates shuffle places the participants on the ring; the randomness is the
  // mask generator's keystream under a purpose of its own.
  MaskDomain domain;
  domain.session_id = std::string(32, '\0');
  domain.purpose = MaskPurpose::kSelfMask;
  domain.first_participant = 0xffffffff;  // Never a participant id: a stream of its own.
  domain.length = num_participants;
  domain.bits = 62;
  absl::StatusOr<MaskGenerator> stream = MaskGenerator::Create(seed, domain);
  if (!stream.ok()) return stream.status();
  std::vector<uint64_t> random(num_participants, 0);
  if (absl::Status status = stream->Add(random); !status.ok()) return status;
  std::vector<uint32_t> ring(num_participants);
  std::iota(ring.begin(), ring.end(), 1);
  for (uint32_t i = num_participants - 1; i > 0; --i) {
    // Modulo bias is below 2^-30 for any realistic n with 62-bit draws.
    std::swap(ring[i], ring[random[i] % (i + 1)]);
  }
  std::vector<std::vector<uint32_t>> neighbors(num_participants);
  for (uint32_t position = 0; position < num_participants; ++position) {
    auto& list = neighbors[ring[position] - 1];
    if (complete) {
      for (uint32_t other = 1; other <= num_participants; ++other) {
        if (other != ring[position]) list.push_back(other);
      }
    } else {
      for (uint32_t step = 1; step <= degree / 2; ++step) {
        list.push_back(ring[(position + step) % num_participants]);
        list.push_back(ring[(position + num_participants - step) % num_participants]);
      }
    }
    std::sort(list.begin(), list.end());
  }
  return NeighborGraph(std::move(neighbors), degree);
}

const std::vector<uint32_t>& NeighborGraph::Neighbors(uint32_t participant) const {
  static const std::vector<uint32_t> kNone;
  if (participant < 1 || participant > neighbors_.size()) return kNone;
  return neighbors_[participant - 1];
}

bool NeighborGraph::AreNeighbors(uint32_t a, uint32_t b) const {
  const std::vector<uint32_t>& list = Neighbors(a);
  return std::binary_search(list.begin(), list.end(), b);
}

}  // namespace fedmoe::secure_agg
