#include "client/personal_model.h"

#include <cmath>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "config/enum_names.h"
#include "logging/log.h"
#include "model/checkpoint.h"
#include "model/personal.h"
#include "model/tokenizer.h"
#include "storage/atomic_file.h"
#include "storage/file_status.h"
#include "storage/read_file.h"

namespace fedmoe::client {
namespace {

constexpr char kInfoFile[] = "personal.json";
constexpr char kInfoFormat[] = "fedmoe-personal-model/1";

// The files of a model directory that are weights or their config, which a personal model has
// its own of; the rest (the tokenizer's) it shares with the global model.
bool IsWeightsFile(const std::string& name) {
  return name == "config.json" || name.ends_with(".safetensors") ||
         name == "model.safetensors.index.json";
}

absl::Status CopyTokenizerFiles(const std::filesystem::path& from,
                                const std::filesystem::path& to) {
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(from, error)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_regular_file() || IsWeightsFile(name)) continue;
    absl::StatusOr<std::string> contents = storage::ReadSmallFile(entry.path());
    if (!contents.ok()) return contents.status();
    if (absl::Status status = storage::WriteFileAtomically(
            to / name, *contents,
            std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
        !status.ok()) {
      return status;
    }
  }
  if (error) {
    return absl::InternalError(absl::StrCat("cannot list ", from.string(), ": ", error.message()));
  }
  return absl::OkStatus();
}

}  // namespace

constexpr config::EnumName<PersonalMode> kPersonalModeNames[] = {
    {PersonalMode::kNone, "none"},
    {PersonalMode::kPrivateExperts, "private_experts"},
    {PersonalMode::kDitto, "ditto"}};

std::string_view PersonalModeName(PersonalMode mode) {
  return config::NameOf(kPersonalModeNames, mode, "none");
}

absl::StatusOr<PersonalMode> ParsePersonalMode(std::string_view name) {
  if (std::optional<PersonalMode> mode = config::ValueOf(kPersonalModeNames, name)) return *mode;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown personalization mode '", std::string(name), "' (none, private_experts, ditto)"));
}

void PersonalizationSettings::Read(config::YamlConfigReader& reader,
                                   PersonalizationSettings* settings) {
  std::string mode(PersonalModeName(settings->mode));
  reader.Read("personalization.mode", &mode);
  if (absl::StatusOr<PersonalMode> parsed = ParsePersonalMode(mode); parsed.ok()) {
    settings->mode = *parsed;
  } else {
    reader.Invalid("personalization.mode", std::string(parsed.status().message()));
  }
  reader.Read("personalization.private_experts", &settings->private_experts);
  if (settings->private_experts < 1 || settings->private_experts > model::kMaxPrivateExperts) {
    reader.Invalid("personalization.private_experts",
                   absl::StrCat("must be between 1 and ", model::kMaxPrivateExperts));
  }
  std::string training = settings->private_training == PrivateExpertsTraining::kWithRound
                             ? "with_round"
                             : "after_commit";
  reader.Read("personalization.train_private_experts", &training);
  if (training == "after_commit" || training == "with_round") {
    settings->private_training = training == "with_round" ? PrivateExpertsTraining::kWithRound
                                                          : PrivateExpertsTraining::kAfterCommit;
  } else {
    reader.Invalid("personalization.train_private_experts",
                   absl::StrCat("unknown value '", training, "' (after_commit, with_round)"));
  }
  reader.Read("personalization.steps", &settings->steps);
  if (settings->steps < 0 || settings->steps > 100000) {
    reader.Invalid("personalization.steps",
                   "must be between 0 (as many as a round trains) and 100000");
  }
  reader.Read("personalization.ditto_lambda", &settings->ditto_lambda);
  if (!(settings->ditto_lambda >= 0) || !std::isfinite(settings->ditto_lambda)) {
    reader.Invalid("personalization.ditto_lambda", "must be a number ≥ 0");
  }
}

std::string PersonalizationSettings::ToYaml() const {
  return absl::StrCat(
      "personalization:\n"
      "  # The site's personal model, kept in state_dir/personal and used by `model eval`,\n"
      "  # `model trace` and `status`:\n"
      "  #   private_experts: this many routed experts per MoE layer, with router rows of their\n"
      "  #     own, that never leave this machine. after_commit trains them after each\n"
      "  #     committed round over the new global model held fixed, leaving the round's own\n"
      "  #     training as it would be without them; with_round trains them inside the round\n"
      "  #     (no extra pass; under DP-SGD they are then noised with the rest);\n"
      "  #   ditto: after each committed round a personal copy takes `steps` local steps,\n"
      "  #     pulled toward the new global model by ditto_lambda·‖θ − θ_global‖²;\n"
      "  #   none: the site uses the global model.\n"
      "  mode: ",
      std::string(PersonalModeName(mode)), "\n  private_experts: ", private_experts,
      "\n  train_private_experts: ",
      private_training == PrivateExpertsTraining::kWithRound ? "with_round" : "after_commit",
      "\n  # Local steps of the pass after each committed round; 0: as many as a round takes.\n"
      "  steps: ",
      steps, "\n  ditto_lambda: ", ditto_lambda, "\n");
}

std::string PersonalModelInfo::ToJson() const {
  nlohmann::json json;
  json["format"] = kInfoFormat;
  json["mode"] = std::string(PersonalModeName(mode));
  json["global_experts"] = global_experts;
  json["private_experts"] = private_experts;
  json["global_version"] = global_version;
  json["rounds_trained"] = rounds_trained;
  json["local_steps"] = local_steps;
  return json.dump(2) + "\n";
}

PersonalModelInfo NextPersonalInfo(PersonalMode mode, int64_t global_experts,
                                   int64_t private_experts, uint64_t global_version,
                                   const std::optional<PersonalModelInfo>& held,
                                   int64_t trained_steps) {
  PersonalModelInfo info;
  info.mode = mode;
  info.global_experts = global_experts;
  info.private_experts = private_experts;
  info.global_version = global_version;
  info.rounds_trained = (held.has_value() ? held->rounds_trained : 0) + (trained_steps > 0 ? 1 : 0);
  info.local_steps = (held.has_value() ? held->local_steps : 0) + trained_steps;
  return info;
}

PersonalModelStore::PersonalModelStore(std::filesystem::path directory)
    : directory_(std::move(directory)) {}

std::filesystem::path PersonalModelStore::Staging() const {
  return directory_.parent_path() / (directory_.filename().string() + ".new");
}

std::filesystem::path PersonalModelStore::Retired() const {
  return directory_.parent_path() / (directory_.filename().string() + ".old");
}

absl::Status PersonalModelStore::FinishSwap() const {
  std::error_code error;
  if (!storage::PathExists(directory_)) {
    // A crash between the two renames of Save: the new model is whole (its info is written
    // last), or the old one is where it was put aside.
    if (storage::PathExists(Staging() / kInfoFile))
      return storage::RenameDurably(Staging(), directory_);
    if (storage::PathExists(Retired())) return storage::RenameDurably(Retired(), directory_);
    return absl::OkStatus();
  }
  std::filesystem::remove_all(Retired(), error);
  return absl::OkStatus();
}

bool PersonalModelStore::Exists() const {
  if (!FinishSwap().ok()) return false;
  return storage::PathExists(directory_ / kInfoFile);
}

absl::StatusOr<PersonalModelInfo> PersonalModelStore::Info() const {
  if (absl::Status status = FinishSwap(); !status.ok()) return status;
  const std::filesystem::path path = directory_ / kInfoFile;
  absl::StatusOr<std::string> text = storage::ReadSmallFile(path);
  if (!text.ok()) return text.status();
  nlohmann::json json = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  auto corrupt = [&path](const std::string& why) {
    return absl::DataLossError(absl::StrCat(path.string(), ": ", why,
                                            "; remove the personal model with `fedmoe-client "
                                            "personal reset` to start a new one"));
  };
  if (!json.is_object() || json.value("format", "") != kInfoFormat) {
    return corrupt("not a fedmoe personal model description");
  }
  PersonalModelInfo info;
  absl::StatusOr<PersonalMode> mode = ParsePersonalMode(json.value("mode", ""));
  if (!mode.ok()) return corrupt(std::string(mode.status().message()));
  info.mode = *mode;
  for (const char* key :
       {"global_experts", "private_experts", "global_version", "rounds_trained", "local_steps"}) {
    if (!json.contains(key) || !json[key].is_number_unsigned()) {
      return corrupt(absl::StrCat("'", key, "' is missing or not a count"));
    }
  }
  info.global_experts = json["global_experts"].get<int64_t>();
  info.private_experts = json["private_experts"].get<int64_t>();
  info.global_version = json["global_version"].get<uint64_t>();
  info.rounds_trained = json["rounds_trained"].get<int64_t>();
  info.local_steps = json["local_steps"].get<int64_t>();
  return info;
}

absl::StatusOr<model::ModelParameters> PersonalModelStore::Load() const {
  if (absl::Status status = FinishSwap(); !status.ok()) return status;
  return model::LoadModel(directory_);
}

absl::Status PersonalModelStore::Save(const model::ModelParameters& personal,
                                      const PersonalModelInfo& info,
                                      const std::filesystem::path& global_directory) const {
  // An earlier save a crash interrupted is finished first, so that staging can start clean.
  if (absl::Status status = FinishSwap(); !status.ok()) return status;
  std::error_code error;
  std::filesystem::remove_all(Staging(), error);
  std::filesystem::create_directories(Staging(), error);
  if (error) {
    return absl::InternalError(
        absl::StrCat("cannot create ", Staging().string(), ": ", error.message()));
  }
  std::filesystem::permissions(Staging(), std::filesystem::perms::owner_all, error);
  if (absl::Status status = model::SaveModel(personal, Staging()); !status.ok()) return status;
  if (absl::Status status = CopyTokenizerFiles(global_directory, Staging()); !status.ok()) {
    return status;
  }
  if (absl::Status status = storage::WriteFileAtomically(
          Staging() / kInfoFile, info.ToJson(),
          std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
      !status.ok()) {
    return status;
  }
  if (storage::PathExists(directory_)) {
    if (absl::Status status = storage::RenameDurably(directory_, Retired()); !status.ok()) {
      return status;
    }
  }
  if (absl::Status status = storage::RenameDurably(Staging(), directory_); !status.ok()) {
    return status;
  }
  std::filesystem::remove_all(Retired(), error);
  return absl::OkStatus();
}

absl::Status PersonalModelStore::Reset() const {
  std::error_code error;
  for (const std::filesystem::path& path : {Staging(), directory_, Retired()}) {
    std::filesystem::remove_all(path, error);
    if (error) {
      return absl::InternalError(
          absl::StrCat("cannot remove ", path.string(), ": ", error.message()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<model::ModelParameters> PrivateExpertsStart(
    const PersonalizationSettings& settings, const PersonalModelStore& store,
    const model::ModelParameters& global, uint64_t seed,
    std::optional<PersonalModelInfo>* held_info) {
  held_info->reset();
  if (store.Exists()) {
    absl::StatusOr<PersonalModelInfo> info = store.Info();
    if (!info.ok()) return info.status();
    if (info->mode == PersonalMode::kPrivateExperts) {
      absl::StatusOr<model::ModelParameters> held = store.Load();
      if (!held.ok()) return held.status();
      absl::StatusOr<model::ModelParameters> composed =
          model::ComposePersonal(global, settings.private_experts, &*held, seed);
      // A held model of another shape is refused, not overwritten: its experts are the site's
      // work, and only the operator may throw them away (personal reset).
      if (!composed.ok()) return composed.status();
      *held_info = *info;
      return composed;
    }
  }
  return model::ComposePersonal(global, settings.private_experts, nullptr, seed);
}

absl::Status RefreshPersonal(const PersonalizationSettings& settings,
                             const PersonalModelStore& store, uint64_t global_version,
                             const std::filesystem::path& global_directory,
                             const std::filesystem::path& data,
                             const std::optional<model::TrainOptions>& round_options) {
  if (settings.mode == PersonalMode::kNone) return absl::OkStatus();
  std::optional<PersonalModelInfo> held;
  if (store.Exists()) {
    absl::StatusOr<PersonalModelInfo> info = store.Info();
    if (!info.ok()) return info.status();
    if (info->mode == settings.mode) held = *info;
  }
  if (held.has_value() && held->global_version >= global_version) return absl::OkStatus();
  absl::StatusOr<model::ModelParameters> global = model::LoadModel(global_directory);
  if (!global.ok()) return global.status();
  absl::StatusOr<std::unique_ptr<model::Tokenizer>> tokenizer =
      model::LoadTokenizer(global_directory, global->config().vocab_size);
  if (!tokenizer.ok()) return tokenizer.status();
  // The pass's settings: the last round's training, for `steps` steps, without DP-SGD, at a
  // constant learning rate after the warmup. The passes continue one training across rounds;
  // a decay restarted in every pass costs that training dearly (measured on the finance
  // corpus: five 40-step passes reached 1.83 nats under the round's cosine, 1.65 at a constant
  // rate, against 1.74 and 1.63 for 200 steps in one run).
  std::optional<model::TrainOptions> pass;
  if (round_options.has_value()) {
    pass = *round_options;
    if (settings.steps > 0) pass->steps = settings.steps;
    pass->schedule = model::Schedule::kConstant;
    pass->record_privacy = {};
    pass->eval_every = 0;
  }
  if (settings.mode == PersonalMode::kPrivateExperts) {
    std::optional<model::ModelParameters> kept;
    if (held.has_value()) {
      absl::StatusOr<model::ModelParameters> loaded = store.Load();
      if (!loaded.ok()) return loaded.status();
      kept = *std::move(loaded);
    }
    // Trained with the round, the experts exist once a round made them.
    const bool after_commit = settings.private_training == PrivateExpertsTraining::kAfterCommit;
    if (!kept.has_value() && !after_commit) return absl::OkStatus();
    absl::StatusOr<model::ModelParameters> personal = model::ComposePersonal(
        *global, settings.private_experts, kept.has_value() ? &*kept : nullptr, global_version);
    if (!personal.ok()) return personal.status();
    const int64_t global_experts = global->config().num_local_experts;
    int64_t trained_steps = 0;
    if (after_commit && pass.has_value()) {
      pass->private_experts = settings.private_experts;
      // The site's experts and rows train whatever the round trained of the global model.
      pass->trainable.routed_experts = pass->trainable.router = true;
      pass->trainable.first_trained_expert = global_experts;
      absl::StatusOr<model::TrainResult> trained =
          model::Train(*personal, **tokenizer, data, *pass);
      if (!trained.ok()) return trained.status();
      trained_steps = trained->steps;
      LogEvent(LogLevel::kInfo, "personal_model_trained")
          .Field("mode", "private_experts")
          .Field("global_version", global_version)
          .Field("steps", trained->steps)
          .Field("train_loss", trained->train_loss);
    }
    return store.Save(
        *personal,
        NextPersonalInfo(PersonalMode::kPrivateExperts, global_experts, settings.private_experts,
                         global_version, held, trained_steps),
        global_directory);
  }
  // Ditto: the personal copy's trained tensors continue from where they were; the rest are
  // the new global model's, so that the proximal term is zero outside what trains.
  if (!pass.has_value()) {
    return absl::FailedPreconditionError(
        "no round's training settings since the daemon started: the Ditto copy is refreshed "
        "after the next round this site joins");
  }
  model::TrainOptions options = *pass;
  model::ModelParameters personal = *global;
  if (held.has_value()) {
    absl::StatusOr<model::ModelParameters> previous = store.Load();
    if (!previous.ok()) return previous.status();
    if (previous->config().ToJson() == global->config().ToJson()) {
      for (const model::TensorSpec& tensor : personal.layout().tensors()) {
        if (!options.trainable.Includes(tensor.role)) continue;
        const std::span<const float> source = previous->tensor(tensor);
        std::copy(source.begin(), source.end(), personal.tensor(tensor).begin());
      }
    } else {
      held.reset();
    }
  }
  options.proximal.coefficient = settings.ditto_lambda;
  options.proximal.anchor = std::make_shared<const model::ModelParameters>(*std::move(global));
  absl::StatusOr<model::TrainResult> trained = model::Train(personal, **tokenizer, data, options);
  if (!trained.ok()) return trained.status();
  LogEvent(LogLevel::kInfo, "personal_model_refreshed")
      .Field("mode", "ditto")
      .Field("global_version", global_version)
      .Field("steps", trained->steps)
      .Field("train_loss", trained->train_loss);
  return store.Save(personal,
                    NextPersonalInfo(PersonalMode::kDitto, personal.config().num_local_experts,
                                     /*private_experts=*/0, global_version, held, trained->steps),
                    global_directory);
}

}  // namespace fedmoe::client
