// Google Benchmark results as one JSON object per line, each with its configuration, so that
// two runs can be compared side by side with ordinary tools (DESIGN §8).
#ifndef FEDMOE_BENCH_JSON_LINES_REPORTER_H_
#define FEDMOE_BENCH_JSON_LINES_REPORTER_H_

#include <benchmark/benchmark.h>

#include <cstdio>
#include <string>
#include <thread>

namespace fedmoe::bench {

class JsonLinesReporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context& /*context*/) override { return true; }

  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& run : runs) {
      std::string line = "{\"benchmark\":\"" + run.benchmark_name() + "\"";
      line += ",\"iterations\":" + std::to_string(run.iterations);
      line += ",\"real_seconds\":" + Number(run.GetAdjustedRealTime() * Multiplier(run.time_unit));
      line += ",\"cpu_seconds\":" + Number(run.GetAdjustedCPUTime() * Multiplier(run.time_unit));
      line += ",\"threads_available\":" + std::to_string(std::thread::hardware_concurrency());
      for (const auto& [name, counter] : run.counters) {
        line += ",\"" + name + "\":" + Number(counter.value);
      }
      if (!run.report_label.empty()) line += ",\"label\":\"" + run.report_label + "\"";
      line += "}\n";
      std::fputs(line.c_str(), stdout);
    }
    std::fflush(stdout);
  }

 private:
  static double Multiplier(benchmark::TimeUnit unit) {
    switch (unit) {
      case benchmark::kNanosecond:
        return 1e-9;
      case benchmark::kMicrosecond:
        return 1e-6;
      case benchmark::kMillisecond:
        return 1e-3;
      case benchmark::kSecond:
        return 1.0;
    }
    return 1.0;
  }
  static std::string Number(double value) {
    char buffer[64];
    std::snprintf(buffer, sizeof(buffer), "%.9g", value);
    return buffer;
  }
};

// The main() of every fedmoe benchmark binary.
inline int RunBenchmarks(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  JsonLinesReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}

}  // namespace fedmoe::bench

#endif  // FEDMOE_BENCH_JSON_LINES_REPORTER_H_
