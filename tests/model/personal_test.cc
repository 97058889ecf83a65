// Personal models with private experts (model/personal.h): composing and splitting them, the
// grouped balance loss, the private router rows' gradient against finite differences, and the
// proximal term of Ditto against its closed form.
#include "model/personal.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "model/backward.h"
#include "model/init.h"
#include "model/trainer.h"
#include "model/training_backend.h"
#include "tests/testing_tiny_model.h"

namespace fedmoe::model {
namespace {

// The global model: the backward tests' configuration, with a shared expert.
MoeConfig GlobalConfig() { return testing::GradientCheckConfig(true, false, 2); }

bool IsPrivate(const TensorSpec& tensor, int64_t global_experts) {
  return tensor.role == TensorRole::kRoutedExpert && tensor.expert >= global_experts;
}

TEST(PersonalModelTest, TheGlobalPartIsTheGlobalModelBitForBit) {
  const ModelParameters global = InitializeModel(GlobalConfig(), 3);
  absl::StatusOr<ModelParameters> personal = ComposePersonal(global, 2, nullptr, 11);
  ASSERT_TRUE(personal.ok()) << personal.status();
  EXPECT_EQ(personal->config().num_local_experts, 6);
  absl::StatusOr<ModelParameters> part = GlobalPart(*personal, global.config());
  ASSERT_TRUE(part.ok()) << part.status();
  ASSERT_EQ(part->values().size(), global.values().size());
  EXPECT_TRUE(std::equal(part->values().begin(), part->values().end(), global.values().begin()));
  EXPECT_EQ(*CountPrivateExperts(personal->config(), global.config()), 2);
}

TEST(PersonalModelTest, FreshPrivateExpertsAreNoisyCopiesOfGlobalOnes) {
  const ModelParameters global = InitializeModel(GlobalConfig(), 3);
  ModelParameters personal = *ComposePersonal(global, 2, nullptr, 11);
  const int64_t hidden = global.config().hidden_size;
  for (int64_t layer = 0; layer < 2; ++layer) {
    for (int64_t e = 4; e < 6; ++e) {
      const ExpertOffsets& own = personal.layout().layer(layer).experts[static_cast<size_t>(e)];
      const ExpertOffsets& source =
          global.layout().layer(layer).experts[static_cast<size_t>(e % 4)];
      const int64_t size = global.config().intermediate_size * hidden;
      double difference = 0;
      double squares = 0;
      for (int64_t k = 0; k < size; ++k) {
        difference += std::abs(personal.values()[static_cast<size_t>(own.w2 + k)] -
                               global.values()[static_cast<size_t>(source.w2 + k)]);
        squares += std::abs(global.values()[static_cast<size_t>(source.w2 + k)]);
      }
      // About 1% of the source's magnitude: a copy that parts ways, not a new expert.
      EXPECT_GT(difference, 0.001 * squares);
      EXPECT_LT(difference, 0.05 * squares);
      const float* row = personal.at(personal.layout().layer(layer).router + e * hidden);
      const float* source_row = global.at(global.layout().layer(layer).router + (e % 4) * hidden);
      for (int64_t k = 0; k < hidden; ++k) EXPECT_NEAR(row[k], source_row[k], 0.05);
    }
  }
  // The same seed makes the same experts.
  ModelParameters again = *ComposePersonal(global, 2, nullptr, 11);
  EXPECT_TRUE(std::equal(again.values().begin(), again.values().end(), personal.values().begin()));
}

TEST(PersonalModelTest, ANewGlobalModelKeepsThePrivateExpertsAndRows) {
  const ModelParameters old_global = InitializeModel(GlobalConfig(), 3);
  ModelParameters previous = *ComposePersonal(old_global, 2, nullptr, 11);
  // A recognisable pattern in everything private.
  const int64_t hidden = old_global.config().hidden_size;
  for (const TensorSpec& tensor : previous.layout().tensors()) {
    if (IsPrivate(tensor, 4)) {
      for (float& value : previous.tensor(tensor)) value = 0.125f;
    }
    if (tensor.role == TensorRole::kRouter) {
      for (int64_t k = 4 * hidden; k < 6 * hidden; ++k) previous.tensor(tensor)[k] = -0.375f;
    }
  }
  const ModelParameters new_global = InitializeModel(GlobalConfig(), 4);
  absl::StatusOr<ModelParameters> personal = ComposePersonal(new_global, 2, &previous, 0);
  ASSERT_TRUE(personal.ok()) << personal.status();
  for (const TensorSpec& tensor : personal->layout().tensors()) {
    const std::span<const float> values = personal->tensor(tensor);
    if (IsPrivate(tensor, 4)) {
      for (const float value : values) ASSERT_EQ(value, 0.125f) << tensor.name;
    } else if (tensor.role == TensorRole::kRouter) {
      const std::span<const float> rows = new_global.tensor(*new_global.layout().Find(tensor.name));
      for (int64_t k = 0; k < 4 * hidden; ++k) ASSERT_EQ(values[k], rows[k]) << tensor.name;
      for (int64_t k = 4 * hidden; k < 6 * hidden; ++k) ASSERT_EQ(values[k], -0.375f);
    } else {
      const std::span<const float> expected =
          new_global.tensor(*new_global.layout().Find(tensor.name));
      ASSERT_TRUE(std::equal(values.begin(), values.end(), expected.begin())) << tensor.name;
    }
  }
}

TEST(PersonalModelTest, AnotherShapeIsRefusedWithTheWayOut) {
  const ModelParameters global = InitializeModel(GlobalConfig(), 3);
  ModelParameters three = *ComposePersonal(global, 3, nullptr, 1);
  absl::StatusOr<ModelParameters> refused = ComposePersonal(global, 2, &three, 0);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("reset"), std::string::npos) << refused.status();

  MoeConfig wider = GlobalConfig();
  wider.hidden_size = 32;
  wider.head_dim = 8;
  const ModelParameters other = InitializeModel(wider, 3);
  ModelParameters other_personal = *ComposePersonal(other, 2, nullptr, 1);
  refused = ComposePersonal(global, 2, &other_personal, 0);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("personal reset"), std::string::npos);
  EXPECT_FALSE(GlobalPart(other_personal, global.config()).ok());
  EXPECT_FALSE(ComposePersonal(global, 0, nullptr, 0).ok());
  EXPECT_FALSE(ComposePersonal(global, kMaxPrivateExperts + 1, nullptr, 0).ok());
}

TEST(PersonalModelTest, GlobalExpertSlotsDropThePrivateColumns) {
  const std::vector<std::vector<int64_t>> slots = {{1, 2, 3, 4, 50, 60}, {5, 6, 7, 8, 70, 80}};
  const std::vector<std::vector<int64_t>> global = GlobalExpertSlots(slots, 4);
  EXPECT_EQ(global, (std::vector<std::vector<int64_t>>{{1, 2, 3, 4}, {5, 6, 7, 8}}));
}

// Within-group uniform routing gives L_bal = 1 and the same gradient for every expert, which
// the softmax turns into none: the split between global and private experts is left free.
TEST(PersonalModelTest, TheBalanceLossLeavesTheSplitBetweenGroupsFree) {
  // 10 rows, top-2: 20 slots, 16 to the four global experts (4 each), 4 to the two private.
  const std::vector<int64_t> slots = {4, 4, 4, 4, 2, 2};
  const std::vector<double> sums = {2, 2, 2, 2, 1, 1};
  std::vector<float> gradient(6);
  const double grouped = BalanceLoss(slots, sums, 10, 2, 1.0, gradient, 2);
  EXPECT_NEAR(grouped, 1.0, 1e-12);
  for (const float g : gradient) EXPECT_FLOAT_EQ(g, gradient[0]);
  // As one group the same routing is unbalanced: the private experts are pushed up.
  const double single = BalanceLoss(slots, sums, 10, 2, 1.0, gradient, 0);
  EXPECT_NE(single, 1.0);
  EXPECT_LT(gradient[4], gradient[0]);
  // A group that no slot reached has f = 0, not a division by zero.
  const std::vector<int64_t> none_private = {5, 5, 5, 5, 0, 0};
  const double empty = BalanceLoss(none_private, sums, 10, 2, 1.0, gradient, 2);
  EXPECT_TRUE(std::isfinite(empty));
  EXPECT_EQ(gradient[4], 0.0f);
}

// The private router rows' gradient (cross-entropy plus the grouped balance term, through the
// top-k and its renormalisation) against central finite differences of the loss, every entry.
TEST(PersonalModelTest, PrivateRouterRowsMatchFiniteDifferences) {
  const ModelParameters global = InitializeModel(GlobalConfig(), 21);
  ModelParameters personal = *ComposePersonal(global, 2, nullptr, 5);
  const MoeConfig& config = personal.config();
  constexpr int64_t kBatch = 2;
  constexpr int64_t kSeqLen = 6;
  std::mt19937 generator(4);
  std::vector<int32_t> tokens(kBatch * kSeqLen);
  for (int32_t& t : tokens) t = static_cast<int32_t>(generator() % 23);
  const std::vector<int32_t> targets = NextTokenTargets(tokens, kBatch, kSeqLen);
  BackwardOptions options;
  options.balance_coefficient = 0.5;
  options.predictions_in_step = 10;
  options.private_experts = 2;
  ForwardPass pass;
  ASSERT_TRUE(Forward(personal, tokens, kBatch, kSeqLen, pass).ok());
  std::vector<float> gradients(personal.values().size(), 0.0f);
  BackwardScratch scratch;
  const TrainableSet trainable = *TrainableSet::Parse("experts,router");
  ASSERT_TRUE(Backward(personal, pass, targets, trainable, options, gradients, scratch).ok());

  auto loss_at = [&](std::vector<int32_t>* routing) {
    ForwardPass perturbed;
    EXPECT_TRUE(Forward(personal, tokens, kBatch, kSeqLen, perturbed).ok());
    routing->clear();
    for (const LayerActivations& layer : perturbed.layers) {
      routing->insert(routing->end(), layer.expert_index.begin(), layer.expert_index.end());
    }
    return ComputeLoss(personal, perturbed, targets, options).total();
  };
  int checked = 0;
  int nonzero = 0;
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    const int64_t first = personal.layout().layer(layer).router + 4 * config.hidden_size;
    for (int64_t index = first; index < first + 2 * config.hidden_size; ++index) {
      const float saved = personal.values()[static_cast<size_t>(index)];
      constexpr float kStep = 2e-3f;
      std::vector<int32_t> routing_plus;
      std::vector<int32_t> routing_minus;
      personal.values()[static_cast<size_t>(index)] = saved + kStep;
      const double plus = loss_at(&routing_plus);
      personal.values()[static_cast<size_t>(index)] = saved - kStep;
      const double minus = loss_at(&routing_minus);
      personal.values()[static_cast<size_t>(index)] = saved;
      if (routing_plus != routing_minus) continue;
      const double numeric = (plus - minus) / (2.0 * kStep);
      EXPECT_NEAR(gradients[static_cast<size_t>(index)], numeric, 1e-3 + 3e-2 * std::abs(numeric))
          << "layer " << layer << " private row entry " << index - first;
      ++checked;
      nonzero += std::abs(numeric) > 1e-4 ? 1 : 0;
    }
  }
  // A routing switch between the two sides makes a difference meaningless; most survive.
  EXPECT_GT(checked, 2 * 16);
  EXPECT_GT(nonzero, checked / 2) << "private rows that no token reaches test nothing";
}

// A personal model's pass after a commit: only the private experts and their router rows move;
// the global experts, the global rows and every other tensor stay as the federation made them,
// bit for bit, although the backward pass computes their gradients.
TEST(PersonalModelTest, APassWithTheGlobalExpertsFrozenMovesOnlyThePrivateOnes) {
  const ModelParameters global = InitializeModel(GlobalConfig(), 3);
  ModelParameters personal = *ComposePersonal(global, 2, nullptr, 5);
  const ModelParameters before = personal;
  BackendOptions options;
  options.trainable = *TrainableSet::Parse("experts,router");
  options.trainable.first_trained_expert = 4;
  absl::StatusOr<std::unique_ptr<TrainingBackend>> backend =
      CreateCpuTrainingBackend(personal, options);
  ASSERT_TRUE(backend.ok());
  std::mt19937 generator(6);
  Batch batch;
  batch.batch = 2;
  batch.seq_len = 8;
  for (int i = 0; i < 16; ++i) batch.tokens.push_back(static_cast<int32_t>(generator() % 23));
  batch.targets = NextTokenTargets(batch.tokens, 2, 8);
  batch.predictions = 14;
  BackwardOptions loss;
  loss.balance_coefficient = 0.1;
  loss.predictions_in_step = 14;
  loss.private_experts = 2;
  for (int step = 0; step < 3; ++step) {
    ASSERT_TRUE((*backend)->AccumulateGradients(batch, loss).ok());
    ASSERT_TRUE((*backend)->ApplyGradients(1e-2, 1.0).ok());
  }
  const int64_t hidden = global.config().hidden_size;
  for (const TensorSpec& tensor : personal.layout().tensors()) {
    const std::span<const float> now = personal.tensor(tensor);
    const std::span<const float> then = before.tensor(tensor);
    int64_t frozen_end = tensor.size;  // values [0, frozen_end) must not move
    if (IsPrivate(tensor, 4)) frozen_end = 0;
    if (tensor.role == TensorRole::kRouter) frozen_end = 4 * hidden;
    EXPECT_TRUE(std::equal(now.begin(), now.begin() + frozen_end, then.begin())) << tensor.name;
    if (frozen_end < tensor.size) {
      EXPECT_FALSE(std::equal(now.begin() + frozen_end, now.end(), then.begin() + frozen_end))
          << tensor.name << " did not train";
    }
  }
  // What a run reports about trained values counts only those.
  int64_t trained = 0;
  for (const TrainedRange& range : TrainedRanges(personal.layout(), options.trainable)) {
    trained += range.size;
  }
  const MoeConfig& config = global.config();
  EXPECT_EQ(trained,
            config.num_hidden_layers * 2 * (3 * config.intermediate_size * hidden + hidden));
}

// Ditto's term on the CPU backend: one AdamW step with a zero learning-rate-free check of the
// gradient it adds, 2λ(θ − anchor), through CopyGradientsTo before and after.
TEST(PersonalModelTest, TheProximalTermAddsTwiceLambdaTimesTheDistance) {
  ModelParameters parameters = InitializeModel(GlobalConfig(), 8);
  ModelParameters anchor = parameters;
  for (float& value : anchor.values()) value -= 0.25f;
  BackendOptions options;
  options.trainable = *TrainableSet::Parse("experts,router");
  options.adamw.weight_decay = 0;
  options.proximal_coefficient = 0.5;
  options.proximal_anchor = anchor.values();
  absl::StatusOr<std::unique_ptr<TrainingBackend>> backend =
      CreateCpuTrainingBackend(parameters, options);
  ASSERT_TRUE(backend.ok()) << backend.status();
  // No batch: the whole gradient is the proximal one, 2·0.5·0.25 = 0.25 on every trainable value.
  const std::vector<float> before(parameters.values().begin(), parameters.values().end());
  absl::StatusOr<double> norm = (*backend)->ApplyGradients(/*learning_rate=*/0.01, 0);
  ASSERT_TRUE(norm.ok());
  int64_t trainable_values = 0;
  for (const TensorSpec& tensor : parameters.layout().tensors()) {
    if (options.trainable.Includes(tensor.role)) trainable_values += tensor.size;
  }
  EXPECT_NEAR(*norm, 0.25 * std::sqrt(static_cast<double>(trainable_values)), 1e-3 * *norm);
  // Adam's first step moves each trained value by the learning rate toward the anchor.
  for (const TensorSpec& tensor : parameters.layout().tensors()) {
    const bool trained = options.trainable.Includes(tensor.role);
    for (int64_t k = tensor.offset; k < tensor.offset + tensor.size; k += 7) {
      const float moved =
          parameters.values()[static_cast<size_t>(k)] - before[static_cast<size_t>(k)];
      ASSERT_NEAR(moved, trained ? -0.01f : 0.0f, 1e-5) << tensor.name;
    }
  }
  BackendOptions misfit = options;
  const std::vector<float> short_anchor(10);
  misfit.proximal_anchor = short_anchor;
  EXPECT_FALSE(CreateCpuTrainingBackend(parameters, misfit).ok());
}

}  // namespace
}  // namespace fedmoe::model
