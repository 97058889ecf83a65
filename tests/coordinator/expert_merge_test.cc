// The expert merge and the server optimizer against hand computations (DESIGN §4), and the
// bound that makes clipping mean something: without noise, a round moves every merged tensor
// by at most the clip norm times the server learning rate, however large the sites' deltas.
#include "coordinator/round/expert_merge.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "client/update.h"
#include "coordinator/round/privacy_plan.h"
#include "coordinator/round/update_spec.h"
#include "coordinator/state/model_repository.h"
#include "model/init.h"
#include "privacy/ring_encoder.h"
#include "privacy/secure_random.h"
#include "tests/testing_temp_dir.h"
#include "tests/testing_tiny_model.h"

namespace fedmoe::coordinator {
namespace {

using testing::TinyMoeConfig;

v1::UpdateSpec SpecFor(const model::ModelParameters& model, const RoundPolicy& policy,
                       int64_t clients) {
  absl::StatusOr<PlannedUpdate> planned = BuildUpdateSpec(
      GlobalModel(model), policy, v1::ModelManifest(), clients, std::string(32, 's'));
  EXPECT_TRUE(planned.ok()) << planned.status();
  return planned->spec;
}

// One site's contribution as the merge sees it: its Δ per spec tensor (already clipped) and
// its routing fractions w[layer][expert].
struct Site {
  std::vector<double> delta;
  std::vector<std::vector<double>> weights;
};

// The plain sum of the sites' vectors, written from the layout's definition rather than by the
// client's code: each routed block times w_e, then w·scale, then slots / histogram_scale.
std::vector<double> PlainSum(const v1::UpdateSpec& spec, const std::vector<Site>& sites,
                             double slots_per_layer) {
  const v1::UpdateLayout& layout = spec.layout();
  const size_t experts = layout.num_experts();
  std::vector<double> sum(layout.plain_values(), 0.0);
  for (const Site& site : sites) {
    for (int i = 0; i < spec.trainable_tensors_size(); ++i) {
      const v1::TrainableTensor& tensor = spec.trainable_tensors(i);
      const uint64_t end = i + 1 < spec.trainable_tensors_size()
                               ? spec.trainable_tensors(i + 1).offset()
                               : layout.delta_values();
      const double weight = tensor.role() == v1::TrainableTensor::ROLE_ROUTED_EXPERT
                                ? site.weights[tensor.layer()][tensor.expert()]
                                : 1.0;
      for (uint64_t k = tensor.offset(); k < end; ++k) sum[k] += weight * site.delta[k];
    }
    for (size_t l = 0; l < layout.num_moe_layers(); ++l) {
      for (size_t e = 0; e < experts; ++e) {
        sum[layout.expert_weights_offset() + l * experts + e] +=
            site.weights[l][e] * layout.expert_weights_scale();
        sum[layout.histogram_offset() + l * experts + e] +=
            site.weights[l][e] * slots_per_layer / layout.histogram_scale();
      }
    }
  }
  return sum;
}

std::vector<double> RandomDelta(size_t size, std::mt19937_64& random) {
  std::normal_distribution<double> normal(0.0, 0.1);
  std::vector<double> delta(size);
  for (double& value : delta) value = normal(random);
  return delta;
}

class ExpertMergeTest : public ::testing::Test {
 protected:
  ExpertMergeTest() : model_(model::InitializeModel(TinyMoeConfig(), 7)) {
    spec_ = SpecFor(model_, policy_, 3);
    std::mt19937_64 random(11);
    const size_t delta_values = spec_.layout().delta_values();
    // Layer 0: expert 2 has one user, at 0.05% of its slots, below w_min = 0.001.
    // Layer 1: expert 0 nobody used.
    sites_ = {
        {RandomDelta(delta_values, random), {{0.5, 0.5, 0.0}, {0.0, 0.5, 0.5}}},
        {RandomDelta(delta_values, random), {{0.75, 0.25, 0.0}, {0.0, 0.25, 0.75}}},
        {RandomDelta(delta_values, random), {{0.4995, 0.5, 0.0005}, {0.0, 0.5, 0.5}}},
    };
  }

  // The hand merge of one value of spec tensor `index`.
  double Expected(int index, uint64_t k) const {
    const v1::TrainableTensor& tensor = spec_.trainable_tensors(index);
    double numerator = 0;
    double denominator = 0;
    for (const Site& site : sites_) {
      const double weight = tensor.role() == v1::TrainableTensor::ROLE_ROUTED_EXPERT
                                ? site.weights[tensor.layer()][tensor.expert()]
                                : 1.0;
      numerator += weight * site.delta[k];
      denominator += tensor.role() == v1::TrainableTensor::ROLE_ROUTED_EXPERT ? weight : 1.0;
    }
    return numerator / denominator;
  }

  uint64_t End(int index) const {
    return index + 1 < spec_.trainable_tensors_size() ? spec_.trainable_tensors(index + 1).offset()
                                                      : spec_.layout().delta_values();
  }

  RoundPolicy policy_;
  model::ModelParameters model_;
  v1::UpdateSpec spec_;
  std::vector<Site> sites_;
};

TEST_F(ExpertMergeTest, WeightsRoutedExpertsAveragesTheRestAndLeavesUnusedExpertsAlone) {
  const double slots_per_layer = 1000;
  const std::vector<double> sum = PlainSum(spec_, sites_, slots_per_layer);
  absl::StatusOr<MergedUpdate> merged = MergeUpdate(sum, spec_, 3, 1e-3, 0.0);
  ASSERT_TRUE(merged.ok()) << merged.status();
  EXPECT_EQ(merged->expert_weight_floor, 1e-3);

  int routed = 0;
  int router = 0;
  int shared = 0;
  for (int i = 0; i < spec_.trainable_tensors_size(); ++i) {
    const v1::TrainableTensor& tensor = spec_.trainable_tensors(i);
    const bool unused = tensor.role() == v1::TrainableTensor::ROLE_ROUTED_EXPERT &&
                        ((tensor.layer() == 0 && tensor.expert() == 2) ||
                         (tensor.layer() == 1 && tensor.expert() == 0));
    EXPECT_EQ(merged->untouched[static_cast<size_t>(i)], unused) << tensor.name();
    for (uint64_t k = tensor.offset(); k < End(i); ++k) {
      const double expected = unused ? 0.0 : Expected(i, k);
      ASSERT_NEAR(merged->delta[k], expected, 1e-6 * (1 + std::abs(expected)))
          << tensor.name() << " value " << k - tensor.offset();
    }
    routed += tensor.role() == v1::TrainableTensor::ROLE_ROUTED_EXPERT;
    router += tensor.role() == v1::TrainableTensor::ROLE_ROUTER;
    shared += tensor.role() == v1::TrainableTensor::ROLE_SHARED_EXPERT;
  }
  // Both layers' routers, three w1/w2/w3 per routed expert, one merged shared MLP per layer.
  EXPECT_EQ(router, 2);
  EXPECT_EQ(routed, 2 * 3 * 3);
  EXPECT_EQ(shared, 2 * 3);
  EXPECT_EQ(merged->experts_merged, 4);
  EXPECT_EQ(merged->experts_untouched, 2);
  // The federation's load: Σ_u w_ue and the slots, back in their own units.
  EXPECT_NEAR(merged->expert_weight_sums[0][0], 1.7495, 1e-12);
  EXPECT_NEAR(merged->expert_weight_sums[0][2], 0.0005, 1e-12);
  EXPECT_NEAR(merged->expert_token_slots[1][2], 1.75 * slots_per_layer, 1e-9);
}

TEST_F(ExpertMergeTest, NoiseRaisesTheFloorToTwoStandardDeviationsOfASummedWeight) {
  const v1::UpdateLayout& layout = spec_.layout();
  EXPECT_EQ(ExpertWeightFloor(layout, 1e-3, 0.0), 1e-3);
  // σ_w = σ / scale. The summed weights are 1.7495, 1.25, 0.0005 (layer 0) and 0, 1.25, 1.75
  // (layer 1): a floor of 1.8 leaves every expert alone, one of 1.2 merges four.
  const double sigma_for_floor_18 = 1.8 / 2 * layout.expert_weights_scale();
  EXPECT_NEAR(ExpertWeightFloor(layout, 1e-3, sigma_for_floor_18), 1.8, 1e-12);
  const std::vector<double> sum = PlainSum(spec_, sites_, 100);
  absl::StatusOr<MergedUpdate> high = MergeUpdate(sum, spec_, 3, 1e-3, sigma_for_floor_18);
  ASSERT_TRUE(high.ok()) << high.status();
  EXPECT_EQ(high->experts_merged, 0);
  EXPECT_EQ(high->experts_untouched, 6);

  const double sigma_for_floor_12 = 1.2 / 2 * layout.expert_weights_scale();
  absl::StatusOr<MergedUpdate> low = MergeUpdate(sum, spec_, 3, 1e-3, sigma_for_floor_12);
  ASSERT_TRUE(low.ok()) << low.status();
  EXPECT_EQ(low->experts_merged, 4);
  EXPECT_EQ(low->experts_untouched, 2);

  EXPECT_FALSE(MergeUpdate(sum, spec_, 3, 1e-3, -1.0).ok());
  EXPECT_FALSE(MergeUpdate(sum, spec_, 0, 1e-3, 0.0).ok());
  EXPECT_FALSE(MergeUpdate(std::vector<double>(sum.size() - 1), spec_, 3, 1e-3, 0.0).ok());
}

TEST(DecodedNoiseStddevTest, IsTheTotalNoiseOfThePricedRoundInUpdateUnits) {
  privacy::RingEncoding encoding;
  encoding.clip_norm = 2.0;
  encoding.scale = 1000.0;
  encoding.mechanism = privacy::NoiseMechanism::kDiscreteGaussian;
  encoding.local_noise_variance = 250.0 * 250.0;
  // Distributed: four survivors' shares of σ = 250 add up to σ = 500 in scaled units.
  EXPECT_NEAR(
      DecodedNoiseStddev(PriceRound(v1::PrivacySpec::MODE_DISTRIBUTED, encoding, 1024, 1.0, 0.7, 4),
                         encoding),
      0.5, 1e-12);
  // Central: the coordinator's one draw of z·C·γ is z·C = 1.4 in update units.
  EXPECT_NEAR(DecodedNoiseStddev(
                  PriceRound(v1::PrivacySpec::MODE_CENTRAL, encoding, 1024, 1.0, 0.7, 4), encoding),
              1.4, 1e-12);
  EXPECT_EQ(DecodedNoiseStddev(std::nullopt, encoding), 0.0);
}

// Three versions of FedAdam (Reddi et al. 2021) by hand, in double: m ← β1·m + (1−β1)·Δ,
// v ← β2·v + (1−β2)·Δ², θ ← θ + η·m/(√v + τ), for merged tensors only. The third step runs
// on a fresh optimizer that read the moments back from the repository, as after a restart.
TEST_F(ExpertMergeTest, FedAdamMatchesAHandComputationAcrossARestart) {
  RoundPolicy policy = policy_;
  policy.server_optimizer = ServerOptimizerKind::kFedAdam;
  policy.server_learning_rate = 0.05;
  policy.server_beta1 = 0.8;
  policy.server_beta2 = 0.95;
  policy.server_tau = 1e-2;
  const size_t size = spec_.layout().delta_values();

  std::vector<double> theta(model_.values().begin(), model_.values().end());
  std::vector<double> first(size, 0.0);
  std::vector<double> second(size, 0.0);
  std::vector<MergedUpdate> updates;
  std::mt19937_64 random(5);
  for (int version = 0; version < 3; ++version) {
    std::vector<Site> sites = sites_;
    for (Site& site : sites) site.delta = RandomDelta(size, random);
    absl::StatusOr<MergedUpdate> merged =
        MergeUpdate(PlainSum(spec_, sites, 100), spec_, 3, 1e-3, 0.0);
    ASSERT_TRUE(merged.ok()) << merged.status();
    updates.push_back(*merged);
  }
  auto hand_step = [&](const MergedUpdate& update) {
    for (int i = 0; i < spec_.trainable_tensors_size(); ++i) {
      if (update.untouched[static_cast<size_t>(i)]) continue;
      const v1::TrainableTensor& wire = spec_.trainable_tensors(i);
      const model::TensorSpec* tensor = model_.layout().Find(wire.name());
      for (uint64_t k = wire.offset(); k < End(i); ++k) {
        const double delta = update.delta[k];
        first[k] = policy.server_beta1 * first[k] + (1 - policy.server_beta1) * delta;
        second[k] = policy.server_beta2 * second[k] + (1 - policy.server_beta2) * delta * delta;
        theta[static_cast<size_t>(tensor->offset) + (k - wire.offset())] +=
            policy.server_learning_rate * first[k] / (std::sqrt(second[k]) + policy.server_tau);
      }
    }
  };

  testing::TempDir state;
  ModelRepository repository(state.path());
  GlobalModel global(model_);
  ServerOptimizer before_restart(policy);
  for (int version = 0; version < 2; ++version) {
    ASSERT_TRUE(before_restart.Apply(spec_, updates[version], global).ok());
    hand_step(updates[version]);
  }
  absl::StatusOr<ModelVersionRecord> record = repository.Write(
      3, [&](const std::filesystem::path& directory) { return SaveGlobalModel(global, directory); },
      {}, 2,
      std::pair{std::span<const float>(before_restart.first_moment()),
                std::span<const float>(before_restart.second_moment())});
  ASSERT_TRUE(record.ok()) << record.status();

  ModelRepository reopened(state.path());
  auto moments = reopened.ReadServerMoments(*record);
  ASSERT_TRUE(moments.ok()) << moments.status();
  ServerOptimizer after_restart(policy);
  after_restart.RestoreMoments(std::move(moments->first), std::move(moments->second));
  ASSERT_TRUE(after_restart.Apply(spec_, updates[2], global).ok());
  hand_step(updates[2]);
  const model::ModelParameters& parameters = *global.parameters();

  size_t moved = 0;
  for (size_t i = 0; i < theta.size(); ++i) {
    ASSERT_NEAR(parameters.values()[i], theta[i], 2e-6) << "value " << i;
    moved += parameters.values()[i] != model_.values()[i];
  }
  // The merged tensors moved; unused experts, attention and norms did not.
  EXPECT_GT(moved, size / 2);
  for (size_t k = 0; k < size; ++k) {
    ASSERT_NEAR(after_restart.first_moment()[k], first[k], 1e-6);
    ASSERT_NEAR(after_restart.second_moment()[k], second[k], 1e-7);
  }

  // Without the restored moments the third step is another step: the restore is what matters.
  GlobalModel forgetful(model_);
  ServerOptimizer fresh(policy);
  ASSERT_TRUE(fresh.Apply(spec_, updates[0], forgetful).ok());
  ASSERT_TRUE(fresh.Apply(spec_, updates[1], forgetful).ok());
  ServerOptimizer amnesiac(policy);
  ASSERT_TRUE(amnesiac.Apply(spec_, updates[2], forgetful).ok());
  double largest_gap = 0;
  for (size_t i = 0; i < theta.size(); ++i) {
    largest_gap = std::max(largest_gap, std::abs(forgetful.parameters()->values()[i] - theta[i]));
  }
  EXPECT_GT(largest_gap, 1e-3);
}

// The whole client-to-coordinator path without noise: every site pushes one barely used
// expert's w1 by 50 per value (Δ about 280× the clip norm), and still no merged tensor moves by
// more than η·C_Δ ≤ η·C. Before Δ was clipped ahead of the weighting, clipping the whole vector
// by one factor cancelled in the merge's quotient, and that expert moved by η·141.
TEST(ExpertMergeBoundTest, ARoundMovesEveryMergedTensorByAtMostTheClipNormTimesTheServerRate) {
  const model::ModelParameters global = model::InitializeModel(TinyMoeConfig(), 3);
  RoundPolicy policy;
  policy.privacy_mode = v1::PrivacySpec::MODE_NONE;
  policy.clip_norm = 0.5;
  policy.server_learning_rate = 0.7;
  const int64_t clients = 4;
  const v1::UpdateSpec spec = SpecFor(global, policy, clients);
  const v1::UpdateLayout& layout = spec.layout();
  EXPECT_NEAR(layout.delta_clip_norm(), 0.5 * std::sqrt(1 - 0.25 * 0.25 - 0.05 * 0.05), 1e-12);

  privacy::RingEncoding encoding = client::EncodingFromSpec(spec, 32);
  absl::StatusOr<privacy::RingEncoder> encoder =
      privacy::RingEncoder::Create(layout.plain_values(), encoding);
  ASSERT_TRUE(encoder.ok()) << encoder.status();
  std::vector<uint64_t> sum(layout.encoded_values(), 0);
  std::mt19937_64 random(17);
  std::normal_distribution<float> normal(0.0F, 0.01F);
  // Top-2 routing over 1000 tokens a layer: no expert takes more than half the slots.
  const std::vector<std::vector<std::vector<int64_t>>> routing = {
      {{997, 1000, 3}, {1000, 1000, 0}},
      {{1000, 1000, 0}, {0, 1000, 1000}},
      {{1000, 998, 2}, {1000, 0, 1000}},
      {{1000, 1000, 0}, {500, 1000, 500}},
  };
  const model::TensorSpec* pushed =
      global.layout().Find("model.layers.0.block_sparse_moe.experts.2.w1.weight");
  ASSERT_NE(pushed, nullptr);
  for (int64_t u = 0; u < clients; ++u) {
    model::ModelParameters local = global;
    for (float& value : local.values()) value += normal(random);
    for (float& value : local.tensor(*pushed)) value += 50.0F;
    absl::StatusOr<client::PlainUpdate> plain =
        client::BuildPlainUpdate(global, local, routing[static_cast<size_t>(u)], spec);
    ASSERT_TRUE(plain.ok()) << plain.status();
    EXPECT_GT(plain->delta_norm, 50 * policy.clip_norm);
    double squared = 0;
    for (float value : plain->values) squared += static_cast<double>(value) * value;
    EXPECT_LE(std::sqrt(squared), policy.clip_norm * (1 + 1e-6));
    privacy::SecureRandom rounding =
        *privacy::SecureRandom::FromSeed(std::string(32, static_cast<char>('a' + u)), "test");
    absl::StatusOr<std::vector<uint64_t>> encoded = encoder->Encode(plain->values, rounding);
    ASSERT_TRUE(encoded.ok()) << encoded.status();
    ASSERT_TRUE(privacy::RingEncoder::AddInRing(sum, *encoded, 32).ok());
  }
  absl::StatusOr<std::vector<double>> decoded = encoder->DecodeSum(sum);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  absl::StatusOr<MergedUpdate> merged =
      MergeUpdate(*decoded, spec, clients, policy.expert_weight_floor, 0.0);
  ASSERT_TRUE(merged.ok()) << merged.status();
  // Layer 0's expert 2 has Σw = 5/2000, above the floor of 0.001: merged from two slivers.
  EXPECT_EQ(merged->experts_untouched, 0);

  GlobalModel next_model(global);
  ServerOptimizer optimizer(policy);
  ASSERT_TRUE(optimizer.Apply(spec, *merged, next_model).ok());
  const model::ModelParameters& next = *next_model.parameters();
  // Rounding in the ring adds at most √d/γ to the sum; far below the bound's slack here.
  const double bound = policy.server_learning_rate * layout.delta_clip_norm();
  double largest = 0;
  for (const v1::TrainableTensor& wire : spec.trainable_tensors()) {
    const model::TensorSpec* tensor = global.layout().Find(wire.name());
    double squared = 0;
    for (int64_t k = 0; k < tensor->size; ++k) {
      const double change = static_cast<double>(next.values()[tensor->offset + k]) -
                            global.values()[tensor->offset + k];
      squared += change * change;
    }
    largest = std::max(largest, std::sqrt(squared));
    EXPECT_LE(std::sqrt(squared), bound * (1 + 1e-3)) << wire.name();
  }
  // The bound is tight: the pushed expert's weighted mean of clipped deltas reaches it.
  EXPECT_GT(largest, 0.95 * bound);
  // What the coordinator logs for a round is this largest change.
  EXPECT_NEAR(LargestTensorChange(spec, GlobalModel(global), next_model), largest, 1e-12 * largest);
}

TEST(ExpertMergeBoundTest, AClientRefusesBoundsThatDoNotFoldIntoTheClipNormAndMetricsRequests) {
  const model::ModelParameters global = model::InitializeModel(TinyMoeConfig(), 3);
  RoundPolicy policy;
  v1::UpdateSpec spec = SpecFor(global, policy, 3);
  const std::vector<std::vector<int64_t>> slots(2, std::vector<int64_t>{1, 1, 0});
  ASSERT_TRUE(client::BuildPlainUpdate(global, global, slots, spec).ok());

  v1::UpdateSpec greedy = spec;
  greedy.mutable_layout()->set_delta_clip_norm(spec.privacy().clip_norm());
  absl::StatusOr<client::PlainUpdate> refused =
      client::BuildPlainUpdate(global, global, slots, greedy);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("above the clip norm"), std::string::npos)
      << refused.status();

  v1::UpdateSpec loud_weights = spec;
  loud_weights.mutable_layout()->set_expert_weights_scale(10 *
                                                          spec.layout().expert_weights_scale());
  refused = client::BuildPlainUpdate(global, global, slots, loud_weights);
  EXPECT_NE(refused.status().message().find("expert weights can reach"), std::string::npos)
      << refused.status();

  v1::UpdateSpec old_coordinator = spec;
  old_coordinator.mutable_layout()->clear_delta_clip_norm();
  refused = client::BuildPlainUpdate(global, global, slots, old_coordinator);
  EXPECT_NE(refused.status().message().find("lacks its norm bounds"), std::string::npos)
      << refused.status();

  // The local loss stays on the site, whatever a round asks.
  v1::UpdateSpec curious = spec;
  curious.set_collect_metrics(true);
  refused = client::BuildPlainUpdate(global, global, slots, curious);
  EXPECT_NE(refused.status().message().find("fedmoe sends none"), std::string::npos)
      << refused.status();
}

}  // namespace
}  // namespace fedmoe::coordinator
