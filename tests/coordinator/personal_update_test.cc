// A site with private experts sends what a site without them would: the update and its ring
// encoding (the SecAgg input) are a function of the global part and the global experts' slots
// alone, and the coordinator's merge does not see a site's number of private experts.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "client/update.h"
#include "coordinator/round/expert_merge.h"
#include "coordinator/round/update_spec.h"
#include "model/init.h"
#include "model/personal.h"
#include "privacy/ring_encoder.h"
#include "privacy/secure_random.h"
#include "tests/testing_tiny_model.h"

namespace fedmoe::coordinator {
namespace {

using testing::TinyMoeConfig;

constexpr float kPattern = 0.1640625f;  // 0x3E280000: easy to spot as bytes and as text

v1::UpdateSpec Spec(const model::ModelParameters& global, int64_t clients) {
  RoundPolicy policy;
  policy.privacy_mode = v1::PrivacySpec::MODE_NONE;
  absl::StatusOr<PlannedUpdate> planned = BuildUpdateSpec(
      GlobalModel(global), policy, v1::ModelManifest(), clients, std::string(32, 's'));
  EXPECT_TRUE(planned.ok()) << planned.status();
  return planned->spec;
}

// The global model after a site's local training: every value moved a little.
model::ModelParameters Trained(const model::ModelParameters& global, uint64_t seed) {
  model::ModelParameters local = global;
  std::mt19937_64 random(seed);
  std::normal_distribution<float> normal(0.0F, 0.01F);
  for (float& value : local.values()) value += normal(random);
  return local;
}

// `trained_global` with `private_experts` private experts whose every value, router rows
// included, is `fill`.
model::ModelParameters WithPrivate(const model::ModelParameters& trained_global,
                                   int64_t private_experts, float fill) {
  model::ModelParameters personal =
      *model::ComposePersonal(trained_global, private_experts, nullptr, 1);
  const int64_t experts = trained_global.config().num_local_experts;
  const int64_t hidden = trained_global.config().hidden_size;
  for (const model::TensorSpec& tensor : personal.layout().tensors()) {
    if (tensor.role == model::TensorRole::kRoutedExpert && tensor.expert >= experts) {
      for (float& value : personal.tensor(tensor)) value = fill;
    }
    if (tensor.role == model::TensorRole::kRouter) {
      std::span<float> rows = personal.tensor(tensor);
      for (int64_t k = experts * hidden; k < static_cast<int64_t>(rows.size()); ++k) rows[k] = fill;
    }
  }
  return personal;
}

// Slots per [layer][expert]: the global experts' as given, then `private_slots` for each
// private expert.
std::vector<std::vector<int64_t>> Slots(const std::vector<std::vector<int64_t>>& global_slots,
                                        int64_t private_experts, int64_t private_slots) {
  std::vector<std::vector<int64_t>> slots = global_slots;
  for (std::vector<int64_t>& layer : slots)
    layer.resize(layer.size() + private_experts, private_slots);
  return slots;
}

std::vector<uint64_t> Encode(const v1::UpdateSpec& spec, const std::vector<float>& values) {
  absl::StatusOr<privacy::RingEncoder> encoder =
      privacy::RingEncoder::Create(values.size(), client::EncodingFromSpec(spec, 32));
  EXPECT_TRUE(encoder.ok()) << encoder.status();
  privacy::SecureRandom rounding = *privacy::SecureRandom::FromSeed(std::string(32, 'r'), "test");
  absl::StatusOr<std::vector<uint64_t>> encoded = encoder->Encode(values, rounding);
  EXPECT_TRUE(encoded.ok()) << encoded.status();
  return *encoded;
}

bool ContainsPattern(const void* bytes, size_t size) {
  uint32_t pattern = 0;
  std::memcpy(&pattern, &kPattern, sizeof(pattern));
  const auto* data = static_cast<const unsigned char*>(bytes);
  for (size_t k = 0; k + sizeof(pattern) <= size; ++k) {
    if (std::memcmp(data + k, &pattern, sizeof(pattern)) == 0) return true;
  }
  return false;
}

TEST(PersonalUpdateTest, PrivateExpertsNeverReachTheUpdateOrTheSecAggInput) {
  const model::ModelParameters global = model::InitializeModel(TinyMoeConfig(), 3);
  const v1::UpdateSpec spec = Spec(global, 3);
  const model::ModelParameters trained = Trained(global, 5);
  const std::vector<std::vector<int64_t>> global_slots = {{700, 200, 100}, {300, 300, 400}};

  absl::StatusOr<client::PlainUpdate> reference =
      client::BuildUpdateFromTrained(global, trained, global_slots, spec);
  ASSERT_TRUE(reference.ok()) << reference.status();
  ASSERT_EQ(reference->values.size(), spec.layout().plain_values());
  const std::vector<uint64_t> reference_encoded = Encode(spec, reference->values);

  // Two different private parts, routed to very differently: the bytes sent are the same.
  for (const auto& [fill, private_slots] :
       std::vector<std::pair<float, int64_t>>{{kPattern, 5000}, {-7.5F, 0}}) {
    const model::ModelParameters personal = WithPrivate(trained, 2, fill);
    absl::StatusOr<client::PlainUpdate> update = client::BuildUpdateFromTrained(
        global, personal, Slots(global_slots, 2, private_slots), spec);
    ASSERT_TRUE(update.ok()) << update.status();
    EXPECT_EQ(update->values, reference->values) << "fill " << fill;
    EXPECT_EQ(update->delta_norm, reference->delta_norm);
    const std::vector<uint64_t> encoded = Encode(spec, update->values);
    EXPECT_EQ(encoded, reference_encoded);
    EXPECT_FALSE(ContainsPattern(update->values.data(), update->values.size() * sizeof(float)));
    EXPECT_FALSE(ContainsPattern(encoded.data(), encoded.size() * sizeof(uint64_t)));
  }
  // A personal model of another global shape is refused, not read past its global part.
  model::MoeConfig other = TinyMoeConfig();
  other.intermediate_size = 3;
  const model::ModelParameters foreign = WithPrivate(model::InitializeModel(other, 3), 2, kPattern);
  EXPECT_FALSE(
      client::BuildUpdateFromTrained(global, foreign, Slots(global_slots, 2, 0), spec).ok());
}

// Three sites with 0, 2 and 5 private experts and the same global parts merge to exactly what
// three sites without any would.
TEST(PersonalUpdateTest, TheMergeDoesNotSeeASitesPrivateExperts) {
  const model::ModelParameters global = model::InitializeModel(TinyMoeConfig(), 3);
  const v1::UpdateSpec spec = Spec(global, 3);
  const std::vector<std::vector<std::vector<int64_t>>> slots = {{{700, 200, 100}, {300, 300, 400}},
                                                                {{100, 800, 100}, {500, 0, 500}},
                                                                {{333, 333, 334}, {900, 50, 50}}};
  auto merged = [&](const std::vector<int64_t>& private_experts) {
    std::vector<double> sum(spec.layout().plain_values(), 0.0);
    for (size_t s = 0; s < 3; ++s) {
      const model::ModelParameters trained = Trained(global, 10 + s);
      const model::ModelParameters local =
          private_experts[s] == 0 ? trained : WithPrivate(trained, private_experts[s], kPattern);
      absl::StatusOr<client::PlainUpdate> update = client::BuildUpdateFromTrained(
          global, local, Slots(slots[s], private_experts[s], 1000), spec);
      EXPECT_TRUE(update.ok()) << update.status();
      for (size_t k = 0; k < sum.size(); ++k) sum[k] += update->values[k];
    }
    absl::StatusOr<MergedUpdate> result = MergeUpdate(sum, spec, 3, 1e-3, 0.0);
    EXPECT_TRUE(result.ok()) << result.status();
    return result->delta;
  };
  const std::vector<float> plain = merged({0, 0, 0});
  EXPECT_EQ(merged({0, 2, 5}), plain);
}

}  // namespace
}  // namespace fedmoe::coordinator
