#include "client/update.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <span>
#include <string_view>

#include "absl/functional/function_ref.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "model/adapted_model.h"
#include "model/personal.h"

namespace fedmoe::client {

namespace {

// The site's own check that the spec's three bounds fold into the clip norm, so that the
// vector it sends is within C whatever the coordinator chose (DESIGN §5: the site does not
// trust the coordinator with its privacy).
absl::Status CheckNormBudget(const v1::UpdateSpec& spec, int64_t experts_per_token) {
  const v1::UpdateLayout& layout = spec.layout();
  const double clip_norm = spec.privacy().clip_norm();
  if (!(layout.delta_clip_norm() > 0) || !(layout.expert_weights_norm_bound() > 0) ||
      !(layout.histogram_norm_bound() > 0)) {
    return absl::InvalidArgumentError(
        "the update layout lacks its norm bounds (delta_clip_norm, expert_weights_norm_bound, "
        "histogram_norm_bound): the coordinator predates bounded expert weights");
  }
  const double budget = layout.delta_clip_norm() * layout.delta_clip_norm() +
                        layout.expert_weights_norm_bound() * layout.expert_weights_norm_bound() +
                        layout.histogram_norm_bound() * layout.histogram_norm_bound();
  if (!(budget <= clip_norm * clip_norm * (1 + 1e-9))) {
    return absl::InvalidArgumentError(absl::StrCat("the update layout's norm bounds add up to ",
                                                   std::sqrt(budget), ", above the clip norm ",
                                                   clip_norm));
  }
  const double largest_weights_norm =
      layout.expert_weights_scale() * std::sqrt(static_cast<double>(layout.num_moe_layers()) /
                                                static_cast<double>(experts_per_token));
  if (!(largest_weights_norm <= layout.expert_weights_norm_bound() * (1 + 1e-9))) {
    return absl::InvalidArgumentError(
        absl::StrCat("the expert weights can reach L2 norm ", largest_weights_norm, " at scale ",
                     layout.expert_weights_scale(), ", above the layout's bound ",
                     layout.expert_weights_norm_bound()));
  }
  return absl::OkStatus();
}

// A tensor's values and shape.
struct TensorView {
  std::span<const float> values;
  std::span<const int64_t> shape;
};
using TensorLookup = absl::FunctionRef<std::optional<TensorView>(std::string_view name)>;

// The named tensor of a model's parameters or of adapters.
template <typename Weights>
std::optional<TensorView> ViewOf(const Weights& weights, std::string_view name) {
  const auto* tensor = weights.layout().Find(name);
  if (tensor == nullptr) return std::nullopt;
  return TensorView{weights.tensor(*tensor), tensor->shape};
}

absl::StatusOr<PlainUpdate> BuildPlainUpdateFrom(
    TensorLookup global, TensorLookup local, int64_t experts_per_token,
    const std::vector<std::vector<int64_t>>& expert_slots, const v1::UpdateSpec& spec) {
  const v1::UpdateLayout& layout = spec.layout();
  const size_t layers = layout.num_moe_layers();
  const size_t experts = layout.num_experts();
  if (expert_slots.size() != layers) {
    return absl::InvalidArgumentError(absl::StrCat("routing counts cover ", expert_slots.size(),
                                                   " layers; the spec has ", layers));
  }
  // The local loss and token counts stay on the site (architecture.md, "What leaves a site").
  if (spec.collect_metrics() || layout.metrics_values() != 0) {
    return absl::InvalidArgumentError(
        "the round asks for this site's training metrics (collect_metrics); fedmoe sends none, "
        "so the coordinator is not a fedmoe one or was changed");
  }
  if (layout.plain_values() != layout.delta_values() + 2 * layers * experts ||
      layout.expert_weights_offset() != layout.delta_values() ||
      layout.histogram_offset() != layout.delta_values() + layers * experts ||
      !(layout.expert_weights_scale() > 0) || !(layout.histogram_scale() > 0)) {
    return absl::InvalidArgumentError("the update layout is inconsistent");
  }
  if (absl::Status status = CheckNormBudget(spec, experts_per_token); !status.ok()) return status;
  std::vector<std::vector<double>> weights(layers, std::vector<double>(experts, 0.0));
  for (size_t l = 0; l < layers; ++l) {
    if (expert_slots[l].size() != experts) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", l, " routing counts cover ",
                                                     expert_slots[l].size(), " experts, not ",
                                                     experts));
    }
    int64_t total = 0;
    for (int64_t slots : expert_slots[l]) total += slots;
    for (size_t e = 0; e < experts; ++e) {
      weights[l][e] =
          total > 0 ? static_cast<double>(expert_slots[l][e]) / static_cast<double>(total) : 0.0;
    }
  }
  PlainUpdate plain;
  std::vector<float>& update = plain.values;
  update.assign(layout.plain_values(), 0.0f);
  // Δ first, unweighted, for its norm; each routed expert's factor is applied with the clip.
  std::vector<double> factors;
  factors.reserve(static_cast<size_t>(spec.trainable_tensors_size()));
  uint64_t expected_offset = 0;
  for (const v1::TrainableTensor& wire : spec.trainable_tensors()) {
    const std::optional<TensorView> before = global(wire.name());
    const std::optional<TensorView> after = local(wire.name());
    if (!before.has_value() || !after.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat("the model has no tensor ", wire.name()));
    }
    bool same_shape = static_cast<size_t>(wire.shape_size()) == before->shape.size() &&
                      after->values.size() == before->values.size();
    for (size_t d = 0; same_shape && d < before->shape.size(); ++d) {
      same_shape = wire.shape(static_cast<int>(d)) == static_cast<uint64_t>(before->shape[d]);
    }
    if (!same_shape || wire.offset() != expected_offset ||
        wire.offset() + before->values.size() > layout.delta_values()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", wire.name(), " does not match the spec's shape or offset"));
    }
    double factor = 1.0;
    if (wire.role() == v1::TrainableTensor::ROLE_ROUTED_EXPERT) {
      if (wire.layer() >= layers || wire.expert() >= experts) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor ", wire.name(), " names an expert outside the layout"));
      }
      factor = weights[wire.layer()][wire.expert()];
    }
    factors.push_back(factor);
    float* out = update.data() + wire.offset();
    for (size_t k = 0; k < before->values.size(); ++k) {
      out[k] = after->values[k] - before->values[k];
    }
    expected_offset += before->values.size();
  }
  if (expected_offset != layout.delta_values()) {
    return absl::InvalidArgumentError("the spec's tensors do not fill delta_values");
  }
  // Clipping before the weighting bounds every merged tensor's change by C_Δ, and leaves the
  // expert weights, the merge's divisors, as they are (DESIGN §4.3).
  plain.delta_norm = privacy::ClipToL2Norm(std::span<float>(update.data(), layout.delta_values()),
                                           layout.delta_clip_norm());
  for (int i = 0; i < spec.trainable_tensors_size(); ++i) {
    const double factor = factors[static_cast<size_t>(i)];
    if (factor == 1.0) continue;
    const uint64_t end = i + 1 < spec.trainable_tensors_size()
                             ? spec.trainable_tensors(i + 1).offset()
                             : layout.delta_values();
    for (uint64_t k = spec.trainable_tensors(i).offset(); k < end; ++k) {
      update[k] = static_cast<float>(factor * update[k]);
    }
  }
  for (size_t l = 0; l < layers; ++l) {
    for (size_t e = 0; e < experts; ++e) {
      update[layout.expert_weights_offset() + l * experts + e] =
          static_cast<float>(weights[l][e] * layout.expert_weights_scale());
      update[layout.histogram_offset() + l * experts + e] =
          static_cast<float>(static_cast<double>(expert_slots[l][e]) / layout.histogram_scale());
    }
  }
  const std::span<float> histogram(update.data() + layout.histogram_offset(),
                                   layout.histogram_values());
  // More slots than the spec's training makes (a longer run than planned) cannot widen the
  // histogram's share of the norm.
  privacy::ClipToL2Norm(histogram, layout.histogram_norm_bound());
  return plain;
}

}  // namespace

absl::StatusOr<PlainUpdate> BuildPlainUpdate(const model::ModelParameters& global,
                                             const model::ModelParameters& local,
                                             const std::vector<std::vector<int64_t>>& expert_slots,
                                             const v1::UpdateSpec& spec) {
  return BuildPlainUpdateFrom([&](std::string_view name) { return ViewOf(global, name); },
                              [&](std::string_view name) { return ViewOf(local, name); },
                              global.config().num_experts_per_tok, expert_slots, spec);
}

absl::StatusOr<PlainUpdate> BuildPlainUpdate(const model::LoraAdapters& global,
                                             const model::LoraAdapters& local,
                                             const std::vector<std::vector<int64_t>>& expert_slots,
                                             const v1::UpdateSpec& spec) {
  return BuildPlainUpdateFrom([&](std::string_view name) { return ViewOf(global, name); },
                              [&](std::string_view name) { return ViewOf(local, name); },
                              global.model_config().num_experts_per_tok, expert_slots, spec);
}

absl::StatusOr<PlainUpdate> BuildUpdateFromTrained(
    const model::ModelParameters& global, const model::ModelParameters& local,
    const std::vector<std::vector<int64_t>>& expert_slots, const v1::UpdateSpec& spec) {
  if (local.config().num_local_experts == global.config().num_local_experts) {
    return BuildPlainUpdate(global, local, expert_slots, spec);
  }
  absl::StatusOr<model::ModelParameters> global_part = model::GlobalPart(local, global.config());
  if (!global_part.ok()) return global_part.status();
  return BuildPlainUpdate(global, *global_part,
                          model::GlobalExpertSlots(expert_slots, global.config().num_local_experts),
                          spec);
}

absl::StatusOr<model::LoraAdapters> AdaptersFromSpec(const model::FrozenBase& base,
                                                     const v1::AdapterSpec& adapters,
                                                     const std::filesystem::path& directory) {
  absl::StatusOr<model::LoraAdapters> loaded = model::LoadAdaptersFor(base, directory);
  if (!loaded.ok()) return loaded.status();
  const model::LoraConfig& held = loaded->config();
  const std::vector<std::string> targets = model::LoraTargetNames(held.targets);
  if (held.train_a || held.rank != static_cast<int64_t>(adapters.rank()) ||
      held.alpha != adapters.alpha() || held.seed != adapters.a_seed() ||
      !std::equal(targets.begin(), targets.end(), adapters.target_modules().begin(),
                  adapters.target_modules().end())) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the adapters at ", directory.string(), " (rank ", held.rank, ", alpha ", held.alpha,
        ", targets ", absl::StrJoin(targets, ","), ", seed ", held.seed,
        held.train_a ? ", A trained" : "", ") are not the round's (rank ", adapters.rank(),
        ", alpha ", adapters.alpha(), ", targets ", absl::StrJoin(adapters.target_modules(), ","),
        ", seed ", adapters.a_seed(), ")"));
  }
  model::LoraAdapters drawn(base.config(), held);
  model::InitializeLora(drawn);
  for (const model::AdapterTensor& tensor : drawn.layout().tensors()) {
    if (tensor.role != model::AdapterRole::kLoraA) continue;
    const std::span<const float> expected = drawn.tensor(tensor);
    const std::span<const float> published = loaded->tensor(tensor);
    if (!std::equal(expected.begin(), expected.end(), published.begin(), published.end())) {
      return absl::FailedPreconditionError(
          absl::StrCat("the published ", tensor.name, " at ", directory.string(),
                       " is not the draw of the round's seed ", adapters.a_seed(),
                       ": FFA-LoRA's average is exact only when every site holds that A"));
    }
  }
  return loaded;
}

model::TrainableSet TrainableFromSpec(const model::ModelLayout& layout,
                                      const v1::UpdateSpec& spec) {
  model::TrainableSet set;
  set.routed_experts = set.shared_experts = set.router = false;
  for (const v1::TrainableTensor& wire : spec.trainable_tensors()) {
    const model::TensorSpec* tensor = layout.Find(wire.name());
    if (tensor == nullptr) continue;
    switch (tensor->role) {
      case model::TensorRole::kRoutedExpert:
        set.routed_experts = true;
        break;
      case model::TensorRole::kSharedExpert:
        set.shared_experts = true;
        break;
      case model::TensorRole::kRouter:
        set.router = true;
        break;
      case model::TensorRole::kAttention:
        set.attention = true;
        break;
      case model::TensorRole::kNorm:
        set.norms = true;
        break;
      case model::TensorRole::kEmbedding:
        set.embeddings = true;
        break;
      case model::TensorRole::kOutput:
        set.output = true;
        break;
    }
  }
  return set;
}

model::TrainOptions TrainOptionsFromSpec(const model::ModelLayout& layout,
                                         const v1::UpdateSpec& spec, uint64_t client_seed) {
  const v1::LocalTrainingConfig& training = spec.training();
  model::TrainOptions options;
  options.steps = training.steps();
  options.batch_size = training.batch_size();
  options.seq_len = training.seq_len();
  options.gradient_accumulation = std::max<int64_t>(1, training.gradient_accumulation());
  options.learning_rate = training.learning_rate();
  options.warmup_steps = training.warmup_steps();
  options.schedule = training.schedule() == v1::LocalTrainingConfig::LEARNING_RATE_SCHEDULE_CONSTANT
                         ? model::Schedule::kConstant
                         : model::Schedule::kCosine;
  options.min_learning_rate_ratio =
      training.learning_rate() > 0
          ? std::clamp(training.min_learning_rate() / training.learning_rate(), 0.0, 1.0)
          : 0.0;
  options.adamw.weight_decay = training.weight_decay();
  options.adamw.beta1 = training.adam_beta1();
  options.adamw.beta2 = training.adam_beta2();
  options.adamw.epsilon = training.adam_epsilon();
  options.max_gradient_norm = training.gradient_clip_norm();
  options.balance_coefficient = training.load_balance_coefficient();
  options.trainable = TrainableFromSpec(layout, spec);
  options.record_privacy.enabled = training.record_noise_multiplier() > 0;
  options.record_privacy.noise_multiplier = training.record_noise_multiplier();
  options.record_privacy.clip_norm = training.record_clip_norm();
  options.seed = training.seed() ^ client_seed;
  // Validation is the operator's business (`model eval`); a round only trains.
  options.eval_every = 0;
  options.eval_batches = 1;
  return options;
}

privacy::RingEncoding EncodingFromSpec(const v1::UpdateSpec& spec, int ring_bits) {
  const v1::PrivacySpec& privacy = spec.privacy();
  privacy::RingEncoding encoding;
  encoding.clip_norm = privacy.clip_norm();
  encoding.scale = privacy.scale();
  encoding.rounding_beta = privacy.rounding_beta();
  encoding.ring_bits = ring_bits;
  encoding.rotation_seed = privacy.rotation_seed();
  encoding.rotation_block = privacy.rotation_block();
  if (privacy.mode() == v1::PrivacySpec::MODE_DISTRIBUTED) {
    encoding.mechanism = privacy.mechanism() == v1::PrivacySpec::MECHANISM_SKELLAM
                             ? privacy::NoiseMechanism::kSkellam
                             : privacy::NoiseMechanism::kDiscreteGaussian;
    encoding.local_noise_variance = privacy.local_noise_stddev() * privacy.local_noise_stddev();
  }
  return encoding;
}

}  // namespace fedmoe::client
