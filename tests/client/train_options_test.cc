// Fitting the training device to the model: a GPU that auto chose but cannot train the model
// gives way to the CPU; one asked for by name is an error.
#include "client/train_options.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace fedmoe::client {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;

model::MoeConfig ConfigWithHeadDim(int64_t head_dim) {
  model::MoeConfig config;
  config.num_attention_heads = 4;
  config.num_key_value_heads = 2;
  config.head_dim = head_dim;
  config.num_local_experts = 8;
  return config;
}

// Settings as Resolve leaves them on a machine whose GPU answered.
ComputeSettings ResolvedToGpu(const std::string& device_name, const std::string& precision_name) {
  ComputeSettings settings;
  settings.device_name = device_name;
  settings.matmul_precision_name = precision_name;
  settings.device = kernels::Device::kCuda;
  settings.matmul_precision = model::MatMulPrecision::kBfloat16;
  return settings;
}

TEST(ComputeSettingsTest, AGpuChosenByAutoThatCannotTrainTheModelGivesWayToTheCpu) {
  // head_dim 24: the CPU kernels take any head_dim; the GPU's attention takes 16 to 128 in
  // powers of two (in a build without CUDA kernels, no model at all).
  ComputeSettings settings = ResolvedToGpu("auto", "fp32");
  absl::StatusOr<std::string> fallback = settings.FitToModel(ConfigWithHeadDim(24));
  ASSERT_TRUE(fallback.ok()) << fallback.status();
  EXPECT_THAT(*fallback, HasSubstr("training on the CPU"));
  EXPECT_EQ(settings.device, kernels::Device::kCpu);
  EXPECT_EQ(settings.matmul_precision, model::MatMulPrecision::kFloat32) << "fp32 was asked for";
  EXPECT_EQ(settings.device_name, "auto") << "what was written stays as written";

  // The precision is then what auto gives on the CPU, not the GPU's bf16.
  ComputeSettings automatic = ResolvedToGpu("auto", "auto");
  ASSERT_TRUE(automatic.FitToModel(ConfigWithHeadDim(24)).ok());
  EXPECT_EQ(automatic.matmul_precision,
            *model::ResolveMatMulPrecision("auto", kernels::Device::kCpu));
}

TEST(ComputeSettingsTest, AGpuAskedForByNameThatCannotTrainTheModelIsAnError) {
  ComputeSettings settings = ResolvedToGpu("cuda", "auto");
  absl::StatusOr<std::string> fallback = settings.FitToModel(ConfigWithHeadDim(24));
  ASSERT_FALSE(fallback.ok());
  EXPECT_THAT(std::string(fallback.status().message()), HasSubstr("device cuda: "));
  EXPECT_EQ(settings.device, kernels::Device::kCuda) << "nothing changed";
}

TEST(ComputeSettingsTest, TheCpuTakesEveryModelAsItIs) {
  ComputeSettings settings;
  settings.device_name = "cpu";
  settings.matmul_precision_name = "bf16";
  settings.matmul_precision = model::MatMulPrecision::kBfloat16;
  absl::StatusOr<std::string> fallback = settings.FitToModel(ConfigWithHeadDim(24));
  ASSERT_TRUE(fallback.ok());
  EXPECT_THAT(*fallback, IsEmpty());
  EXPECT_EQ(settings.matmul_precision, model::MatMulPrecision::kBfloat16);
}

}  // namespace
}  // namespace fedmoe::client
