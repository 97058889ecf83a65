// How the coordinator runs rounds (DESIGN §3–§5): the `model`, `rounds`, `privacy` and
// `secagg` sections of coordinator.yaml. Every option is documented in
// deploy/examples/coordinator.yaml.
#ifndef FEDMOE_COORDINATOR_ROUND_ROUND_POLICY_H_
#define FEDMOE_COORDINATOR_ROUND_ROUND_POLICY_H_

#include <cstdint>
#include <filesystem>
#include <string>

#include "absl/time/time.h"
#include "config/yaml_config.h"
#include "fedmoe/v1/federation.pb.h"
#include "model/lora.h"
#include "model/trainable_set.h"
#include "proto/privacy_names.h"

namespace fedmoe::coordinator {

enum class ServerOptimizerKind { kFedAvg, kFedAdam };

struct StageTimeouts {
  // Model sync, local training and AdvertiseKeys.
  absl::Duration train = absl::Minutes(10);
  absl::Duration share_keys = absl::Seconds(60);
  absl::Duration masked_input = absl::Minutes(5);
  absl::Duration unmask = absl::Seconds(60);
};

// Local training of a round unless coordinator.yaml says otherwise.
v1::LocalTrainingConfig DefaultLocalTraining();

struct RoundPolicy {
  // The model the federation starts from, published as version 1 at the first `serve`.
  std::filesystem::path initial_model;
  // Train LoRA adapters over initial_model, held frozen in the format it is stored in, instead of
  // whole tensors (issue [peft]). Always FFA-LoRA: A frozen, drawn from lora.seed (0: a seed
  // drawn from OpenSSL when version 1 is published), and only B and the routers train. The
  // adapters' shape is fixed by version 1; a later start with another refuses to run.
  bool adapters = false;
  model::LoraConfig lora;

  // Rounds start when at least min_clients enrolled clients are polling; each such client is
  // selected independently with probability sampling_rate (Poisson sampling), and a cohort
  // larger than max_clients is not started (it is resampled at the next tick).
  int64_t min_clients = 3;
  int64_t max_clients = 1000;
  double sampling_rate = 1.0;
  // Pause between the end of one round and the selection of the next.
  absl::Duration interval = absl::Seconds(5);
  // Rounds to commit before the coordinator stops starting new ones; 0: no limit.
  int64_t max_rounds = 0;
  StageTimeouts timeouts;

  model::TrainableSet trainable;
  v1::LocalTrainingConfig training = DefaultLocalTraining();

  ServerOptimizerKind server_optimizer = ServerOptimizerKind::kFedAvg;
  double server_learning_rate = 1.0;
  // FedAdam (Reddi et al. 2021): moment decays and the adaptivity τ.
  double server_beta1 = 0.9;
  double server_beta2 = 0.99;
  double server_tau = 1e-3;
  // w_min of the expert merge: an expert whose summed routing weight is below it, or below two
  // standard deviations of the noise in a summed weight where that is higher, is left as it
  // was (nobody used it, or only noise says anybody did).
  double expert_weight_floor = 1e-3;
  // Fractions of the clip norm C that the expert weights and the routing histogram may take
  // (each is scaled so that its largest possible norm is this share of C). Δ is clipped to
  // C·√(1 − expert_weights_share² − histogram_share²), so the three fold into C.
  double expert_weights_share = 0.25;
  double histogram_share = 0.05;

  // Privacy (DESIGN §4–§5).
  v1::PrivacySpec::Mode privacy_mode = v1::PrivacySpec::MODE_DISTRIBUTED;
  v1::PrivacySpec::Mechanism mechanism = v1::PrivacySpec::MECHANISM_DISCRETE_GAUSSIAN;
  double clip_norm = 1.0;
  double noise_multiplier = 1.0;
  double delta = 1e-5;
  // 0: no budget. Otherwise a round that could take ε past it is not started.
  double target_epsilon = 0;
  int64_t ring_bits = 32;
  double rounding_beta = 0.6065306597126334;  // e^-0.5, as KLS21 use.

  // SecAgg+ graph sizing (ChooseGraphParameters).
  double dropout_rate = 0.1;
  double corrupt_fraction = 0.1;
};

// Reads the sections into *policy (defaults stay for absent keys); problems go to the reader.
void ReadRoundPolicy(config::YamlConfigReader& reader, RoundPolicy* policy);

// The sections as `init` writes them, commented.
std::string RoundPolicyYaml(const RoundPolicy& policy);

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_ROUND_ROUND_POLICY_H_
