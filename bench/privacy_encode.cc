// The distributed-DP encoding of a 1M-value update (clip, rotate, scale, round, noise, wrap)
// and its stages, beside a client's SecAgg+ masking of the same vector with k = 8 neighbours.
#include <string>
#include <vector>

#include "bench/client_masking.h"
#include "bench/json_lines_reporter.h"
#include "coordinator/round/update_spec.h"
#include "privacy/hadamard.h"
#include "privacy/noise.h"
#include "privacy/ring_encoder.h"
#include "privacy/secure_random.h"

namespace fedmoe::bench {
namespace {

using privacy::NoiseMechanism;

constexpr size_t kDimension = size_t{1} << 20;
constexpr int kRingBits = 32;

std::vector<float> Update() {
  std::vector<float> update(kDimension);
  privacy::SecureRandom random = *privacy::SecureRandom::FromSeed(std::string(32, 'u'), "bench");
  for (float& v : update) v = static_cast<float>(random.UniformDouble() - 0.5) * 1e-3F;
  return update;
}

void SetConfiguration(benchmark::State& state, const char* mechanism) {
  state.counters["dimension"] = static_cast<double>(kDimension);
  state.counters["ring_bits"] = kRingBits;
  state.counters["values_per_second"] = benchmark::Counter(
      static_cast<double>(kDimension), benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(mechanism);
}

void RunEncoding(benchmark::State& state, const privacy::RingEncoding& encoding,
                 const char* label) {
  auto encoder = privacy::RingEncoder::Create(kDimension, encoding);
  if (!encoder.ok()) {
    state.SkipWithError(std::string(encoder.status().message()).c_str());
    return;
  }
  privacy::SecureRandom random = *privacy::SecureRandom::FromSystem();
  const std::vector<float> update = Update();
  // Encoded into one buffer, as the masking below works on one vector.
  std::vector<uint64_t> encoded(encoder->encoded_dimension());
  for (auto _ : state) {
    if (!encoder->EncodeInto(update, random, encoded).ok()) state.SkipWithError("encoding failed");
    benchmark::DoNotOptimize(encoded.data());
  }
  SetConfiguration(state, label);
  state.counters["scale"] = encoding.scale;
  state.counters["local_noise_variance"] = encoding.local_noise_variance;
}

// γ = 4096 and σ² = 10^4 in scaled units, per mechanism.
void BM_Encode(benchmark::State& state) {
  const auto mechanism = static_cast<NoiseMechanism>(state.range(0));
  privacy::RingEncoding encoding;
  encoding.clip_norm = 1.0;
  encoding.scale = 4096.0;
  encoding.rounding_beta = 0.6065306597;  // e^-0.5
  encoding.mechanism = mechanism;
  encoding.local_noise_variance = mechanism == NoiseMechanism::kNone ? 0.0 : 1.0e4;
  encoding.ring_bits = kRingBits;
  RunEncoding(state, encoding,
              mechanism == NoiseMechanism::kNone               ? "no noise"
              : mechanism == NoiseMechanism::kDiscreteGaussian ? "discrete gaussian"
                                                               : "skellam");
}
// The encoder runs on every core: its cpu_seconds are the whole process's, beside the real
// time, so that the CPU it costs compares with the masking's too (which runs on one).
BENCHMARK(BM_Encode)
    ->Arg(static_cast<int>(NoiseMechanism::kNone))
    ->Arg(static_cast<int>(NoiseMechanism::kDiscreteGaussian))
    ->Arg(static_cast<int>(NoiseMechanism::kSkellam))
    ->MeasureProcessCPUTime()
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// The encoding a coordinator plans for a cohort of state.range(0) clients (noise multiplier 1,
// clip norm 1, the default 32-bit ring), with the mechanism state.range(1): γ from
// coordinator::ChooseScale and each client's share of the noise, σ = γ/√n, about 10^8 for
// three clients (a Skellam mean of about 10^16).
void BM_EncodeAsPlanned(benchmark::State& state) {
  const int64_t clients = state.range(0);
  const auto mechanism = static_cast<NoiseMechanism>(state.range(1));
  privacy::RingEncoding encoding;
  encoding.clip_norm = 1.0;
  encoding.scale = coordinator::ChooseScale(kRingBits, clients, kDimension, 1.0, 1.0);
  encoding.rounding_beta = 0.6065306597;
  encoding.mechanism = mechanism;
  encoding.local_noise_variance = encoding.scale * encoding.scale / static_cast<double>(clients);
  encoding.ring_bits = kRingBits;
  RunEncoding(state, encoding,
              mechanism == NoiseMechanism::kSkellam
                  ? "skellam, as planned for the cohort"
                  : "discrete gaussian, as planned for the cohort");
  state.counters["clients"] = static_cast<double>(clients);
}
BENCHMARK(BM_EncodeAsPlanned)
    ->Args({3, static_cast<int>(NoiseMechanism::kDiscreteGaussian)})
    ->Args({100, static_cast<int>(NoiseMechanism::kDiscreteGaussian)})
    ->Args({3, static_cast<int>(NoiseMechanism::kSkellam)})
    ->MeasureProcessCPUTime()
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

void BM_Rotate(benchmark::State& state) {
  auto rotation = privacy::RandomizedHadamard::Create(kDimension, std::string(32, 'r'));
  std::vector<double> input(kDimension, 0.5);
  std::vector<double> output(rotation->padded_dimension());
  for (auto _ : state) {
    (void)rotation->Rotate(input, output);
    benchmark::DoNotOptimize(output.data());
  }
  SetConfiguration(state, "rotation only");
}
BENCHMARK(BM_Rotate)->Unit(benchmark::kMillisecond);

// The stream the encoder draws its noise from: an AES-128-CTR fork of a system stream.
privacy::SecureRandom NoiseStream() { return *privacy::SecureRandom::FromSystem()->Fork(); }

// The noise alone, by the exact algorithm one draw at a time (CKS20), and by the table in bulk
// as the encoder draws it, from the same kind of stream; σ = state.range(0).
void BM_DiscreteGaussianNoise(benchmark::State& state) {
  const auto sigma = static_cast<double>(state.range(0));
  privacy::SecureRandom random = NoiseStream();
  std::vector<int64_t> noise(kDimension);
  const privacy::DiscreteGaussianSampler sampler(sigma * sigma);
  for (auto _ : state) {
    for (int64_t& x : noise) x = sampler.Sample(random);
    benchmark::DoNotOptimize(noise.data());
  }
  SetConfiguration(state, "discrete gaussian sampling only, one at a time (CKS20)");
  state.counters["sigma"] = sigma;
}
BENCHMARK(BM_DiscreteGaussianNoise)->Arg(100)->Arg(100'000'000)->Unit(benchmark::kMillisecond);

void BM_TabulatedDiscreteGaussianNoise(benchmark::State& state) {
  const auto sigma = static_cast<double>(state.range(0));
  privacy::SecureRandom random = NoiseStream();
  std::vector<int64_t> noise(kDimension);
  const privacy::TabulatedNoise sampler = privacy::TabulatedNoise::DiscreteGaussian(sigma * sigma);
  for (auto _ : state) {
    sampler.Fill(noise, random);
    benchmark::DoNotOptimize(noise.data());
  }
  SetConfiguration(state, "discrete gaussian sampling only, tabulated, in bulk");
  state.counters["sigma"] = sigma;
}
BENCHMARK(BM_TabulatedDiscreteGaussianNoise)
    ->Arg(100)
    ->Arg(100'000'000)
    ->Unit(benchmark::kMillisecond);

// What a client's SecAgg+ masking of the same vector costs: one self mask and k pairwise masks
// from secure_agg's MaskGenerator (HKDF-derived AES-128-CTR keystreams, added mod 2^b).
void BM_SecAggMasking(benchmark::State& state) {
  const auto neighbors = static_cast<uint32_t>(state.range(0));
  std::vector<uint64_t> vector(kDimension, 7);
  for (auto _ : state) {
    MaskAsOneClient(vector, neighbors, kRingBits);
    benchmark::DoNotOptimize(vector.data());
  }
  SetConfiguration(state, "secagg+ masking: self mask and k pairwise masks");
  state.counters["neighbors"] = neighbors;
}
BENCHMARK(BM_SecAggMasking)->Arg(8)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace fedmoe::bench

int main(int argc, char** argv) { return fedmoe::bench::RunBenchmarks(argc, argv); }
