// The site's personal model ([personal], docs/architecture.md "Personal models"): what the
// site uses, kept in its state directory beside the global models it downloads.
//
// Two ways to make one, chosen in client.yaml's `personalization:` block:
//  - private experts (model/personal.h): P routed experts per MoE layer, with router rows of
//    their own, that never leave the site. The personal model is the newest global model plus
//    them. By default they train after each committed round, over the new global model held
//    fixed (only they and their router rows learn), so the round's own training and what the
//    site sends are exactly what they would be without them; `with_round` trains them inside
//    the round's training instead, together with the global tensors, and sends only the latter.
//  - Ditto (Li et al. 2021): after each committed round, a personal copy of the global model's
//    shape takes a few local steps from where it was, pulled toward the new global model by a
//    proximal term λ‖θ − θ_global‖². It never feeds the federation's update.
#ifndef FEDMOE_CLIENT_PERSONAL_MODEL_H_
#define FEDMOE_CLIENT_PERSONAL_MODEL_H_

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "config/yaml_config.h"
#include "model/parameters.h"
#include "model/trainer.h"

namespace fedmoe::client {

enum class PersonalMode { kNone, kPrivateExperts, kDitto };

// When private experts train: after each committed round over the new global model, or inside
// the round's own training.
enum class PrivateExpertsTraining { kAfterCommit, kWithRound };

std::string_view PersonalModeName(PersonalMode mode);
absl::StatusOr<PersonalMode> ParsePersonalMode(std::string_view name);

// client.yaml's `personalization:` block.
struct PersonalizationSettings {
  PersonalMode mode = PersonalMode::kNone;
  // Private experts per MoE layer (mode private_experts), and when they train.
  int64_t private_experts = 4;
  PrivateExpertsTraining private_training = PrivateExpertsTraining::kAfterCommit;
  // Local steps of the pass after each committed round (private experts after_commit, and
  // ditto); 0: as many as the round's training takes.
  int64_t steps = 0;
  // The proximal coefficient λ (mode ditto).
  double ditto_lambda = 0.01;

  static void Read(config::YamlConfigReader& reader, PersonalizationSettings* settings);
  std::string ToYaml() const;
};

// personal.json: what the personal model directory holds.
struct PersonalModelInfo {
  PersonalMode mode = PersonalMode::kNone;
  // The global model's experts per layer, and the private ones after them.
  int64_t global_experts = 0;
  int64_t private_experts = 0;
  // The global model version the personal model holds (private experts) or was last pulled
  // toward (Ditto).
  uint64_t global_version = 0;
  // Rounds and local steps that trained the site's own part so far.
  int64_t rounds_trained = 0;
  int64_t local_steps = 0;

  std::string ToJson() const;
};

// The description a save writes: `mode` over global version `global_version`, counting on from
// `held` (what the store held in this mode, if anything) one more trained round of
// `trained_steps` steps, or none when trained_steps is 0 (a model only recomposed).
PersonalModelInfo NextPersonalInfo(PersonalMode mode, int64_t global_experts,
                                   int64_t private_experts, uint64_t global_version,
                                   const std::optional<PersonalModelInfo>& held,
                                   int64_t trained_steps);

// <state>/personal/: a plain Mixtral checkpoint (config.json, model.safetensors, the global
// model's tokenizer files) plus personal.json. Replaced as a whole: a new one is written beside
// it and swapped in, so a crash leaves the old model or the new one.
class PersonalModelStore {
 public:
  explicit PersonalModelStore(std::filesystem::path directory);

  const std::filesystem::path& directory() const { return directory_; }
  // Whether a personal model is held (after finishing a swap a crash interrupted).
  bool Exists() const;
  // DataLoss naming the file when personal.json is unreadable.
  absl::StatusOr<PersonalModelInfo> Info() const;
  absl::StatusOr<model::ModelParameters> Load() const;
  // Writes `personal`, its info and the tokenizer files of `global_directory`.
  absl::Status Save(const model::ModelParameters& personal, const PersonalModelInfo& info,
                    const std::filesystem::path& global_directory) const;
  // Removes the personal model (private experts and Ditto copy alike); the next round starts
  // fresh ones.
  absl::Status Reset() const;

 private:
  std::filesystem::path Staging() const;
  std::filesystem::path Retired() const;
  absl::Status FinishSwap() const;

  std::filesystem::path directory_;
};

// The model a round trains under private experts: the round's global model plus the site's
// private experts (held ones when the store has them in the same shape, fresh ones otherwise).
// `held_info` receives what the store held, if anything.
absl::StatusOr<model::ModelParameters> PrivateExpertsStart(
    const PersonalizationSettings& settings, const PersonalModelStore& store,
    const model::ModelParameters& global, uint64_t seed,
    std::optional<PersonalModelInfo>* held_info);

// Brings the personal model to a new global version. Private experts are kept around the new
// global tensors and, trained after_commit, take settings.steps steps of `round_options` (the
// last round's training) with the global tensors frozen; a Ditto copy takes as many, pulled
// toward the new global model. These passes run without DP-SGD: neither feeds what the site
// sends. Without round options (no round since the daemon started) private experts are only
// recomposed, and a Ditto copy waits (FailedPrecondition). Nothing to do for mode none.
absl::Status RefreshPersonal(const PersonalizationSettings& settings,
                             const PersonalModelStore& store, uint64_t global_version,
                             const std::filesystem::path& global_directory,
                             const std::filesystem::path& data,
                             const std::optional<model::TrainOptions>& round_options);

}  // namespace fedmoe::client

#endif  // FEDMOE_CLIENT_PERSONAL_MODEL_H_
