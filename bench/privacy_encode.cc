// The distributed-DP encoding of a 1M-value update (clip, rotate, scale, round, noise, wrap)
// and its stages, beside the cost of SecAgg+ masking the same vector with k = 8 neighbours.
//
// secure_agg/ does not exist yet, so the masking side is measured as what it must at least do:
// expand k AES-128-CTR keystreams of d·b/8 bytes each (OpenSSL EVP) and add them into the
// vector mod 2^b. Replace it with secure_agg's own masking when that lands.
#include <openssl/evp.h>

#include <cstring>
#include <vector>

#include "bench/json_lines_reporter.h"
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

void BM_Encode(benchmark::State& state) {
  const auto mechanism = static_cast<NoiseMechanism>(state.range(0));
  privacy::RingEncoding encoding;
  encoding.clip_norm = 1.0;
  encoding.scale = 4096.0;
  encoding.rounding_beta = 0.6065306597;  // e^-0.5
  encoding.mechanism = mechanism;
  encoding.local_noise_variance = mechanism == NoiseMechanism::kNone ? 0.0 : 1.0e4;
  encoding.ring_bits = kRingBits;
  auto encoder = privacy::RingEncoder::Create(kDimension, encoding);
  privacy::SecureRandom random = *privacy::SecureRandom::FromSystem();
  const std::vector<float> update = Update();
  for (auto _ : state) {
    auto encoded = encoder->Encode(update, random);
    benchmark::DoNotOptimize(encoded->data());
  }
  SetConfiguration(state, mechanism == NoiseMechanism::kNone               ? "no noise"
                          : mechanism == NoiseMechanism::kDiscreteGaussian ? "discrete gaussian"
                                                                           : "skellam");
  state.counters["local_noise_variance"] = encoding.local_noise_variance;
}
BENCHMARK(BM_Encode)
    ->Arg(static_cast<int>(NoiseMechanism::kNone))
    ->Arg(static_cast<int>(NoiseMechanism::kDiscreteGaussian))
    ->Arg(static_cast<int>(NoiseMechanism::kSkellam))
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

void BM_DiscreteGaussianNoise(benchmark::State& state) {
  privacy::SecureRandom random = *privacy::SecureRandom::FromSystem();
  std::vector<int64_t> noise(kDimension);
  const privacy::DiscreteGaussianSampler sampler(1.0e4);
  for (auto _ : state) {
    for (int64_t& x : noise) x = sampler.Sample(random);
    benchmark::DoNotOptimize(noise.data());
  }
  SetConfiguration(state, "discrete gaussian sampling only");
}
BENCHMARK(BM_DiscreteGaussianNoise)->Unit(benchmark::kMillisecond);

// What SecAgg+ masking costs at least: k keystreams of d·b/8 bytes, each added in.
void BM_MaskingLowerBound(benchmark::State& state) {
  const auto neighbors = static_cast<int>(state.range(0));
  std::vector<uint32_t> vector(kDimension, 7);
  std::vector<uint32_t> keystream(kDimension);
  EVP_CIPHER_CTX* cipher = EVP_CIPHER_CTX_new();
  const unsigned char key[16] = {1};
  const unsigned char iv[16] = {};
  for (auto _ : state) {
    for (int k = 0; k < neighbors; ++k) {
      EVP_EncryptInit_ex(cipher, EVP_aes_128_ctr(), nullptr, key, iv);
      std::memset(keystream.data(), 0, keystream.size() * sizeof(uint32_t));
      int written = 0;
      auto* bytes = reinterpret_cast<unsigned char*>(keystream.data());
      EVP_EncryptUpdate(cipher, bytes, &written, bytes,
                        static_cast<int>(keystream.size() * sizeof(uint32_t)));
      for (size_t i = 0; i < kDimension; ++i) vector[i] += keystream[i];  // mod 2^32
    }
    benchmark::DoNotOptimize(vector.data());
  }
  EVP_CIPHER_CTX_free(cipher);
  SetConfiguration(state, "masking lower bound (AES-128-CTR + add)");
  state.counters["neighbors"] = neighbors;
}
BENCHMARK(BM_MaskingLowerBound)->Arg(8)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace fedmoe::bench

int main(int argc, char** argv) { return fedmoe::bench::RunBenchmarks(argc, argv); }
