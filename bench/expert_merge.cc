// What clipping and noise do to a federated model, old update design against new, side by side.
//
// Sites train the quickstart's model on the bundled corpora (one domain each) for a few rounds.
// Each round goes through the real client update (BuildPlainUpdate), the real ring encoder with
// each site's share of discrete Gaussian noise, the ring sum, the decoder and the real merge and
// server optimizer; only SecAgg+'s masks, which cancel exactly, are left out. The old design is
// emulated as it was: routed blocks weighted by w_e without clipping Δ first, w scaled by
// share·C/√layers, the whole vector clipped to C by the encoder, and the merge's floor fixed at
// w_min. Prints one JSON object per (design, z): held-out loss (mean over the domains) after
// each round, and the largest change of any merged tensor in each round.
//
//   build/bin/expert_merge [--rounds 3] [--steps 40] [--base-steps 300] [--clip-norm 1]
//                          [--noise 0,0.3,1]
#include "coordinator/round/expert_merge.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "client/update.h"
#include "config/command_line.h"
#include "coordinator/round/privacy_plan.h"
#include "coordinator/round/update_spec.h"
#include "model/config.h"
#include "model/init.h"
#include "model/trainer.h"
#include "nlohmann/json.hpp"
#include "privacy/ring_encoder.h"
#include "privacy/secure_random.h"

namespace fedmoe {
namespace {

const std::filesystem::path kSource = FEDMOE_SOURCE_DIR;
const std::vector<std::string> kDomains = {"finance", "it_support", "contracts"};

struct Settings {
  int64_t rounds = 3;
  int64_t steps = 40;
  int64_t base_steps = 300;
  double clip_norm = 1.0;
  std::vector<double> noise = {0.0, 0.3, 1.0};
};

model::TrainOptions LocalOptions(int64_t steps, double learning_rate, uint64_t seed) {
  model::TrainOptions options;
  options.steps = steps;
  options.batch_size = 8;
  options.seq_len = 64;
  options.learning_rate = learning_rate;
  options.min_learning_rate_ratio = 0.1;
  options.eval_every = 0;
  options.eval_batches = 1;
  options.validation_fraction = 0.1;
  options.seed = seed;
  return options;
}

absl::StatusOr<double> HeldOutLoss(const model::ModelParameters& parameters,
                                   const model::Tokenizer& tokenizer) {
  double sum = 0;
  for (const std::string& domain : kDomains) {
    model::DataOptions data;
    data.seq_len = 64;
    data.batch_size = 8;
    data.validation_fraction = 0.1;
    data.eos_token = static_cast<int32_t>(parameters.config().eos_token_id);
    absl::StatusOr<double> loss =
        model::ValidationLoss(parameters, tokenizer, kSource / "deploy/corpora" / domain, data, 0);
    if (!loss.ok()) return loss.status();
    sum += *loss;
  }
  return sum / static_cast<double>(kDomains.size());
}

// The old client vector: Δ with routed blocks × w_e, unclipped; w·share·C/√layers; histogram.
std::vector<float> OldPlainUpdate(const model::ModelParameters& global,
                                  const model::ModelParameters& local,
                                  const std::vector<std::vector<int64_t>>& slots,
                                  const v1::UpdateSpec& spec) {
  const v1::UpdateLayout& layout = spec.layout();
  const size_t experts = layout.num_experts();
  std::vector<float> update(layout.plain_values(), 0.0F);
  for (const v1::TrainableTensor& wire : spec.trainable_tensors()) {
    const model::TensorSpec* tensor = global.layout().Find(wire.name());
    double factor = 1.0;
    if (wire.role() == v1::TrainableTensor::ROLE_ROUTED_EXPERT) {
      double total = 0;
      for (int64_t count : slots[wire.layer()]) total += static_cast<double>(count);
      factor = static_cast<double>(slots[wire.layer()][wire.expert()]) / total;
    }
    for (int64_t k = 0; k < tensor->size; ++k) {
      update[wire.offset() + static_cast<uint64_t>(k)] =
          static_cast<float>(factor * (static_cast<double>(local.values()[tensor->offset + k]) -
                                       global.values()[tensor->offset + k]));
    }
  }
  for (size_t l = 0; l < layout.num_moe_layers(); ++l) {
    double total = 0;
    for (int64_t count : slots[l]) total += static_cast<double>(count);
    for (size_t e = 0; e < experts; ++e) {
      update[layout.expert_weights_offset() + l * experts + e] = static_cast<float>(
          static_cast<double>(slots[l][e]) / total * layout.expert_weights_scale());
      update[layout.histogram_offset() + l * experts + e] =
          static_cast<float>(static_cast<double>(slots[l][e]) / layout.histogram_scale());
    }
  }
  return update;
}

absl::StatusOr<nlohmann::json> Federate(const Settings& settings, bool old_design, double z,
                                        const model::ModelParameters& base,
                                        const model::Tokenizer& tokenizer) {
  coordinator::RoundPolicy policy;
  policy.trainable = model::TrainableSet{};
  policy.trainable.shared_experts = false;
  policy.clip_norm = settings.clip_norm;
  policy.noise_multiplier = z;
  policy.privacy_mode = z > 0 ? v1::PrivacySpec::MODE_DISTRIBUTED : v1::PrivacySpec::MODE_NONE;
  policy.training.set_steps(static_cast<uint32_t>(settings.steps));
  policy.training.set_batch_size(8);
  policy.training.set_seq_len(64);
  policy.training.set_gradient_accumulation(1);
  const auto sites = static_cast<int64_t>(kDomains.size()) + 1;
  absl::StatusOr<coordinator::PlannedUpdate> planned = coordinator::BuildUpdateSpec(
      coordinator::GlobalModel(base), policy, v1::ModelManifest(), sites, std::string(32, 'r'));
  if (!planned.ok()) return planned.status();
  v1::UpdateSpec spec = planned->spec;
  if (old_design) {
    const double layers = spec.layout().num_moe_layers();
    spec.mutable_layout()->set_expert_weights_scale(policy.expert_weights_share * policy.clip_norm /
                                                    std::sqrt(layers));
  }
  absl::StatusOr<privacy::RingEncoder> encoder =
      privacy::RingEncoder::Create(spec.layout().plain_values(), planned->encoding);
  if (!encoder.ok()) return encoder.status();
  const double sum_noise_stddev = coordinator::DecodedNoiseStddev(
      coordinator::PriceRound(policy.privacy_mode, planned->encoding,
                              static_cast<int64_t>(spec.layout().encoded_values()), 1.0, z, sites),
      planned->encoding);

  model::ModelParameters global = base;
  coordinator::ServerOptimizer optimizer(policy);
  nlohmann::json losses = nlohmann::json::array();
  nlohmann::json largest_changes = nlohmann::json::array();
  double delta_norms = 0;
  for (int64_t round = 0; round < settings.rounds; ++round) {
    std::vector<uint64_t> sum(spec.layout().encoded_values(), 0);
    for (int64_t site = 0; site < sites; ++site) {
      model::ModelParameters local = global;
      model::TrainOptions options = LocalOptions(settings.steps, 0.004, 1 + 97 * round + site);
      options.trainable = client::TrainableFromSpec(global.layout(), spec);
      const std::string& domain = kDomains[static_cast<size_t>(site) % kDomains.size()];
      absl::StatusOr<model::TrainResult> trained =
          model::Train(local, tokenizer, kSource / "deploy/corpora" / domain, options);
      if (!trained.ok()) return trained.status();
      std::vector<float> plain;
      if (old_design) {
        plain = OldPlainUpdate(global, local, trained->expert_slots, spec);
      } else {
        absl::StatusOr<client::PlainUpdate> update =
            client::BuildPlainUpdate(global, local, trained->expert_slots, spec);
        if (!update.ok()) return update.status();
        delta_norms += update->delta_norm;
        plain = std::move(update->values);
      }
      absl::StatusOr<privacy::SecureRandom> random = privacy::SecureRandom::FromSystem();
      if (!random.ok()) return random.status();
      absl::StatusOr<std::vector<uint64_t>> encoded = encoder->Encode(plain, *random);
      if (!encoded.ok()) return encoded.status();
      if (absl::Status status =
              privacy::RingEncoder::AddInRing(sum, *encoded, planned->encoding.ring_bits);
          !status.ok()) {
        return status;
      }
    }
    absl::StatusOr<std::vector<double>> decoded = encoder->DecodeSum(sum);
    if (!decoded.ok()) return decoded.status();
    absl::StatusOr<coordinator::MergedUpdate> merged = coordinator::MergeUpdate(
        *decoded, spec, sites, policy.expert_weight_floor, old_design ? 0.0 : sum_noise_stddev);
    if (!merged.ok()) return merged.status();
    const coordinator::GlobalModel before(global);
    coordinator::GlobalModel next(global);
    if (absl::Status status = optimizer.Apply(spec, *merged, next); !status.ok()) return status;
    const double largest = coordinator::LargestTensorChange(spec, before, next);
    global = *next.parameters();
    absl::StatusOr<double> loss = HeldOutLoss(global, tokenizer);
    if (!loss.ok()) return loss.status();
    losses.push_back(*loss);
    largest_changes.push_back(largest);
  }
  nlohmann::json result = {{"bench", "expert_merge"},
                           {"design", old_design ? "old" : "new"},
                           {"noise_multiplier", z},
                           {"clip_norm", settings.clip_norm},
                           {"sites", sites},
                           {"rounds", settings.rounds},
                           {"local_steps", settings.steps},
                           {"held_out_loss_after_round", losses},
                           {"largest_merged_tensor_change", largest_changes}};
  if (!old_design) {
    result["mean_delta_norm_before_clipping"] =
        delta_norms / static_cast<double>(sites * settings.rounds);
    result["delta_clip_norm"] = spec.layout().delta_clip_norm();
  }
  return result;
}

int Run(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  absl::StatusOr<config::CommandLine> flags = config::CommandLine::Parse(
      args, {"rounds", "steps", "base-steps", "clip-norm", "noise"}, {"help", "h"});
  if (!flags.ok()) {
    std::fprintf(stderr, "expert_merge: %s\n", std::string(flags.status().message()).c_str());
    return 2;
  }
  if (flags->Has("help") || flags->Has("h")) {
    std::printf(
        "usage: expert_merge [--rounds N] [--steps N] [--base-steps N] [--clip-norm C] "
        "[--noise Z,Z,...]\n");
    return 0;
  }
  Settings settings;
  absl::StatusOr<int64_t> rounds = flags->IntOr("rounds", settings.rounds, 1, 100);
  absl::StatusOr<int64_t> steps = flags->IntOr("steps", settings.steps, 1, 100000);
  absl::StatusOr<int64_t> base_steps = flags->IntOr("base-steps", settings.base_steps, 0, 100000);
  for (const absl::StatusOr<int64_t>* value : {&rounds, &steps, &base_steps}) {
    if (!value->ok()) {
      std::fprintf(stderr, "expert_merge: %s\n", std::string(value->status().message()).c_str());
      return 2;
    }
  }
  settings.rounds = *rounds;
  settings.steps = *steps;
  settings.base_steps = *base_steps;
  if (flags->Has("clip-norm")) {
    absl::StatusOr<double> clip = flags->RequireDouble("clip-norm");
    if (!clip.ok() || !(*clip > 0)) {
      std::fprintf(stderr, "expert_merge: --clip-norm takes a positive number\n");
      return 2;
    }
    settings.clip_norm = *clip;
  }
  if (flags->Has("noise")) {
    settings.noise.clear();
    for (absl::string_view part : absl::StrSplit(flags->GetOr("noise", ""), ',')) {
      double z = 0;
      if (!absl::SimpleAtod(part, &z) || z < 0) {
        std::fprintf(stderr, "expert_merge: --noise takes numbers >= 0, comma-separated\n");
        return 2;
      }
      settings.noise.push_back(z);
    }
  }
  absl::StatusOr<model::MoeConfig> config =
      model::LoadMoeConfig(kSource / "deploy/quickstart-model.json");
  if (!config.ok()) {
    std::fprintf(stderr, "expert_merge: %s\n", std::string(config.status().message()).c_str());
    return 1;
  }
  const std::unique_ptr<model::Tokenizer> tokenizer = model::MakeByteTokenizer(config->vocab_size);
  // A base that already knows some text, trained on every domain at once with every tensor:
  // the federation then fine-tunes experts and routers from it, as the quickstart does.
  model::ModelParameters base = model::InitializeModel(*config, 1);
  model::TrainOptions pretraining = LocalOptions(settings.base_steps, 0.01, 7);
  pretraining.trainable = *model::TrainableSet::Parse("all");
  for (const std::string& domain : kDomains) {
    absl::StatusOr<model::TrainResult> trained =
        model::Train(base, *tokenizer, kSource / "deploy/corpora" / domain, pretraining);
    if (!trained.ok()) {
      std::fprintf(stderr, "expert_merge: %s\n", std::string(trained.status().message()).c_str());
      return 1;
    }
  }
  absl::StatusOr<double> base_loss = HeldOutLoss(base, *tokenizer);
  if (!base_loss.ok()) return 1;
  std::printf("%s\n", nlohmann::json({{"bench", "expert_merge"},
                                      {"design", "base"},
                                      {"held_out_loss", *base_loss},
                                      {"uniform_loss", std::log(config->vocab_size)}})
                          .dump()
                          .c_str());
  for (double z : settings.noise) {
    for (bool old_design : {true, false}) {
      absl::StatusOr<nlohmann::json> result = Federate(settings, old_design, z, base, *tokenizer);
      if (!result.ok()) {
        std::fprintf(stderr, "expert_merge: %s\n", std::string(result.status().message()).c_str());
        return 1;
      }
      std::printf("%s\n", result->dump().c_str());
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace
}  // namespace fedmoe

int main(int argc, char** argv) { return fedmoe::Run(argc, argv); }
