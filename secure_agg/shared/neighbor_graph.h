// The SecAgg+ communication graph (Bell et al. 2020): instead of every pair of clients, each
// client masks with and shares its secrets among k neighbours in a random k-regular graph, so
// the work per client grows with log n rather than n.
//
// The graph is a Harary graph (each node joined to the k/2 nearest on either side of a ring)
// over a random ordering of the participants drawn from a seed; the coordinator draws the seed
// and sends each client its neighbour list.
#ifndef FEDMOE_SECURE_AGG_SHARED_NEIGHBOR_GRAPH_H_
#define FEDMOE_SECURE_AGG_SHARED_NEIGHBOR_GRAPH_H_

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace fedmoe::secure_agg {

struct GraphParameters {
  // k: neighbours per participant (even, or n − 1 for the complete graph).
  uint32_t degree = 0;
  // t: shares among a participant's neighbours that recover its secrets.
  uint32_t threshold = 0;
};

// Chooses the smallest degree k, and a threshold t, such that over the whole round
//  - security: n · P[Hypergeometric(n − 1, ⌊γ·n⌋, k) ≥ t] ≤ 2^-security_bits, with γ the
//    corrupt fraction (the ⌊γ·n⌋ corrupt clients, wherever they are, never hold t shares of an
//    honest client's secrets among its k neighbours), and
//  - correctness: n · P[Binomial(k, 1 − dropout_rate) < t] ≤ 2^-correctness_bits (every
//    survivor keeps t live neighbours).
// Falls back to the complete graph when no smaller k qualifies; FailedPrecondition when even
// that does not (too few clients for these rates).
absl::StatusOr<GraphParameters> ChooseGraphParameters(uint32_t num_participants,
                                                      double dropout_rate, double corrupt_fraction,
                                                      int security_bits = 40,
                                                      int correctness_bits = 20);

class NeighborGraph {
 public:
  // Participants are 1..num_participants. `seed` is 32 bytes.
  static absl::StatusOr<NeighborGraph> Create(uint32_t num_participants, uint32_t degree,
                                              std::string_view seed);

  uint32_t num_participants() const { return static_cast<uint32_t>(neighbors_.size()); }
  uint32_t degree() const { return degree_; }
  // Ascending. Empty for an id outside 1..n.
  const std::vector<uint32_t>& Neighbors(uint32_t participant) const;
  bool AreNeighbors(uint32_t a, uint32_t b) const;

 private:
  NeighborGraph(std::vector<std::vector<uint32_t>> neighbors, uint32_t degree)
      : neighbors_(std::move(neighbors)), degree_(degree) {}
  std::vector<std::vector<uint32_t>> neighbors_;  // Index participant − 1.
  uint32_t degree_;
};

}  // namespace fedmoe::secure_agg

#endif  // FEDMOE_SECURE_AGG_SHARED_NEIGHBOR_GRAPH_H_
