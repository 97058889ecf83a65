// The CUDA training backend against the CPU one: the same micro-batch's loss and every
// gradient, the optimizer step, the routing histogram and evaluation, in fp32 and in bf16
// products; then the whole training loop (trainer.h) on both devices.
//
// Compiled once and linked twice: cuda_training_sim_test runs the CUDA backend on the CPU
// simulator of CUDA (always), cuda_training_test on a GPU (skipping itself without one).
#include "model/cuda_training.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <ostream>
#include <random>
#include <string>

#include "gtest/gtest.h"
#include "kernels/cpu/bf16.h"
#include "model/init.h"
#include "model/tokenizer.h"
#include "model/trainer.h"
#include "tests/kernels/cuda_test_support.h"
#include "tests/model/cuda_backend_testing.h"

namespace fedmoe::model {
namespace {

using testing::ExpectTensorsNear;
using testing::LossOptions;
using testing::RandomBatch;

MoeConfig SmallConfig() { return testing::SmallCudaConfig(); }

BackendOptions OneGpu() {
  BackendOptions options;
  options.devices = 1;
  return options;
}

// The largest |actual − expected| of any tensor, as a fraction of that tensor's largest
// magnitude (ExpectTensorsNear's measure). A tensor that should be all zero (a frozen one) and
// is not counts as infinitely far.
double WorstErrorOfTensorScale(const ModelLayout& layout, const std::vector<float>& actual,
                               const std::vector<float>& expected) {
  double worst = 0;
  for (const TensorSpec& spec : layout.tensors()) {
    double scale = 0;
    double error = 0;
    for (int64_t i = 0; i < spec.size; ++i) {
      const auto at = static_cast<size_t>(spec.offset + i);
      scale = std::max(scale, std::abs(double{expected[at]}));
      error = std::max(error, std::abs(double{actual[at]} - expected[at]));
    }
    if (scale > 0) {
      worst = std::max(worst, error / scale);
    } else if (error > 1e-12) {
      return std::numeric_limits<double>::infinity();
    }
  }
  return worst;
}

// The other arrangement of the model's options: tied embeddings (the output head's gradient and
// the embedding's add into one tensor), top-1 routing, no shared experts, no window, no
// grouping of KV heads, head_dim 32.
MoeConfig OtherConfig() {
  MoeConfig config = SmallConfig();
  config.tie_word_embeddings = true;
  config.num_experts_per_tok = 1;
  config.n_shared_experts = 0;
  config.shared_expert_intermediate_size = 0;
  config.sliding_window = 0;
  config.num_attention_heads = 2;
  config.num_key_value_heads = 2;
  config.head_dim = 32;
  return config;
}

struct Case {
  MatMulPrecision precision;
  TrainableSet trainable;
  const char* name;
  MoeConfig (*config)() = SmallConfig;
  bool concurrent_expert_products = false;
};

// Test names and ctest's list show the name, not the struct's bytes.
void PrintTo(const Case& test_case, std::ostream* out) { *out << test_case.name; }

// The first step starts from identical parameters: fp32 products agree with the CPU to float
// rounding, bf16 ones to the rounding of operands that are each rounded the same way on both
// sides but summed in a different order. The second starts from parameters that already differ
// a little: AdamW moves each value by about the learning rate whatever the size of its
// gradient, so a near-zero gradient's rounding noise becomes a visible difference.
double Tolerance(MatMulPrecision precision, int step) {
  if (precision == MatMulPrecision::kFloat32) return step == 0 ? 1e-5 : 1e-3;
  return step == 0 ? 3e-3 : 2e-2;
}

// bf16 products with tensor-core attention against the CPU's fp32 attention, first step.
// TF32 moves attention's outputs by about 1e-3 of their scale; where that pushes an activation
// across a bf16 rounding boundary, it moves by a bf16 step (2^-8), so every tensor's gradient
// lands some 5e-3 of its scale away (measured on the simulator: at most 6.7e-3, every tensor
// alike; the loss 7e-5), where fp32 attention gave 8e-4.
constexpr double kTensorCoreLossTolerance = 3e-4;
constexpr double kTensorCoreGradientTolerance = 1.5e-2;

constexpr double kLearningRate = 1e-2;
constexpr double kMaxNorm = 0.25;

class CudaTrainingTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    FEDMOE_REQUIRE_CUDA();
    if (GetParam().precision == MatMulPrecision::kBfloat16) {
      // The CPU reference needs oneDNN's bf16 product; the GPU side does not.
      if (absl::Status status = kernels::cpu::CheckBf16MatMul(); !status.ok()) {
        GTEST_SKIP() << "no CPU reference for bf16 here: " << status.message();
      }
    }
  }

  // Attention stays fp32 on the GPU, as on the CPU, so that everything else compares at the
  // tolerances above; its tensor-core arithmetic has its own test below.
  BackendOptions Options() const {
    return {.trainable = GetParam().trainable,
            .adamw = {},
            .matmul_precision = GetParam().precision,
            .tensor_core_attention = false,
            .concurrent_expert_products = GetParam().concurrent_expert_products};
  }
};

TEST_P(CudaTrainingTest, TwoStepsMatchTheCpuBackend) {
  const MoeConfig config = GetParam().config();
  ModelParameters cpu_parameters = InitializeModel(config, 7);
  const ModelParameters initial = cpu_parameters;
  absl::StatusOr<std::unique_ptr<TrainingBackend>> cpu =
      CreateCpuTrainingBackend(cpu_parameters, Options());
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  absl::StatusOr<std::unique_ptr<TrainingBackend>> gpu =
      CreateCudaTrainingBackend(initial, Options());
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  const auto size = static_cast<size_t>(initial.layout().total_size());

  for (int step = 0; step < 2; ++step) {
    SCOPED_TRACE(::testing::Message() << "step " << step);
    const double tolerance = Tolerance(GetParam().precision, step);
    // The second batch has another shape (as dynamic SFT batches do): buffers and RoPE tables
    // sized for the first must serve it.
    const Batch batch =
        step == 0 ? RandomBatch(config, 2, 13, 100) : RandomBatch(config, 3, 9, 101);
    absl::StatusOr<LossBreakdown> cpu_loss = (*cpu)->AccumulateGradients(batch, LossOptions(batch));
    absl::StatusOr<LossBreakdown> gpu_loss = (*gpu)->AccumulateGradients(batch, LossOptions(batch));
    ASSERT_TRUE(cpu_loss.ok()) << cpu_loss.status();
    ASSERT_TRUE(gpu_loss.ok()) << gpu_loss.status();
    EXPECT_NEAR(gpu_loss->cross_entropy, cpu_loss->cross_entropy, 1e-2 * tolerance);
    EXPECT_NEAR(gpu_loss->balance_per_layer, cpu_loss->balance_per_layer, 1e-5);
    EXPECT_NEAR(gpu_loss->balance, cpu_loss->balance, 1e-6);
    EXPECT_EQ(gpu_loss->predictions, cpu_loss->predictions);

    std::vector<float> cpu_gradients(size), gpu_gradients(size);
    ASSERT_TRUE((*cpu)->CopyGradientsTo(cpu_gradients).ok());
    ASSERT_TRUE((*gpu)->CopyGradientsTo(gpu_gradients).ok());
    ExpectTensorsNear(initial.layout(), gpu_gradients, cpu_gradients, tolerance, "gradient");
    // Not a vacuous comparison: the trained tensors have gradients, the frozen ones none.
    for (const TensorSpec& spec : initial.layout().tensors()) {
      const auto first = cpu_gradients.begin() + spec.offset;
      const bool any = std::any_of(first, first + spec.size, [](float g) { return g != 0; });
      if (!GetParam().trainable.Includes(spec.role)) {
        EXPECT_FALSE(any) << spec.name << " is frozen but has a gradient";
      }
    }

    absl::StatusOr<double> cpu_norm = (*cpu)->ApplyGradients(kLearningRate, kMaxNorm);
    absl::StatusOr<double> gpu_norm = (*gpu)->ApplyGradients(kLearningRate, kMaxNorm);
    ASSERT_TRUE(cpu_norm.ok() && gpu_norm.ok());
    EXPECT_GT(*cpu_norm, kMaxNorm) << "the test should exercise clipping";
    EXPECT_NEAR(*gpu_norm, *cpu_norm, tolerance * *cpu_norm);
    ASSERT_TRUE((*gpu)->CopyGradientsTo(gpu_gradients).ok());
    EXPECT_TRUE(std::all_of(gpu_gradients.begin(), gpu_gradients.end(), [](float g) {
      return g == 0;
    })) << "a step leaves a zero gradient for the next one";
  }

  ModelParameters gpu_parameters(config);
  ASSERT_TRUE((*gpu)->CopyParametersTo(gpu_parameters).ok());
  std::vector<float> expected(cpu_parameters.values().begin(), cpu_parameters.values().end());
  std::vector<float> actual(gpu_parameters.values().begin(), gpu_parameters.values().end());
  // Each value moved by about the learning rate per step; all but a few (the near-zero
  // gradients, see Tolerance) moved the same on both devices.
  int64_t apart = 0;
  for (size_t i = 0; i < size; ++i) {
    ASSERT_NEAR(actual[i], expected[i], 2 * 2 * kLearningRate) << "parameter " << i;
    apart += std::abs(actual[i] - expected[i]) > 0.02 * kLearningRate ? 1 : 0;
  }
  EXPECT_LT(static_cast<double>(apart), 0.002 * static_cast<double>(size));
  int64_t moved = 0;
  for (size_t i = 0; i < size; ++i) moved += actual[i] != initial.values()[i] ? 1 : 0;
  EXPECT_GT(moved, 0);

  absl::StatusOr<std::vector<std::vector<int64_t>>> cpu_slots = (*cpu)->ExpertSlots();
  absl::StatusOr<std::vector<std::vector<int64_t>>> gpu_slots = (*gpu)->ExpertSlots();
  ASSERT_TRUE(cpu_slots.ok() && gpu_slots.ok());
  EXPECT_EQ(*gpu_slots, *cpu_slots);
  int64_t routed = 0;
  for (const int64_t count : gpu_slots->front()) routed += count;
  // 2 × 13 and 3 × 9 tokens, each routed to top_k experts.
  const int64_t tokens = int64_t{2} * 13 + int64_t{3} * 9;
  EXPECT_EQ(routed, tokens * config.num_experts_per_tok);

  // Evaluation is fp32 whatever the training precision, on both devices.
  const Batch held_out = RandomBatch(config, 3, 11, 7);
  absl::StatusOr<LossSum> cpu_eval = (*cpu)->Evaluate(held_out);
  absl::StatusOr<LossSum> gpu_eval = (*gpu)->Evaluate(held_out);
  ASSERT_TRUE(cpu_eval.ok() && gpu_eval.ok());
  EXPECT_EQ(gpu_eval->predictions, cpu_eval->predictions);
  EXPECT_NEAR(gpu_eval->total / gpu_eval->predictions, cpu_eval->total / cpu_eval->predictions,
              1e-4);
}

const TrainableSet kEverything{true, true, true, true, true, true, true};

INSTANTIATE_TEST_SUITE_P(
    PrecisionsAndTrainableSets, CudaTrainingTest,
    ::testing::Values(Case{MatMulPrecision::kFloat32, kEverything, "fp32_everything"},
                      Case{MatMulPrecision::kFloat32, TrainableSet{}, "fp32_update_spec"},
                      Case{MatMulPrecision::kBfloat16, kEverything, "bf16_everything"},
                      Case{MatMulPrecision::kFloat32, kEverything, "fp32_other_config",
                           OtherConfig},
                      Case{MatMulPrecision::kBfloat16, TrainableSet{},
                           "bf16_update_spec_concurrent_expert_products", SmallConfig, true}),
    [](const ::testing::TestParamInfo<Case>& test) { return std::string(test.param.name); });

// bf16 training's default on a GPU: attention's products on the tensor cores, with TF32
// operands. A step from the CPU's parameters stays near the CPU's (whose attention is fp32)
// by TF32's rounding, well inside the bf16 products' own; and it is not the fp32-attention
// step under another name.
TEST(CudaTrainingTensorCoreTest, Bf16StepWithTensorCoreAttentionStaysNearTheCpu) {
  FEDMOE_REQUIRE_CUDA();
  if (absl::Status status = kernels::cpu::CheckBf16MatMul(); !status.ok()) {
    GTEST_SKIP() << "no CPU reference for bf16 here: " << status.message();
  }
  const MoeConfig config = SmallConfig();
  const ModelParameters parameters = InitializeModel(config, 7);
  BackendOptions options{
      .trainable = kEverything, .adamw = {}, .matmul_precision = MatMulPrecision::kBfloat16};
  ASSERT_TRUE(options.tensor_core_attention) << "the default this test is about";
  ModelParameters cpu_parameters = parameters;
  absl::StatusOr<std::unique_ptr<TrainingBackend>> cpu =
      CreateCpuTrainingBackend(cpu_parameters, options);
  absl::StatusOr<std::unique_ptr<TrainingBackend>> tensor_cores =
      CreateCudaTrainingBackend(parameters, options);
  options.tensor_core_attention = false;
  absl::StatusOr<std::unique_ptr<TrainingBackend>> fp32_attention =
      CreateCudaTrainingBackend(parameters, options);
  ASSERT_TRUE(cpu.ok() && tensor_cores.ok() && fp32_attention.ok());

  const Batch batch = RandomBatch(config, 2, 13, 100);
  const auto size = static_cast<size_t>(parameters.layout().total_size());
  std::vector<float> cpu_gradients(size), gradients(size), fp32_attention_gradients(size);
  absl::StatusOr<LossBreakdown> cpu_loss = (*cpu)->AccumulateGradients(batch, LossOptions(batch));
  absl::StatusOr<LossBreakdown> loss =
      (*tensor_cores)->AccumulateGradients(batch, LossOptions(batch));
  ASSERT_TRUE(cpu_loss.ok() && loss.ok());
  ASSERT_TRUE((*fp32_attention)->AccumulateGradients(batch, LossOptions(batch)).ok());
  ASSERT_TRUE((*cpu)->CopyGradientsTo(cpu_gradients).ok());
  ASSERT_TRUE((*tensor_cores)->CopyGradientsTo(gradients).ok());
  ASSERT_TRUE((*fp32_attention)->CopyGradientsTo(fp32_attention_gradients).ok());

  EXPECT_NEAR(loss->cross_entropy, cpu_loss->cross_entropy, kTensorCoreLossTolerance);
  EXPECT_NEAR(loss->balance, cpu_loss->balance, 1e-4);
  EXPECT_LE(WorstErrorOfTensorScale(parameters.layout(), gradients, cpu_gradients),
            kTensorCoreGradientTolerance);
  EXPECT_NE(gradients, fp32_attention_gradients);
  absl::StatusOr<std::vector<std::vector<int64_t>>> cpu_slots = (*cpu)->ExpertSlots();
  absl::StatusOr<std::vector<std::vector<int64_t>>> slots = (*tensor_cores)->ExpertSlots();
  ASSERT_TRUE(cpu_slots.ok() && slots.ok());
  EXPECT_EQ(*slots, *cpu_slots);
}

// DP-SGD's micro-batch: three records of one to three windows, each clipped, on the GPU (one
// backward pass per record) against the CPU (Gram norms and book-keeping): the same norms, the
// same clipped sum, and the noise step's round trip through host memory.
TEST(CudaRecordClippingTest, ClippedSumsMatchTheCpuBackend) {
  FEDMOE_REQUIRE_CUDA();
  const MoeConfig config = SmallConfig();
  ModelParameters cpu_parameters = InitializeModel(config, 9);
  const ModelParameters initial = cpu_parameters;
  BackendOptions options = OneGpu();
  options.trainable = *TrainableSet::Parse("experts,router,attention,norms");
  options.tensor_core_attention = false;
  absl::StatusOr<std::unique_ptr<TrainingBackend>> cpu =
      CreateCpuTrainingBackend(cpu_parameters, options);
  absl::StatusOr<std::unique_ptr<TrainingBackend>> gpu =
      CreateCudaTrainingBackend(initial, options);
  ASSERT_TRUE(cpu.ok() && gpu.ok());
  const Batch whole = RandomBatch(config, 6, 8, 300);
  RecordRows records;
  for (const int64_t windows : {3, 1, 2}) {
    records.row_begin.push_back(records.row_begin.back() + windows * whole.seq_len);
  }
  const BackwardOptions loss{.balance_coefficient = 0.05, .predictions_in_step = 1};
  const auto routing_values =
      static_cast<size_t>(config.num_hidden_layers * config.num_local_experts);
  PrivateBatch cpu_out, gpu_out;
  cpu_out.routing_sum.assign(routing_values, 0.0);
  // A clip norm between the records' norms, from a first CPU pass.
  ASSERT_TRUE((*cpu)->AccumulateClippedGradients(whole, records, loss, 1e9, 1.0, cpu_out).ok());
  const std::vector<double> cpu_first_norms = cpu_out.record_norms;
  ASSERT_EQ(cpu_first_norms.size(), 3U);
  const double clip = 0.5 * (*std::min_element(cpu_first_norms.begin(), cpu_first_norms.end()) +
                             *std::max_element(cpu_first_norms.begin(), cpu_first_norms.end()));
  // Each record's fractions sum to one per layer: three records, two layers.
  double routed = 0;
  for (const double value : cpu_out.routing_sum) routed += value;
  EXPECT_NEAR(routed, 3.0 * config.num_hidden_layers, 1e-9);
  cpu_out.routing_sum.assign(routing_values, 0.0);
  gpu_out.routing_sum.assign(routing_values, 0.0);
  const auto size = static_cast<size_t>(initial.layout().total_size());
  ASSERT_TRUE((*cpu)
                  ->UpdateStepGradients([](std::span<float> gradients) {
                    std::fill(gradients.begin(), gradients.end(), 0.0F);
                    return absl::OkStatus();
                  })
                  .ok());
  absl::StatusOr<LossBreakdown> cpu_loss =
      (*cpu)->AccumulateClippedGradients(whole, records, loss, clip, 0.5, cpu_out);
  absl::StatusOr<LossBreakdown> gpu_loss =
      (*gpu)->AccumulateClippedGradients(whole, records, loss, clip, 0.5, gpu_out);
  const std::vector<double>& cpu_norms = cpu_out.record_norms;
  const std::vector<double>& gpu_norms = gpu_out.record_norms;
  // The same routing, so the same fractions (routing is discrete: equal choices, equal sums).
  for (size_t i = 0; i < routing_values; ++i) {
    EXPECT_NEAR(gpu_out.routing_sum[i], cpu_out.routing_sum[i], 1e-12) << "routing " << i;
  }
  ASSERT_TRUE(cpu_loss.ok()) << cpu_loss.status();
  ASSERT_TRUE(gpu_loss.ok()) << gpu_loss.status();
  EXPECT_NEAR(gpu_loss->cross_entropy, cpu_loss->cross_entropy, 1e-4 * cpu_loss->cross_entropy);
  ASSERT_EQ(gpu_norms.size(), 3U);
  int clipped = 0;
  for (size_t r = 0; r < 3; ++r) {
    EXPECT_NEAR(gpu_norms[r], cpu_norms[r], 1e-4 * cpu_norms[r]) << "record " << r;
    clipped += cpu_norms[r] > clip ? 1 : 0;
  }
  EXPECT_GT(clipped, 0);
  EXPECT_LT(clipped, 3);
  std::vector<float> cpu_gradients(size), gpu_gradients(size);
  ASSERT_TRUE((*cpu)->CopyGradientsTo(cpu_gradients).ok());
  ASSERT_TRUE((*gpu)->CopyGradientsTo(gpu_gradients).ok());
  ExpectTensorsNear(initial.layout(), gpu_gradients, cpu_gradients, 1e-4, "clipped sum");

  // What the trainer does with the sum (noise, averaging) reaches the GPU's copy.
  ASSERT_TRUE((*gpu)
                  ->UpdateStepGradients([](std::span<float> gradients) {
                    for (float& g : gradients) g *= 2;
                    return absl::OkStatus();
                  })
                  .ok());
  ASSERT_TRUE((*gpu)->CopyGradientsTo(gpu_gradients).ok());
  for (float& g : cpu_gradients) g *= 2;
  ExpectTensorsNear(initial.layout(), gpu_gradients, cpu_gradients, 1e-4, "updated sum");
}

// A personal model's step: its last two experts private, balanced as their own group, and
// Ditto's proximal term pulling toward an anchor. Both are the CPU's arithmetic on the GPU.
TEST(CudaPersonalModelTest, GroupedBalanceAndTheProximalTermMatchTheCpuBackend) {
  FEDMOE_REQUIRE_CUDA();
  const MoeConfig config = SmallConfig();
  ModelParameters cpu_parameters = InitializeModel(config, 12);
  const ModelParameters initial = cpu_parameters;
  ModelParameters anchor = initial;
  for (float& value : anchor.values()) value -= 0.01F;
  BackendOptions options = OneGpu();
  options.trainable = *TrainableSet::Parse("experts,router");
  // The first four experts are the global ones, frozen as in a personal model's pass.
  options.trainable.first_trained_expert = 4;
  options.tensor_core_attention = false;
  options.proximal_coefficient = 0.3;
  options.proximal_anchor = anchor.values();
  absl::StatusOr<std::unique_ptr<TrainingBackend>> cpu =
      CreateCpuTrainingBackend(cpu_parameters, options);
  absl::StatusOr<std::unique_ptr<TrainingBackend>> gpu =
      CreateCudaTrainingBackend(initial, options);
  ASSERT_TRUE(cpu.ok() && gpu.ok());
  const Batch batch = RandomBatch(config, 2, 8, 41);
  BackwardOptions loss = LossOptions(batch);
  loss.balance_coefficient = 0.5;
  loss.private_experts = 2;
  for (int step = 0; step < 2; ++step) {
    absl::StatusOr<LossBreakdown> cpu_loss = (*cpu)->AccumulateGradients(batch, loss);
    absl::StatusOr<LossBreakdown> gpu_loss = (*gpu)->AccumulateGradients(batch, loss);
    ASSERT_TRUE(cpu_loss.ok() && gpu_loss.ok());
    EXPECT_NEAR(gpu_loss->balance, cpu_loss->balance, 1e-5 * cpu_loss->balance);
    absl::StatusOr<double> cpu_norm = (*cpu)->ApplyGradients(1e-3, 0);
    absl::StatusOr<double> gpu_norm = (*gpu)->ApplyGradients(1e-3, 0);
    ASSERT_TRUE(cpu_norm.ok() && gpu_norm.ok());
    EXPECT_NEAR(*gpu_norm, *cpu_norm, 1e-4 * *cpu_norm) << "step " << step;
  }
  ModelParameters gpu_parameters = initial;
  ASSERT_TRUE((*gpu)->CopyParametersTo(gpu_parameters).ok());
  const std::vector<float> expected(cpu_parameters.values().begin(), cpu_parameters.values().end());
  const std::vector<float> actual(gpu_parameters.values().begin(), gpu_parameters.values().end());
  ExpectTensorsNear(initial.layout(), actual, expected, 1e-4, "parameters");
  const TensorSpec& frozen =
      *initial.layout().Find("model.layers.1.block_sparse_moe.experts.3.w2.weight");
  const TensorSpec& trained =
      *initial.layout().Find("model.layers.1.block_sparse_moe.experts.5.w2.weight");
  EXPECT_TRUE(std::equal(gpu_parameters.tensor(frozen).begin(), gpu_parameters.tensor(frozen).end(),
                         initial.tensor(frozen).begin()));
  EXPECT_FALSE(std::equal(gpu_parameters.tensor(trained).begin(),
                          gpu_parameters.tensor(trained).end(), initial.tensor(trained).begin()));
}

TEST(CudaTrainingErrorsTest, BadBatchesAreRefusedAndTheBackendKeepsWorking) {
  FEDMOE_REQUIRE_CUDA();
  const MoeConfig config = SmallConfig();
  const ModelParameters parameters = InitializeModel(config, 3);
  absl::StatusOr<std::unique_ptr<TrainingBackend>> gpu =
      CreateCudaTrainingBackend(parameters, OneGpu());
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  const Batch good = RandomBatch(config, 1, 8, 1);

  Batch bad_token = good;
  bad_token.tokens[3] = static_cast<int32_t>(config.vocab_size);
  absl::StatusOr<LossBreakdown> refused = (*gpu)->AccumulateGradients(bad_token, LossOptions(good));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("outside the vocabulary"), std::string::npos)
      << refused.status();

  Batch bad_target = good;
  bad_target.targets[0] = static_cast<int32_t>(config.vocab_size + 4);
  EXPECT_EQ((*gpu)->Evaluate(bad_target).status().code(), absl::StatusCode::kInvalidArgument);

  Batch short_batch = good;
  short_batch.tokens.pop_back();
  EXPECT_EQ((*gpu)->Evaluate(short_batch).status().code(), absl::StatusCode::kInvalidArgument);

  absl::StatusOr<LossBreakdown> loss = (*gpu)->AccumulateGradients(good, LossOptions(good));
  ASSERT_TRUE(loss.ok()) << loss.status();
  EXPECT_TRUE(std::isfinite(loss->cross_entropy));
}

TEST(CudaTrainingErrorsTest, AModelTheKernelsDoNotTakeIsRefusedAtCreation) {
  FEDMOE_REQUIRE_CUDA();
  MoeConfig config = SmallConfig();
  config.num_attention_heads = 2;
  config.num_key_value_heads = 2;
  config.head_dim = 24;
  absl::StatusOr<std::unique_ptr<TrainingBackend>> gpu =
      CreateCudaTrainingBackend(InitializeModel(config, 1), OneGpu());
  EXPECT_EQ(gpu.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(gpu.status().message().find("head_dim"), std::string::npos) << gpu.status();
}

// Data parallelism over two GPUs (two simulated devices on the simulator): a micro-batch split
// between them trains as gradient accumulation over its two halves on the CPU, step for step.
TEST(CudaDataParallelTest, TwoGpusMatchGradientAccumulationOverTheHalves) {
  FEDMOE_REQUIRE_CUDA();
  if (!kernels::cuda::IsSimulator()) {
    const absl::StatusOr<int> gpus = kernels::CudaDeviceCount();
    if (!gpus.ok() || *gpus < 2) GTEST_SKIP() << "needs two GPUs";
  }
  const MoeConfig config = SmallConfig();
  ModelParameters cpu_parameters = InitializeModel(config, 5);
  const ModelParameters initial = cpu_parameters;
  const BackendOptions options{.trainable = kEverything,
                               .adamw = {},
                               .matmul_precision = MatMulPrecision::kFloat32,
                               .devices = 2};
  absl::StatusOr<std::unique_ptr<TrainingBackend>> cpu =
      CreateCpuTrainingBackend(cpu_parameters, options);
  absl::StatusOr<std::unique_ptr<TrainingBackend>> gpus_backend =
      CreateCudaTrainingBackend(initial, options);
  ASSERT_TRUE(cpu.ok() && gpus_backend.ok()) << gpus_backend.status();
  const auto size = static_cast<size_t>(initial.layout().total_size());

  // Three sequences: the first GPU takes two, the second one.
  const Batch batch = RandomBatch(config, 3, 10, 21);
  BackwardOptions whole = LossOptions(batch);
  absl::StatusOr<LossBreakdown> parallel = (*gpus_backend)->AccumulateGradients(batch, whole);
  ASSERT_TRUE(parallel.ok()) << parallel.status();
  LossBreakdown accumulated;
  BackwardOptions half = whole;
  half.step_share = 0.5;
  for (const auto& [first, count] : {std::pair<int64_t, int64_t>{0, 2}, {2, 1}}) {
    Batch part = batch;
    part.batch = count;
    part.tokens.assign(batch.tokens.begin() + first * 10,
                       batch.tokens.begin() + (first + count) * 10);
    part.targets.assign(batch.targets.begin() + first * 10,
                        batch.targets.begin() + (first + count) * 10);
    absl::StatusOr<LossBreakdown> loss = (*cpu)->AccumulateGradients(part, half);
    ASSERT_TRUE(loss.ok()) << loss.status();
    accumulated.cross_entropy += loss->cross_entropy;
    accumulated.balance += loss->balance;
    accumulated.predictions += loss->predictions;
  }
  EXPECT_NEAR(parallel->cross_entropy, accumulated.cross_entropy, 1e-6);
  EXPECT_NEAR(parallel->balance, accumulated.balance, 1e-7);
  EXPECT_EQ(parallel->predictions, accumulated.predictions);

  std::vector<float> cpu_gradients(size), gpu_gradients(size);
  ASSERT_TRUE((*cpu)->CopyGradientsTo(cpu_gradients).ok());
  ASSERT_TRUE((*gpus_backend)->CopyGradientsTo(gpu_gradients).ok());
  ExpectTensorsNear(initial.layout(), gpu_gradients, cpu_gradients, 1e-5, "gradient");

  absl::StatusOr<double> cpu_norm = (*cpu)->ApplyGradients(kLearningRate, kMaxNorm);
  absl::StatusOr<double> gpu_norm = (*gpus_backend)->ApplyGradients(kLearningRate, kMaxNorm);
  ASSERT_TRUE(cpu_norm.ok() && gpu_norm.ok()) << gpu_norm.status();
  EXPECT_NEAR(*gpu_norm, *cpu_norm, 1e-5 * *cpu_norm);

  // Both replicas took the step from the summed gradient: the parameters read back (replica 0)
  // moved as the CPU's did, and the next pass (split again) agrees on the loss.
  ModelParameters gpu_parameters(config);
  ASSERT_TRUE((*gpus_backend)->CopyParametersTo(gpu_parameters).ok());
  int64_t apart = 0;
  for (size_t i = 0; i < size; ++i) {
    apart +=
        std::abs(gpu_parameters.values()[i] - cpu_parameters.values()[i]) > 0.02 * kLearningRate
            ? 1
            : 0;
  }
  EXPECT_LT(static_cast<double>(apart), 0.002 * static_cast<double>(size));
  absl::StatusOr<std::vector<std::vector<int64_t>>> cpu_slots = (*cpu)->ExpertSlots();
  absl::StatusOr<std::vector<std::vector<int64_t>>> gpu_slots = (*gpus_backend)->ExpertSlots();
  ASSERT_TRUE(cpu_slots.ok() && gpu_slots.ok());
  EXPECT_EQ(*gpu_slots, *cpu_slots);
  const Batch next = RandomBatch(config, 2, 10, 22);
  absl::StatusOr<LossSum> cpu_eval = (*cpu)->Evaluate(next);
  absl::StatusOr<LossSum> gpu_eval = (*gpus_backend)->Evaluate(next);
  ASSERT_TRUE(cpu_eval.ok() && gpu_eval.ok());
  EXPECT_NEAR(gpu_eval->total, cpu_eval->total, 1e-3);
}

// The whole loop (data, schedule, clipping, validation, the histogram) on both devices.
TEST(CudaTrainingLoopTest, TrainOnTheGpuFollowsTrainOnTheCpu) {
  FEDMOE_REQUIRE_CUDA();
  MoeConfig config = SmallConfig();
  config.vocab_size = 258;
  config.eos_token_id = 256;
  const std::filesystem::path corpus =
      std::filesystem::path(FEDMOE_SOURCE_DIR) / "deploy" / "corpora" / "finance";
  const std::unique_ptr<Tokenizer> tokenizer = MakeByteTokenizer(config.vocab_size);
  TrainOptions options;
  options.steps = 3;
  options.batch_size = 2;
  options.seq_len = 16;
  options.learning_rate = 3e-3;
  options.eval_every = 0;
  options.eval_batches = 2;
  // Two micro-batches per step: the GPU's gradient and histogram accumulate across passes.
  options.gradient_accumulation = 2;

  ModelParameters on_cpu = InitializeModel(config, 11);
  ModelParameters on_gpu = on_cpu;
  absl::StatusOr<TrainResult> cpu_result = Train(on_cpu, *tokenizer, corpus, options);
  options.device = kernels::Device::kCuda;
  absl::StatusOr<TrainResult> gpu_result = Train(on_gpu, *tokenizer, corpus, options);
  ASSERT_TRUE(cpu_result.ok()) << cpu_result.status();
  ASSERT_TRUE(gpu_result.ok()) << gpu_result.status();
  EXPECT_NEAR(gpu_result->train_loss, cpu_result->train_loss, 1e-4);
  EXPECT_NEAR(gpu_result->val_loss, cpu_result->val_loss, 1e-4);
  EXPECT_EQ(gpu_result->expert_slots, cpu_result->expert_slots);
  EXPECT_EQ(gpu_result->tokens, cpu_result->tokens);
  double largest_difference = 0;
  for (size_t i = 0; i < on_cpu.values().size(); ++i) {
    largest_difference =
        std::max(largest_difference, double{std::abs(on_gpu.values()[i] - on_cpu.values()[i])});
  }
  EXPECT_LT(largest_difference, 0.05 * options.learning_rate)
      << "the GPU's trained parameters came back to the caller's model";
}

}  // namespace
}  // namespace fedmoe::model
