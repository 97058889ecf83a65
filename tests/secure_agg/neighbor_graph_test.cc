// The SecAgg+ graph and its parameters.
#include "secure_agg/shared/neighbor_graph.h"

#include <gtest/gtest.h>

#include <cmath>
#include <set>

namespace fedmoe::secure_agg {
namespace {

// P[Hypergeometric(population, marked, draws) ≥ t], summed directly in long double.
long double HypergeometricUpperTail(uint32_t population, uint32_t marked, uint32_t draws,
                                    uint32_t t) {
  auto log_choose = [](long double n, long double k) {
    return std::lgamma(n + 1) - std::lgamma(k + 1) - std::lgamma(n - k + 1);
  };
  long double total = 0;
  for (uint32_t i = t; i <= std::min(draws, marked); ++i) {
    if (draws - i > population - marked) continue;
    total += std::exp(log_choose(marked, i) + log_choose(population - marked, draws - i) -
                      log_choose(population, draws));
  }
  return total;
}

// P[Binomial(n, p) ≥ t], summed directly in long double as an independent reference.
long double UpperTail(uint32_t n, double p, uint32_t t) {
  long double total = 0;
  for (uint32_t k = t; k <= n; ++k) {
    total += std::exp(std::lgamma(n + 1.0L) - std::lgamma(k + 1.0L) - std::lgamma(n - k + 1.0L) +
                      k * std::log(static_cast<long double>(p)) +
                      (n - k) * std::log1p(-static_cast<long double>(p)));
  }
  return total;
}

TEST(GraphParametersTest, ChosenDegreeAndThresholdMeetBothBounds) {
  for (uint32_t n : {10U, 100U, 1000U, 10000U}) {
    for (double dropout : {0.0, 0.1, 0.3}) {
      if (n == 10 && dropout > 0) continue;  // Infeasible at 2^-20: checked below.
      const double corrupt = 1.0 / 3.0;
      auto params = ChooseGraphParameters(n, dropout, corrupt);
      ASSERT_TRUE(params.ok()) << params.status() << " n=" << n << " dropout=" << dropout;
      const uint32_t k = params->degree;
      const uint32_t t = params->threshold;
      SCOPED_TRACE(::testing::Message()
                   << "n=" << n << " dropout=" << dropout << " k=" << k << " t=" << t);
      EXPECT_TRUE(k % 2 == 0 || k == n - 1);
      const auto corrupt_clients = static_cast<uint32_t>(std::floor(corrupt * n));
      EXPECT_LE(n * HypergeometricUpperTail(n - 1, corrupt_clients, k, t),
                std::ldexp(1.0L, -40) * 1.0001L);
      EXPECT_LE(n * UpperTail(k, dropout, k - t + 1), std::ldexp(1.0L, -20) * 1.0001L);
      if (n >= 1000 && dropout <= 0.1) {
        EXPECT_LT(k, n / 4) << "SecAgg+ must need far fewer than n neighbours";
      }
    }
  }
  // More dropouts never need fewer neighbours.
  EXPECT_LE(ChooseGraphParameters(1000, 0.05, 1.0 / 3)->degree,
            ChooseGraphParameters(1000, 0.2, 1.0 / 3)->degree);
  EXPECT_FALSE(ChooseGraphParameters(1, 0.1, 0.1).ok());
  EXPECT_FALSE(ChooseGraphParameters(10, 0.3, 1.0 / 3).ok()) << "too few clients for these rates";
  // Few clients: a threshold above the number of corrupt clients (3 of 10) is secure whatever
  // the graph, and without dropouts every neighbour is there to meet it.
  auto small = ChooseGraphParameters(10, 0.0, 1.0 / 3);
  EXPECT_GT(small->threshold, 3U);
  EXPECT_LE(small->threshold, small->degree);
}

TEST(NeighborGraphTest, IsRegularSymmetricAndSeeded) {
  const std::string seed(32, 'g');
  auto graph = NeighborGraph::Create(101, 16, seed);
  ASSERT_TRUE(graph.ok()) << graph.status();
  for (uint32_t u = 1; u <= 101; ++u) {
    const auto& neighbors = graph->Neighbors(u);
    ASSERT_EQ(neighbors.size(), 16U) << u;
    EXPECT_EQ(std::set<uint32_t>(neighbors.begin(), neighbors.end()).size(), 16U);
    for (uint32_t v : neighbors) {
      EXPECT_NE(u, v);
      EXPECT_TRUE(graph->AreNeighbors(v, u)) << u << " " << v;
    }
  }
  auto again = NeighborGraph::Create(101, 16, seed);
  auto other = NeighborGraph::Create(101, 16, std::string(32, 'h'));
  bool differs = false;
  for (uint32_t u = 1; u <= 101; ++u) {
    EXPECT_EQ(again->Neighbors(u), graph->Neighbors(u));
    differs = differs || other->Neighbors(u) != graph->Neighbors(u);
  }
  EXPECT_TRUE(differs);
  EXPECT_TRUE(graph->Neighbors(0).empty());
  EXPECT_TRUE(graph->Neighbors(102).empty());
}

TEST(NeighborGraphTest, DegreeNMinusOneIsTheCompleteGraph) {
  auto graph = NeighborGraph::Create(7, 6, std::string(32, 'c'));
  ASSERT_TRUE(graph.ok());
  for (uint32_t u = 1; u <= 7; ++u) EXPECT_EQ(graph->Neighbors(u).size(), 6U);
  EXPECT_FALSE(NeighborGraph::Create(7, 3, std::string(32, 'c')).ok()) << "odd degree";
  EXPECT_FALSE(NeighborGraph::Create(7, 7, std::string(32, 'c')).ok());
  EXPECT_FALSE(NeighborGraph::Create(7, 4, "short").ok());
}

}  // namespace
}  // namespace fedmoe::secure_agg
