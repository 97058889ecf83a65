// What only the CPU simulator of CUDA can show: a device that runs out of memory (the simulator
// can shrink its devices; a GPU cannot). Linked into cuda_training_sim_test alone.
#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/sim/control.h"
#include "model/cuda_training.h"
#include "model/init.h"
#include "tests/model/cuda_backend_testing.h"

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

}  // namespace
}  // namespace fedmoe::model
