// What only the CPU simulator of CUDA can show: a device that runs out of memory under training
// and under decoding (the simulator can shrink its devices; a GPU cannot). Linked into
// cuda_training_sim_test alone.
#include <algorithm>
#include <cmath>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/sim/control.h"
#include "model/cuda_generation.h"
#include "model/cuda_training.h"
#include "model/init.h"
#include "tests/model/cuda_backend_testing.h"
#include "tests/testing_tiny_model.h"

namespace fedmoe::model {
namespace {

using testing::LossOptions;
using testing::RandomBatch;

BackendOptions OneGpu() {
  BackendOptions options;
  options.devices = 1;
  return options;
}

// A device too small for the model, then for a batch, says which and what to change, and the
// backend goes on with a batch that fits. (The simulator can shrink its devices; a GPU cannot.)
TEST(CudaTrainingErrorsTest, RunningOutOfDeviceMemoryIsAClearErrorAndLosesNothing) {
  struct CapacityReset {
    ~CapacityReset() { cuda_sim::SetDeviceMemoryCapacity(0); }
  } reset;
  const MoeConfig config = testing::SmallCudaConfig();
  const ModelParameters parameters = InitializeModel(config, 3);
  // fp32 weights, gradient and two moments.
  const size_t state = parameters.values().size() * 4 * sizeof(float);
  cuda_sim::SetDeviceMemoryCapacity(state / 2);
  absl::StatusOr<std::unique_ptr<TrainingBackend>> refused =
      CreateCudaTrainingBackend(parameters, OneGpu());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.status().message().find("GPU 0 cannot hold the model"), std::string::npos)
      << refused.status();

  // Room for the model and a small batch, not for 64 sequences of 60 tokens.
  cuda_sim::SetDeviceMemoryCapacity(state + (size_t{4} << 20));
  absl::StatusOr<std::unique_ptr<TrainingBackend>> gpu =
      CreateCudaTrainingBackend(parameters, OneGpu());
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  const Batch small = RandomBatch(config, 1, 8, 1);
  ASSERT_TRUE((*gpu)->AccumulateGradients(small, LossOptions(small)).ok());
  const Batch large = RandomBatch(config, 64, 60, 2);
  absl::StatusOr<LossBreakdown> too_large = (*gpu)->AccumulateGradients(large, LossOptions(large));
  EXPECT_EQ(too_large.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(too_large.status().message().find(
                "GPU 0 has no room for the activations of 64 sequences of 60 tokens; lower "
                "batch_size or seq_len"),
            std::string::npos)
      << too_large.status();
  EXPECT_EQ((*gpu)->Evaluate(large).status().code(), absl::StatusCode::kResourceExhausted);
  // The step's gradient from the small batch is still there, and the backend still trains.
  std::vector<float> gradients(parameters.values().size());
  ASSERT_TRUE((*gpu)->CopyGradientsTo(gradients).ok());
  EXPECT_TRUE(std::any_of(gradients.begin(), gradients.end(), [](float g) { return g != 0; }));
  EXPECT_TRUE((*gpu)->AccumulateGradients(small, LossOptions(small)).ok());
  EXPECT_TRUE((*gpu)->ApplyGradients(1e-2, 0.25).ok());
}

// The GPU decoder on a device with room for its model and a short step but not a long one: the
// long step is refused with ResourceExhausted, saying what it asked for, and the decoder then
// runs a short step as it did before, with the CPU decoder's logits.
TEST(CudaDecoderMemoryTest, AStepThatDoesNotFitIsRefusedAndTheDecoderGoesOn) {
  struct CapacityReset {
    ~CapacityReset() { cuda_sim::SetDeviceMemoryCapacity(0); }
  } reset;
  const MoeConfig config = testing::SmallCudaConfig();
  const FrozenBase base =
      FrozenBase::FromParameters(InitializeModel(config, 3), WeightFormat::kFloat32);
  const LoraAdapters adapters = BaseOnlyAdapters(base);
  const std::vector<int32_t> prompt = testing::RandomTokens(4, config.vocab_size, 1);
  std::unique_ptr<BatchDecoder> cpu = *BatchDecoder::Create(base, adapters);
  KvCache expected_cache = cpu->NewCache();
  const DecodeSegment expected_step{.cache = &expected_cache, .tokens = prompt};
  const std::vector<float> expected = [&] {
    absl::StatusOr<std::span<const float>> logits = cpu->Step({&expected_step, 1});
    EXPECT_TRUE(logits.ok()) << logits.status();
    return std::vector<float>(logits->begin(), logits->end());
  }();

  // The smallest capacity, in 16 KiB steps, that takes the decoder and a 4-token step.
  std::unique_ptr<Decoder> gpu;
  size_t capacity = 0;
  for (size_t kib = 64; kib <= 64 * 1024 && gpu == nullptr; kib += 16) {
    capacity = kib << 10;
    cuda_sim::SetDeviceMemoryCapacity(capacity);
    absl::StatusOr<std::unique_ptr<Decoder>> made = CreateCudaDecoder(base, adapters);
    if (!made.ok()) continue;
    KvCache probe = (*made)->NewCache();
    const DecodeSegment step{.cache = &probe, .tokens = prompt};
    if ((*made)->Step({&step, 1}).ok()) gpu = *std::move(made);
  }
  ASSERT_NE(gpu, nullptr) << "no capacity up to 64 MiB took the decoder";

  // Eight sequences of 48 tokens need more activations and caches than that.
  std::vector<std::vector<int32_t>> texts;
  std::vector<KvCache> caches;
  std::vector<DecodeSegment> segments;
  for (uint32_t i = 0; i < 8; ++i) {
    texts.push_back(testing::RandomTokens(48, config.vocab_size, 10 + i));
    caches.push_back(gpu->NewCache());
  }
  for (size_t i = 0; i < texts.size(); ++i) segments.push_back({&caches[i], texts[i]});
  absl::StatusOr<std::span<const float>> refused = gpu->Step(segments);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  EXPECT_NE(refused.status().message().find("no room"), std::string::npos) << refused.status();
  for (const KvCache& cache : caches) EXPECT_EQ(cache.length(), 0);
  // As Decoder::Step says, a failed step's caches are dropped (the engine fails their requests).
  segments.clear();
  caches.clear();

  KvCache again = gpu->NewCache();
  const DecodeSegment step{.cache = &again, .tokens = prompt};
  absl::StatusOr<std::span<const float>> logits = gpu->Step({&step, 1});
  ASSERT_TRUE(logits.ok()) << "at a capacity of " << capacity << " bytes: " << logits.status();
  ASSERT_EQ(logits->size(), expected.size());
  for (size_t v = 0; v < expected.size(); ++v) {
    EXPECT_NEAR((*logits)[v], expected[v], 2e-4 * (1 + std::abs(expected[v]))) << "logit " << v;
  }
}

}  // namespace
}  // namespace fedmoe::model
