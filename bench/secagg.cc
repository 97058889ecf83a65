// SecAgg+ costs, each as one JSON object per result:
//  - the raw AES-128-CTR keystream rate of OpenSSL's EVP, measured here, in this run;
//  - one client's masking of d = 1M values with k pairwise masks and a self mask, k ∈ {8, 32};
//  - whole rounds in one process: n = 100, d = 100k, 10% dropout; n = 1000, d = 10k.
#include <openssl/evp.h>
#include <sys/resource.h>

#include <cstring>
#include <vector>

#include "bench/client_masking.h"
#include "bench/json_lines_reporter.h"
#include "secure_agg/shared/mask_generator.h"
#include "simulation/secagg_simulation.h"

namespace fedmoe::bench {
namespace {

constexpr size_t kKeystreamBytes = 16 << 20;

void BM_Aes128CtrKeystream(benchmark::State& state) {
  std::vector<unsigned char> buffer(kKeystreamBytes, 0);
  EVP_CIPHER_CTX* cipher = EVP_CIPHER_CTX_new();
  const unsigned char key[16] = {1};
  const unsigned char iv[16] = {};
  EVP_EncryptInit_ex(cipher, EVP_aes_128_ctr(), nullptr, key, iv);
  for (auto _ : state) {
    int written = 0;
    EVP_EncryptUpdate(cipher, buffer.data(), &written, buffer.data(),
                      static_cast<int>(buffer.size()));
    benchmark::DoNotOptimize(buffer.data());
  }
  EVP_CIPHER_CTX_free(cipher);
  state.counters["bytes_per_second"] = benchmark::Counter(
      static_cast<double>(kKeystreamBytes), benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel("openssl evp aes-128-ctr keystream");
}
BENCHMARK(BM_Aes128CtrKeystream)->Unit(benchmark::kMillisecond);

void BM_ClientMasking(benchmark::State& state) {
  const auto neighbors = static_cast<uint32_t>(state.range(0));
  const uint64_t dimension = 1 << 20;
  const int bits = 32;
  std::vector<uint64_t> vector(dimension, 7);
  for (auto _ : state) {
    MaskAsOneClient(vector, neighbors, bits);
    benchmark::DoNotOptimize(vector.data());
  }
  const double masks = neighbors + 1.0;
  state.counters["neighbors"] = neighbors;
  state.counters["dimension"] = static_cast<double>(dimension);
  state.counters["bits"] = bits;
  // Keystream bytes consumed per second, comparable with the raw rate above.
  state.counters["keystream_bytes_per_second"] = benchmark::Counter(
      masks * static_cast<double>(dimension) * 4.0, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel("one client's masks: self + k pairwise");
}
BENCHMARK(BM_ClientMasking)->Arg(8)->Arg(32)->Unit(benchmark::kMillisecond);

void BM_Round(benchmark::State& state) {
  SimulationConfig config;
  config.clients = static_cast<uint32_t>(state.range(0));
  config.dimension = static_cast<uint64_t>(state.range(1));
  config.dropout_rate = 0.1;
  ChooseDropouts(config);
  SimulationResult result;
  for (auto _ : state) {
    auto run = RunSimulation(config);
    if (!run.ok() || !run->completed || !run->correct) {
      state.SkipWithError("round failed");
      return;
    }
    result = *run;
  }
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  state.counters["clients"] = config.clients;
  state.counters["dimension"] = static_cast<double>(config.dimension);
  state.counters["dropout"] = config.dropout_rate;
  state.counters["survivors"] = result.survivors;
  state.counters["neighbors"] = result.degree;
  state.counters["threshold"] = result.threshold;
  state.counters["client_seconds"] = result.client_mask_seconds;
  state.counters["server_seconds"] = result.server_seconds;
  state.counters["bytes_per_client"] = static_cast<double>(result.bytes_per_client);
  state.counters["masked_input_bytes"] = static_cast<double>(config.dimension) * 4;
  state.counters["server_state_mb"] = static_cast<double>(result.server_state_bytes) / (1 << 20);
  // Of the whole process, which also holds every client's state and input.
  state.counters["process_peak_rss_mb"] = static_cast<double>(usage.ru_maxrss) / 1024.0;
  state.SetLabel("whole round in one process");
}
BENCHMARK(BM_Round)
    ->Args({100, 100000})
    ->Args({1000, 10000})
    ->Iterations(1)
    ->Unit(benchmark::kSecond);

}  // namespace
}  // namespace fedmoe::bench

int main(int argc, char** argv) { return fedmoe::bench::RunBenchmarks(argc, argv); }
