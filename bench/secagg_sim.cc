// secagg_sim: a whole SecAgg+ round in one process, with dropouts spread over the stages.
//   build/bin/secagg_sim --clients N --dim D --dropout P --bits B --seed S
// Prints one JSON line: whether the unmasked result equals the plain modular sum of the
// survivors' inputs, the round's shape, and its cost.
#include <sys/resource.h>

#include <cstdio>

#include "absl/strings/numbers.h"
#include "config/command_line.h"
#include "simulation/secagg_simulation.h"

namespace {

constexpr char kUsage[] =
    "usage: secagg_sim --clients N --dim D --dropout P --bits B --seed S [--server-process]\n";

int Main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  auto flags = fedmoe::config::CommandLine::Parse(
      args, {"clients", "dim", "dropout", "bits", "seed", "degree", "threshold"},
      {"server-process"});
  if (!flags.ok()) return fedmoe::config::ReportFailure("secagg_sim", flags.status());
  fedmoe::bench::SimulationConfig config;
  bool ok = absl::SimpleAtoi(flags->GetOr("clients", "10"), &config.clients) &&
            absl::SimpleAtoi(flags->GetOr("dim", "1000"), &config.dimension) &&
            absl::SimpleAtod(flags->GetOr("dropout", "0.1"), &config.dropout_rate) &&
            absl::SimpleAtoi(flags->GetOr("bits", "32"), &config.bits) &&
            absl::SimpleAtoi(flags->GetOr("seed", "1"), &config.seed) &&
            absl::SimpleAtoi(flags->GetOr("degree", "0"), &config.degree) &&
            absl::SimpleAtoi(flags->GetOr("threshold", "0"), &config.threshold);
  if (!ok) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  config.server_in_child_process = flags->Has("server-process");
  fedmoe::bench::ChooseDropouts(config);
  auto result = fedmoe::bench::RunSimulation(config);
  if (!result.ok()) return fedmoe::config::ReportFailure("secagg_sim", result.status());
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  std::printf(
      "{\"correct\":%s,\"completed\":%s,\"clients\":%u,\"survivors\":%u,\"dim\":%llu,"
      "\"bits\":%d,\"neighbors\":%u,\"threshold\":%u,\"dropout\":%g,\"client_mask_seconds\":%.6f,"
      "\"server_seconds\":%.6f,\"server_state_mb\":%.2f,\"peak_rss_mb\":%.1f,"
      "\"bytes_per_client\":%llu,\"server_process_peak_rss_mb\":%.1f}\n",
      result->correct ? "true" : "false", result->completed ? "true" : "false", config.clients,
      result->survivors, static_cast<unsigned long long>(config.dimension), config.bits,
      result->degree, result->threshold, config.dropout_rate, result->client_mask_seconds,
      result->server_seconds, static_cast<double>(result->server_state_bytes) / (1 << 20),
      usage.ru_maxrss / 1024.0, static_cast<unsigned long long>(result->bytes_per_client),
      result->server_peak_rss_mib);
  return result->completed && result->correct ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) { return Main(argc, argv); }
