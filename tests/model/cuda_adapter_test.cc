// The CUDA adapter backend against the CPU one (issue [peft]): over fp32, bf16 and INT8 bases,
// FFA-LoRA and plain LoRA, the same micro-batch's loss and every adapter's gradient, the
// optimizer step, the routing histogram and evaluation; DP-SGD's clipped per-record sums; then
// TrainAdapters on both devices. The CPU backend is itself checked against finite differences
// (adapter_test.cc), so agreement here is agreement with the loss's true gradient.
//
// Compiled once and linked twice: cuda_adapter_sim_test runs the CUDA backend on the CPU
// simulator of CUDA (always), cuda_adapter_test on a GPU (skipping itself without one).
#include <algorithm>
#include <cmath>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/adapted_model.h"
#include "model/cuda_training.h"
#include "model/init.h"
#include "model/tokenizer.h"
#include "model/trainer.h"
#include "tests/kernels/cuda_test_support.h"
#include "tests/model/adapter_testing.h"
#include "tests/model/cuda_backend_testing.h"

namespace fedmoe::model {
namespace {

using testing::ExpectTensorsNear;
using testing::LossOptions;
using testing::RandomBatch;

MoeConfig SmallConfig() { return testing::SmallCudaConfig(); }

// Tied embeddings (the output head is the embedding, decoded twice), top-1 routing, no shared
// expert, no window.
MoeConfig TiedConfig() {
  MoeConfig config = SmallConfig();
  config.tie_word_embeddings = true;
  config.num_experts_per_tok = 1;
  config.n_shared_experts = 0;
  config.shared_expert_intermediate_size = 0;
  config.sliding_window = 0;
  return config;
}

LoraConfig Lora(const char* targets, bool train_a) {
  LoraConfig lora;
  lora.rank = 4;
  lora.alpha = 8;
  lora.targets = *ParseLoraTargets(targets);
  lora.train_a = train_a;
  lora.seed = 23;
  return lora;
}

struct Case {
  const char* name;
  WeightFormat format;
  const char* targets;
  bool train_a;
  MoeConfig (*config)() = SmallConfig;
};

void PrintTo(const Case& test_case, std::ostream* out) { *out << test_case.name; }

constexpr double kLearningRate = 1e-2;
constexpr double kMaxNorm = 0.05;

class CudaAdapterTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    FEDMOE_REQUIRE_CUDA();
    const MoeConfig config = GetParam().config();
    base_ = std::make_unique<FrozenBase>(
        FrozenBase::FromParameters(InitializeModel(config, 7), GetParam().format, 16));
    absl::StatusOr<LoraAdapters> adapters =
        NewAdapters(*base_, Lora(GetParam().targets, GetParam().train_a));
    ASSERT_TRUE(adapters.ok()) << adapters.status();
    testing::PerturbAdapters(*adapters, 3, 0.05F);
    initial_ = std::make_unique<LoraAdapters>(*adapters);
    on_cpu_ = std::make_unique<LoraAdapters>(*adapters);
    on_gpu_ = std::make_unique<LoraAdapters>(*std::move(adapters));
  }

  std::unique_ptr<FrozenBase> base_;
  std::unique_ptr<LoraAdapters> initial_, on_cpu_, on_gpu_;
};

TEST_P(CudaAdapterTest, TwoStepsMatchTheCpuBackend) {
  const MoeConfig& config = base_->config();
  absl::StatusOr<std::unique_ptr<TrainingBackend>> cpu =
      CreateCpuAdapterBackend(*base_, *on_cpu_, {});
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  absl::StatusOr<std::unique_ptr<TrainingBackend>> gpu =
      CreateCudaAdapterBackend(*base_, *on_gpu_, {});
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  const LoraLayout& layout = initial_->layout();
  const auto size = static_cast<size_t>(layout.total_size());

  for (int step = 0; step < 2; ++step) {
    SCOPED_TRACE(::testing::Message() << "step " << step);
    // The second step starts from adapters that already differ by rounding, which AdamW turns
    // into differences of up to a step where a gradient is near zero.
    const double tolerance = step == 0 ? 1e-5 : 1e-3;
    // Another shape for the second batch: buffers sized for the first must serve it.
    const Batch batch =
        step == 0 ? RandomBatch(config, 2, 13, 100) : RandomBatch(config, 3, 9, 101);
    absl::StatusOr<LossBreakdown> cpu_loss = (*cpu)->AccumulateGradients(batch, LossOptions(batch));
    absl::StatusOr<LossBreakdown> gpu_loss = (*gpu)->AccumulateGradients(batch, LossOptions(batch));
    ASSERT_TRUE(cpu_loss.ok()) << cpu_loss.status();
    ASSERT_TRUE(gpu_loss.ok()) << gpu_loss.status();
    EXPECT_NEAR(gpu_loss->cross_entropy, cpu_loss->cross_entropy, 1e-2 * tolerance);
    EXPECT_NEAR(gpu_loss->balance_per_layer, cpu_loss->balance_per_layer, 1e-5);
    EXPECT_EQ(gpu_loss->predictions, cpu_loss->predictions);

    std::vector<float> cpu_gradients(size), gpu_gradients(size);
    ASSERT_TRUE((*cpu)->CopyGradientsTo(cpu_gradients).ok());
    ASSERT_TRUE((*gpu)->CopyGradientsTo(gpu_gradients).ok());
    ExpectTensorsNear(layout, gpu_gradients, cpu_gradients, tolerance, "gradient");
    // Not a vacuous comparison: every B and router has a gradient; A has one only under plain
    // LoRA.
    for (const AdapterTensor& spec : layout.tensors()) {
      const auto first = cpu_gradients.begin() + spec.offset;
      const bool any = std::any_of(first, first + spec.size, [](float g) { return g != 0; });
      if (spec.role == AdapterRole::kLoraA && !GetParam().train_a) {
        EXPECT_FALSE(any) << spec.name << " is frozen under FFA-LoRA but has a gradient";
      } else if (step == 0 && spec.expert < 0) {
        EXPECT_TRUE(any) << spec.name << " has no gradient";
      }
    }

    absl::StatusOr<double> cpu_norm = (*cpu)->ApplyGradients(kLearningRate, kMaxNorm);
    absl::StatusOr<double> gpu_norm = (*gpu)->ApplyGradients(kLearningRate, kMaxNorm);
    ASSERT_TRUE(cpu_norm.ok() && gpu_norm.ok());
    EXPECT_GT(*cpu_norm, kMaxNorm) << "the test should exercise clipping";
    EXPECT_NEAR(*gpu_norm, *cpu_norm, tolerance * *cpu_norm);
  }

  // The trained adapters come back to the caller's; the CPU trained its own in place.
  ASSERT_TRUE((*gpu)->CopyAdaptersTo(*on_gpu_).ok());
  int64_t moved = 0;
  for (size_t i = 0; i < size; ++i) {
    ASSERT_NEAR(on_gpu_->values()[i], on_cpu_->values()[i], 2 * 2 * kLearningRate) << i;
    moved += on_gpu_->values()[i] != initial_->values()[i] ? 1 : 0;
  }
  EXPECT_GT(moved, 0);
  ExpectTensorsNear(layout, {on_gpu_->values().begin(), on_gpu_->values().end()},
                    {on_cpu_->values().begin(), on_cpu_->values().end()}, 0.02, "trained value");

  absl::StatusOr<std::vector<std::vector<int64_t>>> cpu_slots = (*cpu)->ExpertSlots();
  absl::StatusOr<std::vector<std::vector<int64_t>>> gpu_slots = (*gpu)->ExpertSlots();
  ASSERT_TRUE(cpu_slots.ok() && gpu_slots.ok());
  EXPECT_EQ(*gpu_slots, *cpu_slots);

  const Batch held_out = RandomBatch(config, 3, 11, 7);
  absl::StatusOr<LossSum> cpu_eval = (*cpu)->Evaluate(held_out);
  absl::StatusOr<LossSum> gpu_eval = (*gpu)->Evaluate(held_out);
  ASSERT_TRUE(cpu_eval.ok() && gpu_eval.ok());
  EXPECT_EQ(gpu_eval->predictions, cpu_eval->predictions);
  EXPECT_NEAR(gpu_eval->total / gpu_eval->predictions, cpu_eval->total / cpu_eval->predictions,
              1e-4);
}

// DP-SGD's micro-batch: the GPU runs one backward pass per record, the CPU takes the records'
// norms by Gram matrices; both clip the same records by the same factors. Over two of the cases
// (FFA and plain LoRA, untied and tied), since the per-record pass is the step's pass above.
class CudaAdapterClippingTest : public CudaAdapterTest {};

TEST_P(CudaAdapterClippingTest, ClippedPerRecordSumsMatchTheCpuBackend) {
  const MoeConfig& config = base_->config();
  absl::StatusOr<std::unique_ptr<TrainingBackend>> cpu =
      CreateCpuAdapterBackend(*base_, *on_cpu_, {});
  absl::StatusOr<std::unique_ptr<TrainingBackend>> gpu =
      CreateCudaAdapterBackend(*base_, *on_gpu_, {});
  ASSERT_TRUE(cpu.ok() && gpu.ok());
  constexpr int64_t kSeqLen = 8;
  // Records of one, two and one windows.
  const Batch batch = RandomBatch(config, 4, kSeqLen, 55);
  RecordRows records;
  records.row_begin = {0, kSeqLen, 3 * kSeqLen, 4 * kSeqLen};
  BackwardOptions options = LossOptions(batch);
  options.step_share = 1.0;
  const auto routing = static_cast<size_t>(config.num_hidden_layers * config.num_local_experts);

  // A clip norm between the records' norms, so that some are clipped and some are not.
  PrivateBatch probe;
  probe.routing_sum.assign(routing, 0.0);
  ASSERT_TRUE((*cpu)->AccumulateClippedGradients(batch, records, options, 1e9, 1.0, probe).ok());
  std::vector<double> sorted = probe.record_norms;
  std::sort(sorted.begin(), sorted.end());
  const double clip = 0.5 * (sorted[0] + sorted[1]);
  ASSERT_TRUE((*cpu)->ApplyGradients(0.0, 0.0).ok());  // drops the probe's gradient

  PrivateBatch cpu_out, gpu_out;
  cpu_out.routing_sum.assign(routing, 0.0);
  gpu_out.routing_sum.assign(routing, 0.0);
  absl::StatusOr<LossBreakdown> cpu_loss =
      (*cpu)->AccumulateClippedGradients(batch, records, options, clip, 1.0, cpu_out);
  absl::StatusOr<LossBreakdown> gpu_loss =
      (*gpu)->AccumulateClippedGradients(batch, records, options, clip, 1.0, gpu_out);
  ASSERT_TRUE(cpu_loss.ok()) << cpu_loss.status();
  ASSERT_TRUE(gpu_loss.ok()) << gpu_loss.status();
  EXPECT_NEAR(gpu_loss->cross_entropy, cpu_loss->cross_entropy, 1e-6);
  ASSERT_EQ(gpu_out.record_norms.size(), 3u);
  for (size_t r = 0; r < 3; ++r) {
    EXPECT_NEAR(gpu_out.record_norms[r], cpu_out.record_norms[r], 1e-4 * cpu_out.record_norms[r]);
  }
  for (size_t i = 0; i < routing; ++i) {
    EXPECT_NEAR(gpu_out.routing_sum[i], cpu_out.routing_sum[i], 1e-9) << i;
  }
  const auto size = static_cast<size_t>(initial_->layout().total_size());
  std::vector<float> cpu_gradients(size), gpu_gradients(size);
  ASSERT_TRUE((*cpu)->CopyGradientsTo(cpu_gradients).ok());
  ASSERT_TRUE((*gpu)->CopyGradientsTo(gpu_gradients).ok());
  ExpectTensorsNear(initial_->layout(), gpu_gradients, cpu_gradients, 1e-4, "clipped gradient");
}

const Case kInt8FfaEveryLinear{"int8_ffa_every_linear", WeightFormat::kInt8, "all", false};
const Case kInt8PlainLoraAttentionTied{"int8_plain_lora_attention_tied", WeightFormat::kInt8,
                                       "q_proj,k_proj,v_proj,o_proj", true, TiedConfig};

std::string CaseName(const ::testing::TestParamInfo<Case>& test) { return test.param.name; }

INSTANTIATE_TEST_SUITE_P(BasesAndAdapters, CudaAdapterTest,
                         ::testing::Values(kInt8FfaEveryLinear,
                                           Case{"bf16_plain_lora_every_linear",
                                                WeightFormat::kBfloat16, "all", true},
                                           Case{"fp32_ffa_experts_tied", WeightFormat::kFloat32,
                                                "w1,w2,w3", false, TiedConfig},
                                           kInt8PlainLoraAttentionTied),
                         CaseName);
INSTANTIATE_TEST_SUITE_P(BasesAndAdapters, CudaAdapterClippingTest,
                         ::testing::Values(kInt8FfaEveryLinear, kInt8PlainLoraAttentionTied),
                         CaseName);

TEST(CudaAdapterErrorsTest, WhatTheBackendCannotTrainIsRefusedAtCreation) {
  FEDMOE_REQUIRE_CUDA();
  const FrozenBase base =
      FrozenBase::FromParameters(InitializeModel(SmallConfig(), 7), WeightFormat::kInt8, 16);
  LoraAdapters adapters = *NewAdapters(base, Lora("all", false));
  BackendOptions two_gpus;
  two_gpus.devices = 2;
  absl::StatusOr<std::unique_ptr<TrainingBackend>> refused =
      CreateCudaAdapterBackend(base, adapters, two_gpus);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("one GPU"), std::string::npos) << refused.status();

  const FrozenBase other =
      FrozenBase::FromParameters(InitializeModel(TiedConfig(), 7), WeightFormat::kInt8, 16);
  refused = CreateCudaAdapterBackend(other, adapters, {});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("another model config"), std::string::npos)
      << refused.status();

  MoeConfig odd_heads = SmallConfig();
  odd_heads.head_dim = 8;
  const FrozenBase untakeable =
      FrozenBase::FromParameters(InitializeModel(odd_heads, 7), WeightFormat::kInt8, 16);
  LoraAdapters for_untakeable = *NewAdapters(untakeable, Lora("all", false));
  refused = CreateCudaAdapterBackend(untakeable, for_untakeable, {});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();

  // A whole-model backend has no adapters to hand back.
  absl::StatusOr<std::unique_ptr<TrainingBackend>> created =
      CreateCudaAdapterBackend(base, adapters, {});
  ASSERT_TRUE(created.ok()) << created.status();
  ModelParameters parameters(SmallConfig());
  EXPECT_EQ((*created)->CopyParametersTo(parameters).code(), absl::StatusCode::kUnimplemented);
}

TEST(CudaAdapterLoopTest, TrainAdaptersOnTheGpuFollowsTheCpu) {
  FEDMOE_REQUIRE_CUDA();
  MoeConfig config = SmallConfig();
  config.vocab_size = 258;
  config.eos_token_id = 256;
  const std::filesystem::path corpus =
      std::filesystem::path(FEDMOE_SOURCE_DIR) / "deploy" / "corpora" / "finance";
  const std::unique_ptr<Tokenizer> tokenizer = MakeByteTokenizer(config.vocab_size);
  const FrozenBase base =
      FrozenBase::FromParameters(InitializeModel(config, 11), WeightFormat::kInt8, 32);
  TrainOptions options;
  options.steps = 2;
  options.batch_size = 2;
  options.seq_len = 16;
  options.learning_rate = 3e-3;
  options.eval_every = 0;
  options.eval_batches = 2;
  options.gradient_accumulation = 2;
  options.adapters.enabled = true;
  options.adapters.lora = Lora("all", false);

  LoraAdapters on_cpu = *NewAdapters(base, options.adapters.lora);
  LoraAdapters on_gpu = on_cpu;
  const LoraAdapters initial = on_cpu;
  absl::StatusOr<TrainResult> cpu_result = TrainAdapters(base, on_cpu, *tokenizer, corpus, options);
  options.device = kernels::Device::kCuda;
  absl::StatusOr<TrainResult> gpu_result = TrainAdapters(base, on_gpu, *tokenizer, corpus, options);
  ASSERT_TRUE(cpu_result.ok()) << cpu_result.status();
  ASSERT_TRUE(gpu_result.ok()) << gpu_result.status();
  EXPECT_NEAR(gpu_result->train_loss, cpu_result->train_loss, 1e-4);
  EXPECT_NEAR(gpu_result->val_loss, cpu_result->val_loss, 1e-4);
  EXPECT_EQ(gpu_result->expert_slots, cpu_result->expert_slots);
  EXPECT_EQ(gpu_result->tokens, cpu_result->tokens);
  double largest_difference = 0;
  int64_t moved = 0;
  for (size_t i = 0; i < on_cpu.values().size(); ++i) {
    largest_difference =
        std::max(largest_difference, double{std::abs(on_gpu.values()[i] - on_cpu.values()[i])});
    moved += on_gpu.values()[i] != initial.values()[i] ? 1 : 0;
  }
  EXPECT_GT(moved, 0) << "the GPU's trained adapters came back to the caller's";
  EXPECT_LT(largest_difference, 0.05 * options.learning_rate);
}

}  // namespace
}  // namespace fedmoe::model
