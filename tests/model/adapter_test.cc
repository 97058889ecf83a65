// LoRA adapters over a frozen base (model/lora.h, frozen_base.h, adapted_model.h): the adapted
// model's gradient against central finite differences of its loss; its logits against the plain
// model with the adapters merged in, and against the base alone when B is zero; each compact
// base against the plain model on its decoded weights; FFA-LoRA's exact averaging against a plain
// computation of the mean adapted weight; and the adapters' names against PEFT's layout.
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/adapted_model.h"
#include "model/checkpoint.h"
#include "model/init.h"
#include "model/safetensors.h"
#include "tests/kernels/gradient_check.h"
#include "tests/model/adapter_testing.h"
#include "tests/testing_temp_dir.h"
#include "tests/testing_tiny_model.h"

namespace fedmoe::model {
namespace {

LoraConfig AllTargets(bool train_a) {
  LoraConfig lora;
  lora.rank = 3;
  lora.alpha = 6;
  lora.targets = *ParseLoraTargets("all");
  lora.train_a = train_a;
  lora.seed = 17;
  return lora;
}

struct GradientCase {
  const char* name;
  bool train_a;
  bool shared;
  const char* targets;
};

void PrintTo(const GradientCase& c, std::ostream* out) { *out << c.name; }

class AdapterGradientTest : public ::testing::TestWithParam<GradientCase> {};

TEST_P(AdapterGradientTest, EveryTrainedTensorMatchesFiniteDifferences) {
  const GradientCase c = GetParam();
  const ModelParameters parameters =
      InitializeModel(testing::GradientCheckConfig(c.shared, false, 2), 21);
  const FrozenBase base = FrozenBase::FromParameters(parameters, WeightFormat::kFloat32);
  LoraConfig lora = AllTargets(c.train_a);
  lora.targets = *ParseLoraTargets(c.targets);
  absl::StatusOr<LoraAdapters> made = NewAdapters(base, lora);
  ASSERT_TRUE(made.ok()) << made.status();
  LoraAdapters& adapters = *made;
  testing::PerturbAdapters(adapters, 5, 0.3F);
  const MoeConfig& config = parameters.config();
  constexpr int64_t kBatch = 2;
  constexpr int64_t kSeqLen = 6;
  const std::vector<int32_t> tokens = testing::RandomTokens(kBatch * kSeqLen, config.vocab_size, 4);
  std::vector<int32_t> targets = NextTokenTargets(tokens, kBatch, kSeqLen);
  targets[2] = -1;
  BackwardOptions options;
  options.balance_coefficient = 0.5;
  options.predictions_in_step = 9;

  AdaptedPass pass;
  ASSERT_TRUE(AdaptedForward(base, adapters, tokens, kBatch, kSeqLen, pass).ok());
  std::vector<float> gradients(adapters.values().size(), 0.0F);
  AdaptedScratch scratch;
  absl::StatusOr<LossBreakdown> loss =
      AdaptedBackward(base, adapters, pass, targets, options, gradients, scratch);
  ASSERT_TRUE(loss.ok()) << loss.status();
  EXPECT_EQ(loss->predictions, 9);

  auto evaluate = [&](std::vector<int32_t>* routing) {
    AdaptedPass perturbed;
    EXPECT_TRUE(AdaptedForward(base, adapters, tokens, kBatch, kSeqLen, perturbed).ok());
    routing->clear();
    for (const LayerActivations& layer : perturbed.model.layers) {
      routing->insert(routing->end(), layer.expert_index.begin(), layer.expert_index.end());
    }
    return LossOf(config, perturbed.model,
                  CrossEntropy(perturbed.model, targets, config.vocab_size), options)
        .total();
  };

  std::mt19937 generator(99);
  int checked = 0;
  int skipped = 0;
  int tensors = 0;
  double largest = 0;
  for (const AdapterTensor& spec : adapters.layout().tensors()) {
    const bool trained = spec.role != AdapterRole::kLoraA || c.train_a;
    if (!trained) {
      // A frozen A gets no gradient at all.
      for (int64_t i = spec.offset; i < spec.offset + spec.size; ++i) {
        ASSERT_EQ(gradients[static_cast<size_t>(i)], 0.0F) << spec.name;
      }
      continue;
    }
    ++tensors;
    for (int sample = 0; sample < 2; ++sample) {
      const int64_t index = spec.offset + static_cast<int64_t>(generator() % spec.size);
      float& value = adapters.values()[static_cast<size_t>(index)];
      const float saved = value;
      constexpr float kStep = 2e-3F;
      std::vector<int32_t> routing_plus;
      std::vector<int32_t> routing_minus;
      value = saved + kStep;
      const double plus = evaluate(&routing_plus);
      value = saved - kStep;
      const double minus = evaluate(&routing_minus);
      value = saved;
      if (routing_plus != routing_minus) {
        ++skipped;
        continue;
      }
      const double numeric = (plus - minus) / (2.0 * kStep);
      largest = std::max(largest, std::abs(numeric));
      EXPECT_NEAR(gradients[static_cast<size_t>(index)], numeric, 1e-3 + 3e-2 * std::abs(numeric))
          << spec.name << " [" << index - spec.offset << "]";
      ++checked;
    }
  }
  EXPECT_GT(checked, 2 * tensors - 6) << skipped;
  EXPECT_GT(largest, 1e-2) << "the checked gradients are all ~0";
}

INSTANTIATE_TEST_SUITE_P(
    Adapters, AdapterGradientTest,
    ::testing::Values(GradientCase{"ffa_all_shared", false, true, "all"},
                      GradientCase{"plain_all", true, false, "all"},
                      // Experts only: the walk stops at the first layer's MoE block.
                      GradientCase{"ffa_experts", false, true, "experts"},
                      GradientCase{"plain_attention", true, true, "q_proj,v_proj,o_proj"}),
    [](const ::testing::TestParamInfo<GradientCase>& test) { return test.param.name; });

// DP-SGD over adapters: per-record clipping's sum equals the records' own gradients, each
// computed alone from its own rows and clipped by hand, and the norms it reports are theirs.
TEST(AdaptedModelTest, PerRecordClippingOfAdaptersMatchesEachRecordAlone) {
  const ModelParameters parameters =
      InitializeModel(testing::GradientCheckConfig(true, false, 2), 31);
  const FrozenBase base = FrozenBase::FromParameters(parameters, WeightFormat::kInt8, 8);
  for (const bool train_a : {false, true}) {
    LoraAdapters adapters = *NewAdapters(base, AllTargets(train_a));
    testing::PerturbAdapters(adapters, 6, 0.2F);
    const MoeConfig& config = parameters.config();
    constexpr int64_t kRecords = 3;
    constexpr int64_t kSeqLen = 5;
    const std::vector<int32_t> tokens =
        testing::RandomTokens(kRecords * kSeqLen, config.vocab_size, 12);
    const std::vector<int32_t> targets = NextTokenTargets(tokens, kRecords, kSeqLen);
    BackwardOptions options;
    options.balance_coefficient = 0.3;

    // Each record alone: its loss is its own mean (predictions_in_step = its predictions).
    std::vector<std::vector<float>> alone;
    std::vector<double> norms;
    for (int64_t r = 0; r < kRecords; ++r) {
      const std::span<const int32_t> record_tokens(tokens.data() + r * kSeqLen, kSeqLen);
      const std::span<const int32_t> record_targets(targets.data() + r * kSeqLen, kSeqLen);
      AdaptedPass pass;
      ASSERT_TRUE(AdaptedForward(base, adapters, record_tokens, 1, kSeqLen, pass).ok());
      BackwardOptions own = options;
      own.predictions_in_step = kSeqLen - 1;
      std::vector<float> gradient(adapters.values().size(), 0.0F);
      AdaptedScratch scratch;
      ASSERT_TRUE(
          AdaptedBackward(base, adapters, pass, record_targets, own, gradient, scratch).ok());
      double squares = 0;
      for (const float g : gradient) squares += double{g} * g;
      norms.push_back(std::sqrt(squares));
      alone.push_back(std::move(gradient));
    }
    const double clip = norms[1];  // clips the records above it, leaves those below
    std::vector<double> expected(adapters.values().size(), 0.0);
    for (int64_t r = 0; r < kRecords; ++r) {
      const double factor = std::min(1.0, clip / norms[static_cast<size_t>(r)]);
      for (size_t i = 0; i < expected.size(); ++i) expected[i] += factor * alone[r][i];
    }

    AdaptedPass pass;
    ASSERT_TRUE(AdaptedForward(base, adapters, tokens, kRecords, kSeqLen, pass).ok());
    PerRecordClipping clipping;
    RecordRows rows;
    for (int64_t r = 1; r <= kRecords; ++r) rows.row_begin.push_back(r * kSeqLen);
    clipping.Begin(rows);
    BackwardOptions clipped = options;
    clipped.per_record = &clipping;
    std::vector<float> gradient(adapters.values().size(), 0.0F);
    AdaptedScratch scratch;
    ASSERT_TRUE(AdaptedBackward(base, adapters, pass, targets, clipped, gradient, scratch).ok());
    absl::StatusOr<std::vector<double>> reported = clipping.Finish(clip);
    ASSERT_TRUE(reported.ok()) << reported.status();
    for (int64_t r = 0; r < kRecords; ++r) {
      EXPECT_NEAR((*reported)[r], norms[r], 1e-4 * norms[r]) << "record " << r;
    }
    double largest = 0;
    for (size_t i = 0; i < expected.size(); ++i) {
      largest = std::max(largest, std::abs(expected[i]));
      ASSERT_NEAR(gradient[i], expected[i], 1e-5 + 1e-4 * std::abs(expected[i]))
          << (train_a ? "plain" : "ffa") << " value " << i;
    }
    EXPECT_GT(largest, 1e-3);
  }
}

// Logits of the plain model, for comparison.
std::vector<float> PlainLogits(const ModelParameters& parameters,
                               const std::vector<int32_t>& tokens, int64_t batch, int64_t seq_len) {
  ForwardPass pass;
  EXPECT_TRUE(Forward(parameters, tokens, batch, seq_len, pass).ok());
  return {pass.logits.begin(), pass.logits.end()};
}

std::vector<float> AdaptedLogits(const FrozenBase& base, const LoraAdapters& adapters,
                                 const std::vector<int32_t>& tokens, int64_t batch,
                                 int64_t seq_len) {
  AdaptedPass pass;
  EXPECT_TRUE(AdaptedForward(base, adapters, tokens, batch, seq_len, pass).ok());
  return {pass.model.logits.begin(), pass.model.logits.end()};
}

void ExpectClose(const std::vector<float>& actual, const std::vector<float>& expected,
                 double tolerance, const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  double largest = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    largest = std::max(largest, static_cast<double>(std::abs(actual[i] - expected[i])));
  }
  EXPECT_LE(largest, tolerance) << what;
}

TEST(AdaptedModelTest, FreshAdaptersComputeTheBaseAndMergedAdaptersComputeTheAdaptedModel) {
  const ModelParameters parameters =
      InitializeModel(testing::GradientCheckConfig(true, false, 2), 3);
  const FrozenBase base = FrozenBase::FromParameters(parameters, WeightFormat::kFloat32);
  LoraAdapters adapters = *NewAdapters(base, AllTargets(false));
  const std::vector<int32_t> tokens =
      testing::RandomTokens(2 * 7, parameters.config().vocab_size, 8);
  const std::vector<float> plain = PlainLogits(parameters, tokens, 2, 7);
  ExpectClose(AdaptedLogits(base, adapters, tokens, 2, 7), plain, 1e-6, "B = 0");

  testing::PerturbAdapters(adapters, 9, 0.2F);
  const std::vector<float> adapted = AdaptedLogits(base, adapters, tokens, 2, 7);
  ModelParameters merged = parameters;
  ASSERT_TRUE(MergeAdapters(adapters, merged).ok());
  ExpectClose(PlainLogits(merged, tokens, 2, 7), adapted, 1e-5, "merged");
  double moved = 0;
  for (size_t i = 0; i < plain.size(); ++i)
    moved = std::max(moved, double{std::abs(plain[i] - adapted[i])});
  EXPECT_GT(moved, 1e-2) << "the adapters changed nothing";
}

// Int8 activations are a way to run an INT8 base, not another base: opened for inference it
// keeps its weights and content hash, every matrix is marked, its logits stay near the
// weight-only ones without equalling them (about 1% of their norm on this random model, whose
// rows of 16 are each one group of a single scale), and a base in another format is refused by
// name.
TEST(FrozenBaseFileTest, Int8ActivationsRunTheSameInt8Base) {
  testing::TempDir dir;
  const ModelParameters parameters =
      InitializeModel(testing::GradientCheckConfig(true, true, 2), 15);
  ASSERT_TRUE(SaveModel(parameters, dir.path() / "model").ok());
  absl::StatusOr<FrozenBase> weight_only =
      OpenForInference(dir.path() / "model", {.weights = WeightFormat::kInt8});
  ASSERT_TRUE(weight_only.ok()) << weight_only.status();
  absl::StatusOr<FrozenBase> quantized = OpenForInference(
      dir.path() / "model", {.weights = WeightFormat::kInt8, .int8_activations = true});
  ASSERT_TRUE(quantized.ok()) << quantized.status();
  EXPECT_FALSE(weight_only->int8_activations());
  EXPECT_TRUE(quantized->int8_activations());
  EXPECT_EQ(HeldFormatName(*weight_only), "int8");
  EXPECT_EQ(HeldFormatName(*quantized), "int8 with int8 activations");
  EXPECT_EQ(BaseContentHash(*quantized), BaseContentHash(*weight_only));
  for (const TensorSpec& spec : quantized->layout().tensors()) {
    if (IsFrozenMatrix(spec.role)) {
      EXPECT_TRUE(quantized->matrix(spec.offset).int8_activations) << spec.name;
    }
  }
  const std::vector<int32_t> tokens =
      testing::RandomTokens(2 * 6, parameters.config().vocab_size, 3);
  const std::vector<float> exact =
      AdaptedLogits(*weight_only, BaseOnlyAdapters(*weight_only), tokens, 2, 6);
  const std::vector<float> approximate =
      AdaptedLogits(*quantized, BaseOnlyAdapters(*quantized), tokens, 2, 6);
  double error = 0, total = 0;
  for (size_t i = 0; i < exact.size(); ++i) {
    error += (approximate[i] - exact[i]) * (approximate[i] - exact[i]);
    total += exact[i] * exact[i];
  }
  EXPECT_GT(error, 0) << "the inputs were not quantized";
  EXPECT_LT(std::sqrt(error / total), 0.03);

  for (const std::optional<WeightFormat> other :
       {std::optional<WeightFormat>(WeightFormat::kBfloat16),
        std::optional<WeightFormat>(std::nullopt)}) {
    absl::StatusOr<FrozenBase> refused =
        OpenForInference(dir.path() / "model", {.weights = other, .int8_activations = true});
    ASSERT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(refused.status().message().find("int8 activations need the base held in INT8"),
              std::string::npos)
        << refused.status();
  }
}

TEST(AdaptedModelTest, CompactBasesComputeThePlainModelOnTheirDecodedWeights) {
  const ModelParameters parameters =
      InitializeModel(testing::GradientCheckConfig(true, true, 2), 4);
  const std::vector<int32_t> tokens =
      testing::RandomTokens(2 * 5, parameters.config().vocab_size, 2);
  for (const WeightFormat format : {WeightFormat::kBfloat16, WeightFormat::kInt8}) {
    const FrozenBase base = FrozenBase::FromParameters(parameters, format, 8);
    ModelParameters decoded = parameters;
    for (const TensorSpec& spec : decoded.layout().tensors()) {
      if (!IsFrozenMatrix(spec.role)) continue;
      kernels::cpu::DecodeRows(base.matrix(spec.offset), 0, spec.shape[0],
                               decoded.tensor(spec).data());
    }
    LoraAdapters adapters = *NewAdapters(base, AllTargets(false));
    testing::PerturbAdapters(adapters, 10, 0.2F);
    ModelParameters merged = decoded;
    ASSERT_TRUE(MergeAdapters(adapters, merged).ok());
    ExpectClose(AdaptedLogits(base, adapters, tokens, 2, 5), PlainLogits(merged, tokens, 2, 5),
                1e-5, std::string(WeightFormatName(format)));
  }
  const int64_t fp32 = FrozenBase::FromParameters(parameters, WeightFormat::kFloat32).bytes();
  const int64_t bf16 = FrozenBase::FromParameters(parameters, WeightFormat::kBfloat16).bytes();
  const int64_t int8 = FrozenBase::FromParameters(parameters, WeightFormat::kInt8, 0).bytes();
  EXPECT_LT(bf16, fp32 * 0.6);
  EXPECT_LT(int8, bf16 * 0.7);
}

// FFA-LoRA's claim: with A shared, the mean of the sites' adapted weights is the base plus the
// adapter of the mean B. Checked against the plain computation (merge each site's adapters,
// average the merged weights), and contrasted with plain LoRA, where each site's own A makes
// the product of the means differ from the mean of the products.
TEST(AdaptedModelTest, FfaAveragingIsExactAndPlainLoraAveragingIsNot) {
  const ModelParameters parameters =
      InitializeModel(testing::GradientCheckConfig(true, false, 2), 6);
  const FrozenBase base = FrozenBase::FromParameters(parameters, WeightFormat::kFloat32);
  constexpr int kSites = 3;
  for (const bool train_a : {false, true}) {
    std::vector<LoraAdapters> sites;
    for (int k = 0; k < kSites; ++k) {
      LoraAdapters site = *NewAdapters(base, AllTargets(train_a));
      testing::PerturbAdapters(site, 20 + k, 0.2F);
      if (train_a) {  // plain LoRA: each site moved its A too
        std::mt19937 generator(40 + k);
        std::normal_distribution<float> normal(0.0F, 0.2F);
        for (const AdapterTensor& spec : site.layout().tensors()) {
          if (spec.role != AdapterRole::kLoraA) continue;
          for (float& value : site.tensor(spec)) value += normal(generator);
        }
      }
      sites.push_back(std::move(site));
    }
    // The plain computation: each site's merged weights, averaged.
    std::vector<double> mean_of_merged(parameters.values().size(), 0.0);
    for (const LoraAdapters& site : sites) {
      ModelParameters merged = parameters;
      ASSERT_TRUE(MergeAdapters(site, merged).ok());
      for (size_t i = 0; i < mean_of_merged.size(); ++i) {
        mean_of_merged[i] += merged.values()[i] / double{kSites};
      }
    }
    // What a federation aggregates: the mean of every trained value (A's too under plain LoRA).
    LoraAdapters mean = *NewAdapters(base, AllTargets(train_a));
    for (size_t i = 0; i < mean.values().size(); ++i) {
      double sum = 0;
      for (const LoraAdapters& site : sites) sum += site.values()[i];
      mean.values()[i] = static_cast<float>(sum / kSites);
    }
    ModelParameters merged_mean = parameters;
    ASSERT_TRUE(MergeAdapters(mean, merged_mean).ok());
    double largest = 0;
    for (size_t i = 0; i < mean_of_merged.size(); ++i) {
      largest = std::max(largest, std::abs(merged_mean.values()[i] - mean_of_merged[i]));
    }
    if (train_a) {
      EXPECT_GT(largest, 1e-2) << "plain LoRA's mean of products";
    } else {
      EXPECT_LT(largest, 2e-6) << "FFA's mean of products";
    }
  }
}

TEST(LoraTest, EverySiteDrawsTheSameAAndBStartsAtZero) {
  const MoeConfig config = testing::GradientCheckConfig(true, false, 2);
  LoraAdapters one(config, AllTargets(false));
  LoraAdapters two(config, AllTargets(false));
  InitializeLora(one);
  InitializeLora(two);
  ASSERT_EQ(one.values().size(), two.values().size());
  for (size_t i = 0; i < one.values().size(); ++i) ASSERT_EQ(one.values()[i], two.values()[i]);
  LoraConfig other_seed = AllTargets(false);
  other_seed.seed = 18;
  LoraAdapters three(config, other_seed);
  InitializeLora(three);
  for (const AdapterTensor& spec : one.layout().tensors()) {
    const std::span<const float> values = std::as_const(one).tensor(spec);
    if (spec.role == AdapterRole::kLoraB) {
      for (const float value : values) ASSERT_EQ(value, 0.0F) << spec.name;
    }
    if (spec.role != AdapterRole::kLoraA) continue;
    const double bound = 1.0 / std::sqrt(static_cast<double>(spec.shape[1]));
    double sum_of_squares = 0;
    for (const float value : values) {
      ASSERT_LT(std::abs(value), bound * (1 + 1e-6)) << spec.name;
      sum_of_squares += double{value} * value;
    }
    // Uniform on ±bound has variance bound²/3.
    EXPECT_NEAR(sum_of_squares / static_cast<double>(values.size()), bound * bound / 3,
                bound * bound / 3 * 0.5)
        << spec.name;
    EXPECT_NE(values[0], std::as_const(three).tensor(spec)[0]) << "the seed picks A";
  }
}

// Names and shapes as Hugging Face PEFT saves a LoRA adapter of a Mixtral model: every key
// "base_model.model." + the module's name + ".lora_A.weight" [r, in] or ".lora_B.weight"
// [out, r], and a modules_to_save router under its own name.
TEST(LoraTest, TensorNamesAndShapesFollowPeft) {
  const MoeConfig config = testing::GradientCheckConfig(true, false, 2);
  LoraConfig lora = AllTargets(false);
  const LoraLayout layout(config, lora);
  const auto expect = [&](const std::string& name, std::vector<int64_t> shape) {
    const AdapterTensor* tensor = layout.Find(name);
    ASSERT_NE(tensor, nullptr) << name;
    EXPECT_EQ(tensor->shape, shape) << name;
  };
  expect("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", {3, 16});
  expect("base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight", {8, 3});
  expect("base_model.model.model.layers.1.self_attn.o_proj.lora_B.weight", {16, 3});
  expect("base_model.model.model.layers.1.block_sparse_moe.experts.3.w1.lora_A.weight", {3, 16});
  expect("base_model.model.model.layers.1.block_sparse_moe.experts.3.w1.lora_B.weight", {12, 3});
  expect("base_model.model.model.layers.0.block_sparse_moe.experts.0.w2.lora_A.weight", {3, 12});
  expect("base_model.model.model.layers.0.block_sparse_moe.experts.0.w2.lora_B.weight", {16, 3});
  expect("base_model.model.model.layers.0.block_sparse_moe.shared_experts.w3.lora_B.weight",
         {8, 3});
  expect("base_model.model.model.layers.1.block_sparse_moe.gate.weight", {4, 16});
  // 2 layers × (4 attention + 4 experts × 3 + 3 shared) adapters × (A, B), and a router each.
  EXPECT_EQ(layout.tensors().size(), size_t{2 * (2 * (4 + 12 + 3) + 1)});
  // An expert's adapters sit together, for per-expert weighting.
  const LayerSites& sites = layout.layer(1);
  EXPECT_EQ(sites.experts[2].w1.b + 12 * 3, sites.experts[2].w2.a);
  EXPECT_EQ(sites.experts[2].w3.b + 12 * 3, sites.experts[3].w1.a);

  lora.targets = *ParseLoraTargets("w2");
  const LoraLayout experts_only(config, lora);
  EXPECT_EQ(experts_only.Find("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"),
            nullptr);
  EXPECT_FALSE(experts_only.layer(0).experts[0].w1.present());
  EXPECT_TRUE(experts_only.layer(0).experts[0].w2.present());
}

TEST(LoraTest, BadConfigsAndTargetListsAreSpecificErrors) {
  EXPECT_EQ(ParseLoraTargets("w1, q_proj ,w1").value(),
            (std::vector<LoraModule>{LoraModule::kW1, LoraModule::kQProj}));
  EXPECT_EQ(ParseLoraTargets("experts")->size(), 3U);
  EXPECT_EQ(ParseLoraTargets("all")->size(), 7U);
  EXPECT_EQ(LoraTargetNames(*ParseLoraTargets("attention")),
            (std::vector<std::string>{"q_proj", "k_proj", "v_proj", "o_proj"}));
  EXPECT_NE(ParseLoraTargets("w4").status().message().find("unknown lora target \"w4\""),
            std::string::npos);
  EXPECT_FALSE(ParseLoraTargets(" , ").ok());
  LoraConfig lora;
  EXPECT_TRUE(lora.Validate().ok());
  EXPECT_FLOAT_EQ(lora.scaling(), 2.0F);
  lora.rank = 0;
  EXPECT_NE(lora.Validate().message().find("rank 0"), std::string::npos);
  lora.rank = 4;
  lora.alpha = std::nan("");
  EXPECT_NE(lora.Validate().message().find("alpha"), std::string::npos);
  lora.alpha = 8;
  lora.targets = {LoraModule::kW1, LoraModule::kW1};
  EXPECT_NE(lora.Validate().message().find("twice"), std::string::npos);
  const FrozenBase base = FrozenBase::FromParameters(
      InitializeModel(testing::GradientCheckConfig(false, false, 2), 1), WeightFormat::kFloat32);
  EXPECT_FALSE(NewAdapters(base, lora).ok());
  EXPECT_EQ(ParseWeightFormat("int8").value(), WeightFormat::kInt8);
  EXPECT_NE(ParseWeightFormat("int4").status().message().find("fp32, bf16 or int8"),
            std::string::npos);
}

TEST(AdaptedModelTest, AdaptersOfAnotherModelAreRefused) {
  const FrozenBase base = FrozenBase::FromParameters(
      InitializeModel(testing::GradientCheckConfig(false, false, 2), 1), WeightFormat::kFloat32);
  const LoraAdapters other(testing::GradientCheckConfig(true, false, 2), AllTargets(false));
  AdaptedPass pass;
  const std::vector<int32_t> tokens = {1, 2, 3};
  const absl::Status status = AdaptedForward(base, other, tokens, 1, 3, pass);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("another model config"), std::string::npos);
}

// A base saved in its own format opens to the same weights: the INT8 file as I8 values with F32
// scales beside them (the documented format), the bf16 file as a plain checkpoint that
// LoadModel reads too; and a plain fp32 checkpoint opens as INT8 or bf16 tensor by tensor.
TEST(FrozenBaseFileTest, SavedBasesOpenToTheSameWeightsInEveryFormat) {
  testing::TempDir dir;
  const ModelParameters parameters =
      InitializeModel(testing::GradientCheckConfig(true, false, 2), 12);
  ASSERT_TRUE(SaveModel(parameters, dir.path() / "fp32").ok());
  const std::vector<int32_t> tokens =
      testing::RandomTokens(2 * 5, parameters.config().vocab_size, 3);
  for (const WeightFormat format : {WeightFormat::kInt8, WeightFormat::kBfloat16}) {
    const std::string name(WeightFormatName(format));
    const FrozenBase made = FrozenBase::FromParameters(parameters, format, 8);
    ASSERT_TRUE(SaveFrozenBase(made, dir.path() / name).ok()) << name;
    absl::StatusOr<FrozenBase> opened = FrozenBase::Open(dir.path() / name);
    ASSERT_TRUE(opened.ok()) << opened.status();
    EXPECT_EQ(opened->format(), format);
    EXPECT_EQ(opened->bytes(), made.bytes()) << name;
    absl::StatusOr<FrozenBase> converted = FrozenBase::Open(dir.path() / "fp32", format, 8);
    ASSERT_TRUE(converted.ok()) << converted.status();
    const LoraAdapters adapters = *NewAdapters(made, AllTargets(false));
    const std::vector<float> expected = AdaptedLogits(made, adapters, tokens, 2, 5);
    EXPECT_EQ(AdaptedLogits(*opened, adapters, tokens, 2, 5), expected) << name;
    EXPECT_EQ(AdaptedLogits(*converted, adapters, tokens, 2, 5), expected) << name;
  }
  absl::StatusOr<SafetensorsFile> file =
      SafetensorsFile::Open(dir.path() / "int8" / "model.safetensors");
  ASSERT_TRUE(file.ok());
  const SafetensorsEntry* values =
      file->Find("model.layers.1.block_sparse_moe.experts.2.w2.weight");
  const SafetensorsEntry* scales =
      file->Find("model.layers.1.block_sparse_moe.experts.2.w2.weight_scale");
  ASSERT_NE(values, nullptr);
  ASSERT_NE(scales, nullptr);
  EXPECT_EQ(values->dtype_name, "I8");
  EXPECT_EQ(values->shape, (std::vector<int64_t>{16, 12}));
  EXPECT_EQ(scales->dtype_name, "F32");
  EXPECT_EQ(scales->shape, (std::vector<int64_t>{16, 2}));  // ⌈12 / 8⌉ groups per row
  EXPECT_EQ(file->metadata().at("fedmoe_weight_format"), "int8");
  EXPECT_EQ(file->metadata().at("fedmoe_int8_group_size"), "8");
  EXPECT_EQ(file->Find("model.layers.0.input_layernorm.weight")->dtype_name, "F32");
  // The bf16 base is an ordinary checkpoint.
  absl::StatusOr<ModelParameters> plain = LoadModel(dir.path() / "bf16");
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_NEAR(plain->values()[100], parameters.values()[100],
              std::abs(parameters.values()[100]) / 128);
}

// A base initialised straight into a format is the fp32 initialisation converted: the same
// content hash in every format, and a different seed is a different base.
TEST(FrozenBaseFileTest, InitializingABaseInItsFormatIsInitializingThenConverting) {
  const MoeConfig config = testing::GradientCheckConfig(true, false, 2);
  const ModelParameters parameters = InitializeModel(config, 9);
  for (const WeightFormat format :
       {WeightFormat::kFloat32, WeightFormat::kBfloat16, WeightFormat::kInt8}) {
    absl::StatusOr<FrozenBase> direct = InitializeBase(config, format, 8, 9);
    ASSERT_TRUE(direct.ok()) << direct.status();
    EXPECT_EQ(BaseContentHash(*direct),
              BaseContentHash(FrozenBase::FromParameters(parameters, format, 8)))
        << WeightFormatName(format);
  }
  absl::StatusOr<FrozenBase> other = InitializeBase(config, WeightFormat::kInt8, 8, 10);
  ASSERT_TRUE(other.ok());
  EXPECT_NE(BaseContentHash(*other),
            BaseContentHash(FrozenBase::FromParameters(parameters, WeightFormat::kInt8, 8)));
}

// A base's content hash names its weights as held, whatever the files look like: the same
// weights from one file or from shards, converted alike, hash alike; another format, or one
// changed value, does not.
TEST(FrozenBaseFileTest, ContentHashNamesTheWeightsAsHeld) {
  testing::TempDir dir;
  ModelParameters parameters = InitializeModel(testing::GradientCheckConfig(true, false, 2), 14);
  ASSERT_TRUE(SaveModel(parameters, dir.path() / "single").ok());
  ASSERT_TRUE(SaveModel(parameters, dir.path() / "sharded", {DType::kF32, 4096}).ok());
  ASSERT_TRUE(std::filesystem::exists(dir.path() / "sharded" / "model.safetensors.index.json"));
  const auto hash = [&](const std::string& name, std::optional<WeightFormat> format) {
    absl::StatusOr<FrozenBase> base = FrozenBase::Open(dir.path() / name, format);
    EXPECT_TRUE(base.ok()) << base.status();
    return base.ok() ? BaseContentHash(*base) : std::string();
  };
  const std::string int8 = hash("single", WeightFormat::kInt8);
  EXPECT_EQ(int8.size(), 64U);
  EXPECT_EQ(hash("sharded", WeightFormat::kInt8), int8);
  EXPECT_EQ(BaseContentHash(FrozenBase::FromParameters(parameters, WeightFormat::kInt8)), int8);
  ASSERT_TRUE(SaveFrozenBase(FrozenBase::FromParameters(parameters, WeightFormat::kInt8),
                             dir.path() / "quantized")
                  .ok());
  EXPECT_EQ(hash("quantized", std::nullopt), int8) << "the quantized copy is the same base";
  EXPECT_NE(hash("single", WeightFormat::kBfloat16), int8);
  EXPECT_NE(hash("single", std::nullopt), int8);
  parameters.values()[1000] += 0.5F;
  EXPECT_NE(BaseContentHash(FrozenBase::FromParameters(parameters, WeightFormat::kInt8)), int8);

  const FrozenBase base = FrozenBase::FromParameters(parameters, WeightFormat::kInt8);
  EXPECT_TRUE(CheckBaseContentHash(base, BaseContentHash(base), "here").ok());
  const absl::Status refused = CheckBaseContentHash(base, int8, "/srv/base");
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.message().find("the base at /srv/base held as int8 has content hash"),
            std::string::npos)
      << refused;
  EXPECT_NE(refused.message().find("not the federation's " + int8), std::string::npos) << refused;
}

TEST(FrozenBaseFileTest, BrokenInt8FilesAreSpecificErrors) {
  testing::TempDir dir;
  const ModelParameters parameters =
      InitializeModel(testing::GradientCheckConfig(false, false, 2), 13);
  const FrozenBase base = FrozenBase::FromParameters(parameters, WeightFormat::kInt8, 8);
  ASSERT_TRUE(SaveFrozenBase(base, dir.path()).ok());
  const std::filesystem::path weights = dir.path() / "model.safetensors";
  // Rewrite the file without one scale tensor, then with an extra tensor.
  const auto rewrite = [&](const std::string& drop, bool add_extra) {
    absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(weights);
    ASSERT_TRUE(file.ok());
    std::vector<RawTensorToWrite> tensors;
    std::vector<std::vector<std::byte>> copies;
    copies.reserve(file->entries().size() + 1);
    for (const SafetensorsEntry& entry : file->entries()) {
      if (entry.name == drop) continue;
      const std::span<const std::byte> bytes = file->Bytes(entry);
      copies.emplace_back(bytes.begin(), bytes.end());
      tensors.push_back({entry.name, entry.dtype, entry.shape, copies.back()});
    }
    if (add_extra) {
      copies.emplace_back(16, std::byte{0});
      tensors.push_back({"model.layers.9.mystery.weight", DType::kF32, {4}, copies.back()});
    }
    ASSERT_TRUE(
        WriteRawSafetensors(dir.path() / "next.safetensors", tensors, file->metadata()).ok());
    std::filesystem::rename(dir.path() / "next.safetensors", weights);
  };
  rewrite("", true);
  absl::StatusOr<FrozenBase> opened = FrozenBase::Open(dir.path());
  ASSERT_FALSE(opened.ok());
  EXPECT_NE(opened.status().message().find("\"model.layers.9.mystery.weight\" has no place"),
            std::string::npos)
      << opened.status();
  rewrite("model.layers.9.mystery.weight", false);
  ASSERT_TRUE(FrozenBase::Open(dir.path()).ok());
  rewrite("model.layers.0.self_attn.q_proj.weight_scale", false);
  opened = FrozenBase::Open(dir.path());
  ASSERT_FALSE(opened.ok());
  EXPECT_NE(opened.status().message().find(
                "INT8 tensor \"model.layers.0.self_attn.q_proj.weight\" has no "
                "\"model.layers.0.self_attn.q_proj.weight_scale\" beside it"),
            std::string::npos)
      << opened.status();
}

}  // namespace
}  // namespace fedmoe::model
