// A round of adapters, both ends without the processes (issue [peft]): the coordinator's spec
// holds every lora_B and router with the role its merge needs, a site's update is its change of
// them, the merge gives each expert's B the token-weighted mean, and a site refuses published
// adapters of another shape or with an A that is not the draw of the round's seed.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "client/update.h"
#include "coordinator/round/expert_merge.h"
#include "coordinator/round/global_model.h"
#include "coordinator/round/update_spec.h"
#include "model/adapted_model.h"
#include "model/frozen_base.h"
#include "model/init.h"
#include "model/lora.h"
#include "model/peft.h"
#include "tests/testing_temp_dir.h"
#include "tests/testing_tiny_model.h"

namespace fedmoe::coordinator {
namespace {

class AdapterRoundTest : public ::testing::Test {
 protected:
  AdapterRoundTest()
      : base_(model::FrozenBase::FromParameters(model::InitializeModel(testing::TinyMoeConfig(), 3),
                                                model::WeightFormat::kInt8, 2)) {
    lora_.rank = 2;
    lora_.alpha = 4;
    lora_.targets = *model::ParseLoraTargets("all");
    lora_.seed = 9;
    policy_.privacy_mode = v1::PrivacySpec::MODE_NONE;
    policy_.clip_norm = 100;
  }

  GlobalModel Global() const {
    return GlobalModel(*model::NewAdapters(base_, lora_),
                       BaseIdentity{.content_sha256 = model::BaseContentHash(base_),
                                    .format = base_.format(),
                                    .directory = "/srv/base",
                                    .files = {}});
  }

  v1::UpdateSpec Spec(const GlobalModel& global, int64_t clients) const {
    absl::StatusOr<PlannedUpdate> planned =
        BuildUpdateSpec(global, policy_, v1::ModelManifest(), clients, std::string(32, 's'));
    EXPECT_TRUE(planned.ok()) << planned.status();
    return planned->spec;
  }

  model::FrozenBase base_;
  model::LoraConfig lora_;
  RoundPolicy policy_;
};

TEST_F(AdapterRoundTest, TheSpecNamesTheBaseAndHoldsEveryBAndRouterWithItsMergeRole) {
  const GlobalModel global = Global();
  const v1::UpdateSpec spec = Spec(global, 3);
  ASSERT_TRUE(spec.has_adapters());
  EXPECT_EQ(spec.adapters().base_sha256(), model::BaseContentHash(base_));
  EXPECT_EQ(spec.adapters().base_format(), "int8");
  EXPECT_EQ(spec.adapters().rank(), 2u);
  EXPECT_EQ(spec.adapters().alpha(), 4);
  EXPECT_EQ(spec.adapters().a_seed(), 9u);
  EXPECT_EQ(std::vector<std::string>(spec.adapters().target_modules().begin(),
                                     spec.adapters().target_modules().end()),
            model::LoraTargetNames(lora_.targets));

  const model::LoraLayout& layout = global.adapters()->layout();
  int64_t expected_values = 0;
  int expected_tensors = 0;
  for (const model::AdapterTensor& tensor : layout.tensors()) {
    if (tensor.role == model::AdapterRole::kLoraA) continue;
    expected_values += tensor.size;
    ++expected_tensors;
  }
  ASSERT_EQ(spec.trainable_tensors_size(), expected_tensors);
  EXPECT_EQ(spec.layout().delta_values(), static_cast<uint64_t>(expected_values));
  int routed = 0;
  int shared = 0;
  int routers = 0;
  int attention = 0;
  for (const v1::TrainableTensor& wire : spec.trainable_tensors()) {
    const model::AdapterTensor* tensor = layout.Find(wire.name());
    ASSERT_NE(tensor, nullptr) << wire.name();
    EXPECT_NE(tensor->role, model::AdapterRole::kLoraA) << wire.name();
    switch (wire.role()) {
      case v1::TrainableTensor::ROLE_ROUTED_EXPERT:
        EXPECT_NE(wire.name().find(".experts."), std::string::npos) << wire.name();
        EXPECT_EQ(wire.layer(), static_cast<uint32_t>(tensor->layer));
        EXPECT_EQ(wire.expert(), static_cast<uint32_t>(tensor->expert));
        ++routed;
        break;
      case v1::TrainableTensor::ROLE_SHARED_EXPERT:
        EXPECT_NE(wire.name().find(".shared_experts."), std::string::npos) << wire.name();
        ++shared;
        break;
      case v1::TrainableTensor::ROLE_ROUTER:
        EXPECT_EQ(tensor->role, model::AdapterRole::kRouter);
        ++routers;
        break;
      default:
        EXPECT_NE(wire.name().find(".self_attn."), std::string::npos) << wire.name();
        ++attention;
    }
  }
  // Per layer: 3 experts × w1, w2, w3; the shared expert's three; one router; q, k, v, o.
  EXPECT_EQ(routed, 2 * 3 * 3);
  EXPECT_EQ(shared, 2 * 3);
  EXPECT_EQ(routers, 2);
  EXPECT_EQ(attention, 2 * 4);
}

TEST_F(AdapterRoundTest, EachExpertsBIsMergedAsTheTokenWeightedMeanOfTheSitesChanges) {
  const GlobalModel global = Global();
  const v1::UpdateSpec spec = Spec(global, 2);
  const model::LoraAdapters& start = *global.adapters();
  const model::AdapterTensor& b = *start.layout().Find(
      "base_model.model.model.layers.1.block_sparse_moe.experts.2.w3.lora_B.weight");
  const model::AdapterTensor& router =
      *start.layout().Find("base_model.model.model.layers.0.block_sparse_moe.gate.weight");

  // Two sites move the same B by 0.01 and −0.02, having routed 3 and 1 of 4 slots of layer 1
  // to expert 2; each moves layer 0's router by its own amount.
  const double moves[] = {0.01, -0.02};
  const std::vector<std::vector<int64_t>> slots[] = {{{2, 1, 1}, {1, 0, 3}},
                                                     {{1, 2, 1}, {2, 1, 1}}};
  std::vector<double> sum(spec.layout().plain_values(), 0.0);
  for (int site = 0; site < 2; ++site) {
    model::LoraAdapters local = start;
    for (float& value : local.tensor(b)) value += static_cast<float>(moves[site]);
    for (float& value : local.tensor(router)) value += static_cast<float>(moves[site] / 2);
    absl::StatusOr<client::PlainUpdate> plain =
        client::BuildPlainUpdate(start, local, slots[site], spec);
    ASSERT_TRUE(plain.ok()) << plain.status();
    for (size_t k = 0; k < sum.size(); ++k) sum[k] += plain->values[k];
  }
  absl::StatusOr<MergedUpdate> merged = MergeUpdate(sum, spec, 2, policy_.expert_weight_floor, 0.0);
  ASSERT_TRUE(merged.ok()) << merged.status();
  GlobalModel next = global;
  ServerOptimizer optimizer(policy_);
  ASSERT_TRUE(optimizer.Apply(spec, *merged, next).ok());

  const double weighted = (0.75 * moves[0] + 0.25 * moves[1]) / (0.75 + 0.25);
  const std::span<const float> merged_b = *next.Tensor(b.name);
  const std::span<const float> started_b = start.tensor(b);
  for (size_t k = 0; k < merged_b.size(); ++k) {
    EXPECT_NEAR(merged_b[k] - started_b[k], weighted, 1e-6);
  }
  const std::span<const float> merged_router = *next.Tensor(router.name);
  const std::span<const float> started_router = start.tensor(router);
  for (size_t k = 0; k < merged_router.size(); ++k) {
    EXPECT_NEAR(merged_router[k] - started_router[k], (moves[0] + moves[1]) / 4, 1e-6);
  }
  // A frozen A is in no update: the merge cannot move it.
  for (const model::AdapterTensor& tensor : start.layout().tensors()) {
    if (tensor.role != model::AdapterRole::kLoraA) continue;
    const std::span<const float> before = start.tensor(tensor);
    const std::span<const float> after = *next.Tensor(tensor.name);
    EXPECT_TRUE(std::equal(before.begin(), before.end(), after.begin(), after.end()));
  }
}

TEST_F(AdapterRoundTest, ASiteRefusesPublishedAdaptersOfAnotherShapeOrWithAnotherA) {
  const GlobalModel global = Global();
  const v1::UpdateSpec spec = Spec(global, 3);
  testing::TempDir dir;
  ASSERT_TRUE(SaveGlobalModel(global, dir.path()).ok());
  absl::StatusOr<model::LoraAdapters> loaded =
      client::AdaptersFromSpec(base_, spec.adapters(), dir.path());
  ASSERT_TRUE(loaded.ok()) << loaded.status();

  v1::AdapterSpec other_rank = spec.adapters();
  other_rank.set_rank(4);
  absl::Status refused = client::AdaptersFromSpec(base_, other_rank, dir.path()).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.message().find("are not the round's (rank 4"), std::string::npos) << refused;

  // The same shape and seed, but one value of one A is not what the seed draws.
  model::LoraAdapters tampered = *global.adapters();
  const model::AdapterTensor& a = *tampered.layout().Find(
      "base_model.model.model.layers.0.block_sparse_moe.experts.1.w2.lora_A.weight");
  tampered.tensor(a)[0] += 0.5f;
  ASSERT_TRUE(model::SaveAdapters(tampered, dir.path(), "/srv/base").ok());
  refused = client::AdaptersFromSpec(base_, spec.adapters(), dir.path()).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.message().find(a.name + " at "), std::string::npos) << refused;
  EXPECT_NE(refused.message().find("is not the draw of the round's seed 9"), std::string::npos)
      << refused;
}

}  // namespace
}  // namespace fedmoe::coordinator
