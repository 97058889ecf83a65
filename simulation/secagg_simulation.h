// A whole SecAgg+ round in one process: n clients and the server exchanging messages by
// function call, with chosen participants dropping out before each stage. Used by
// build/bin/secagg_sim and by the protocol's tests, which compare the result with the plain
// modular sum of the survivors' inputs.
#ifndef FEDMOE_SIMULATION_SECAGG_SIMULATION_H_
#define FEDMOE_SIMULATION_SECAGG_SIMULATION_H_

#include <cstdint>
#include <set>
#include <vector>

#include "absl/status/statusor.h"

namespace fedmoe::bench {

struct SimulationConfig {
  uint32_t clients = 10;
  uint64_t dimension = 1000;
  int bits = 32;
  // 0 picks them with secure_agg::ChooseGraphParameters for `dropout_rate`.
  uint32_t degree = 0;
  uint32_t threshold = 0;
  double dropout_rate = 0.1;
  uint64_t seed = 1;
  // Participants (1-based) that drop before each stage: advertise, share, masked input, unmask.
  std::set<uint32_t> drop_before_advertise;
  std::set<uint32_t> drop_before_share;
  std::set<uint32_t> drop_before_masked_input;
  std::set<uint32_t> drop_before_unmask;
  // Values per masked-input chunk.
  uint64_t chunk = 1 << 16;
  // Runs the server in a child process of its own (every call crosses a socket pair), so
  // that its peak RSS is measured apart from the clients.
  bool server_in_child_process = false;
};

struct SimulationResult {
  bool completed = false;
  // When the round aborted, why.
  std::string abort_reason;
  bool correct = false;
  uint32_t survivors = 0;
  uint32_t degree = 0;
  uint32_t threshold = 0;
  double client_mask_seconds = 0;  // Mean over clients: stages 1-4 of one client.
  double server_seconds = 0;
  uint64_t bytes_per_client = 0;
  // The server's round state at its largest (just before unmasking finishes).
  uint64_t server_state_bytes = 0;
  // With server_in_child_process: the server process's peak RSS.
  double server_peak_rss_mib = 0;
};

// Spreads `dropout_rate` of the clients over the four stages at random (seeded).
void ChooseDropouts(SimulationConfig& config);

absl::StatusOr<SimulationResult> RunSimulation(const SimulationConfig& config);

}  // namespace fedmoe::bench

#endif  // FEDMOE_SIMULATION_SECAGG_SIMULATION_H_
