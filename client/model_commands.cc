#include "client/model_commands.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/client_config.h"
#include "client/explain_command.h"
#include "client/generate_command.h"
#include "client/model_flags.h"
#include "client/model_sync.h"
#include "client/personal_model.h"
#include "config/command_line.h"
#include "model/adapted_model.h"
#include "model/checkpoint.h"
#include "model/evaluation.h"
#include "model/forward.h"
#include "model/frozen_base.h"
#include "model/init.h"
#include "model/peft.h"
#include "model/tokenizer.h"
#include "storage/file_status.h"

namespace fedmoe::client {
namespace {

using config::CommandLine;
using Json = nlohmann::json;

int Fail(const absl::Status& status) { return config::ReportFailure("fedmoe-client", status); }

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::ostringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

// A token as operators read it: printable ASCII as is, everything else escaped.
std::string Printable(std::string_view bytes) {
  std::string out;
  for (const char c : bytes) {
    const auto byte = static_cast<unsigned char>(c);
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (byte >= 0x20 && byte < 0x7f) {
      out.push_back(c);
    } else {
      out += absl::StrFormat("\\x%02x", byte);
    }
  }
  return out;
}

// The model a command reads: --model DIR, or an enrolled site's (--state-dir or --config): its
// personal model when it has one, else its newest global one; --personal or --global choose.
absl::StatusOr<std::string> ChosenModel(const CommandLine& flags) {
  const bool personal = flags.Has("personal");
  const bool global = flags.Has("global");
  if (personal && global) {
    return absl::InvalidArgumentError("--personal and --global exclude each other");
  }
  if (auto model = flags.Get("model")) {
    if (personal || global || flags.Has("state-dir") || flags.Has("config")) {
      return absl::InvalidArgumentError(
          "--model names the model itself; --state-dir or --config (with --personal or "
          "--global) choose one of an enrolled site's instead");
    }
    return *model;
  }
  if (!flags.Has("state-dir") && !flags.Has("config")) {
    return absl::InvalidArgumentError(
        "--model DIR, or an enrolled site's --state-dir DIR or --config FILE, is required");
  }
  absl::StatusOr<ClientConfig> config = LoadClientConfig(flags);
  if (!config.ok()) return config.status();
  const PersonalModelStore store(config->state_dir.personal());
  if (!global && store.Exists()) return store.directory().string();
  if (personal) {
    return absl::NotFoundError(absl::StrCat(
        "this site has no personal model yet (", store.directory().string(),
        "): it is made by the first round trained with personalization.mode private_experts, "
        "or the first committed round under ditto"));
  }
  const uint64_t version = NewestLocalVersion(config->state_dir.models());
  if (version == 0) {
    return absl::NotFoundError(absl::StrCat("this site holds no global model yet (",
                                            config->state_dir.models().string(), ")"));
  }
  return (config->state_dir.models() / absl::StrCat("v", version)).string();
}

// The model eval and trace run: a plain checkpoint as it is, or a frozen base held compactly
// with a site's adapters. The base is frozen when --adapter names adapters, when --int8, --bf16
// or --int8-activations asks for it, or when the checkpoint is stored in INT8 (which only a
// frozen base reads).
class InferenceModel {
 public:
  static absl::StatusOr<InferenceModel> Load(const std::string& model_dir,
                                             const CommandLine& flags) {
    absl::StatusOr<model::HeldFormat> held = HeldFormatFlags(flags);
    if (!held.ok()) return held.status();
    const std::optional<std::string> adapter = flags.Get("adapter");
    // The directory's config first: a wrong directory is named by what it lacks first.
    if (absl::StatusOr<model::MoeConfig> config =
            model::LoadMoeConfig(std::filesystem::path(model_dir) / "config.json");
        !config.ok()) {
      return config.status();
    }
    InferenceModel loaded;
    if (!held->weights.has_value() && !held->int8_activations && !adapter.has_value()) {
      absl::StatusOr<model::WeightFormat> stored = model::StoredWeightFormat(model_dir);
      if (!stored.ok()) return stored.status();
      if (*stored != model::WeightFormat::kInt8) {
        absl::StatusOr<model::ModelParameters> parameters = model::LoadModel(model_dir);
        if (!parameters.ok()) return parameters.status();
        loaded.plain_.emplace(*std::move(parameters));
        return loaded;
      }
    }
    absl::StatusOr<model::FrozenBase> base = model::OpenForInference(model_dir, *held);
    if (!base.ok()) return base.status();
    loaded.base_.emplace(*std::move(base));
    if (adapter.has_value()) {
      absl::StatusOr<model::LoraAdapters> adapters =
          model::LoadAdaptersFor(*loaded.base_, *adapter);
      if (!adapters.ok()) return adapters.status();
      loaded.adapters_.emplace(*std::move(adapters));
    } else {
      loaded.adapters_.emplace(model::BaseOnlyAdapters(*loaded.base_));
    }
    return loaded;
  }

  const model::MoeConfig& config() const {
    return plain_.has_value() ? plain_->config() : base_->config();
  }

  absl::StatusOr<const model::ForwardPass*> Run(std::span<const int32_t> tokens, int64_t batch,
                                                int64_t length) {
    if (plain_.has_value()) {
      if (absl::Status status = model::Forward(*plain_, tokens, batch, length, plain_pass_);
          !status.ok()) {
        return status;
      }
      return &plain_pass_;
    }
    if (absl::Status status =
            model::AdaptedForward(*base_, *adapters_, tokens, batch, length, adapted_pass_);
        !status.ok()) {
      return status;
    }
    return &adapted_pass_.model;
  }

 private:
  InferenceModel() = default;

  std::optional<model::ModelParameters> plain_;
  std::optional<model::FrozenBase> base_;
  std::optional<model::LoraAdapters> adapters_;
  model::ForwardPass plain_pass_;
  model::AdaptedPass adapted_pass_;
};

int EvalCommand(const std::vector<std::string>& args) {
  auto flags = CommandLine::Parse(
      args, {"model", "state-dir", "config", "data", "seq-len", "batch", "threads", "adapter"},
      {"personal", "global", "int8", "bf16", "int8-activations"});
  if (!flags.ok()) return Fail(flags.status());
  absl::StatusOr<std::string> model_dir = ChosenModel(*flags);
  if (!model_dir.ok()) return Fail(model_dir.status());
  absl::StatusOr<std::string> data_path = flags->Require("data");
  if (!data_path.ok()) return Fail(data_path.status());
  absl::StatusOr<int64_t> seq_len = flags->IntOr("seq-len", 128, 2, kMaxSeqLen);
  if (!seq_len.ok()) return Fail(seq_len.status());
  absl::StatusOr<int64_t> batch = flags->IntOr("batch", 8, 1, kMaxBatch);
  if (!batch.ok()) return Fail(batch.status());
  if (absl::Status status = ApplyThreads(*flags); !status.ok()) return Fail(status);

  absl::StatusOr<InferenceModel> inference = InferenceModel::Load(*model_dir, *flags);
  if (!inference.ok()) return Fail(inference.status());
  absl::StatusOr<std::unique_ptr<model::Tokenizer>> tokenizer =
      model::LoadTokenizer(*model_dir, inference->config().vocab_size);
  if (!tokenizer.ok()) return Fail(tokenizer.status());
  absl::StatusOr<std::string> text = ReadWholeFile(*data_path);
  if (!text.ok()) return Fail(text.status());
  absl::StatusOr<std::vector<int32_t>> tokens = (*tokenizer)->Encode(*text);
  if (!tokens.ok()) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat(*data_path, ": ", std::string(tokens.status().message()))));
  }
  absl::StatusOr<model::Evaluation> evaluation =
      model::EvaluateWindows(*tokens, *seq_len, *batch, inference->config().vocab_size,
                             [&](std::span<const int32_t> chunk, int64_t windows, int64_t length) {
                               return inference->Run(chunk, windows, length);
                             });
  if (!evaluation.ok()) {
    return Fail(
        absl::Status(evaluation.status().code(),
                     absl::StrCat(*data_path, ": ", std::string(evaluation.status().message()))));
  }
  std::printf("%s\n", JsonLine({{"loss", evaluation->loss},
                                {"tokens", evaluation->predictions},
                                {"model", *model_dir}})
                          .c_str());
  return 0;
}

// A written checkpoint's dtype: --dtype f32 (the default) or bf16.
absl::StatusOr<model::SaveOptions> SaveOptionsOf(const CommandLine& flags) {
  model::SaveOptions options;
  const std::string dtype = flags.GetOr("dtype", "f32");
  if (dtype == "bf16") {
    options.dtype = model::DType::kBF16;
  } else if (dtype != "f32") {
    return absl::InvalidArgumentError(
        absl::StrCat("--dtype must be f32 or bf16, not '", dtype, "'"));
  }
  return options;
}

int InitCommand(const std::vector<std::string>& args) {
  auto flags = CommandLine::Parse(args, {"config", "out", "seed", "dtype", "group-size"}, {});
  if (!flags.ok()) return Fail(flags.status());
  absl::StatusOr<std::string> config_path = flags->Require("config");
  if (!config_path.ok()) return Fail(config_path.status());
  absl::StatusOr<std::string> out = flags->Require("out");
  if (!out.ok()) return Fail(out.status());
  absl::StatusOr<int64_t> seed = flags->IntOr("seed", 0, 0, std::numeric_limits<int64_t>::max());
  if (!seed.ok()) return Fail(seed.status());
  absl::StatusOr<int64_t> group = flags->IntOr("group-size", 128, 0, int64_t{1} << 20);
  if (!group.ok()) return Fail(group.status());
  const std::string dtype = flags->GetOr("dtype", "f32");
  if (dtype != "f32" && dtype != "bf16" && dtype != "int8") {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--dtype must be f32, bf16 or int8, not '", dtype, "'")));
  }
  const bool int8 = dtype == "int8";
  if (flags->Has("group-size") && !int8) {
    return Fail(absl::InvalidArgumentError("--group-size applies to --dtype int8 only"));
  }
  absl::StatusOr<model::SaveOptions> options =
      int8 ? absl::StatusOr<model::SaveOptions>(model::SaveOptions()) : SaveOptionsOf(*flags);
  if (!options.ok()) return Fail(options.status());
  absl::StatusOr<model::MoeConfig> config = model::LoadMoeConfig(*config_path);
  if (!config.ok()) return Fail(config.status());
  if (int8) {
    // Straight into INT8, one tensor at a time: a model far larger than memory in fp32 fits.
    absl::StatusOr<model::FrozenBase> base = model::InitializeBase(
        *config, model::WeightFormat::kInt8, *group, static_cast<uint64_t>(*seed));
    if (!base.ok()) return Fail(base.status());
    if (absl::Status status = model::SaveFrozenBase(*base, *out); !status.ok()) {
      return Fail(status);
    }
    std::printf("initialised %lld parameters (seed %lld) as INT8 in %s\n",
                static_cast<long long>(base->layout().total_size()), static_cast<long long>(*seed),
                out->c_str());
    return 0;
  }
  const model::ModelParameters parameters =
      model::InitializeModel(*config, static_cast<uint64_t>(*seed));
  if (absl::Status status = model::SaveModel(parameters, *out, *options); !status.ok()) {
    return Fail(status);
  }
  std::printf("initialised %lld parameters (seed %lld) in %s\n",
              static_cast<long long>(parameters.layout().total_size()),
              static_cast<long long>(*seed), out->c_str());
  return 0;
}

int InspectCommand(const std::vector<std::string>& args) {
  auto flags = CommandLine::Parse(args, {"model"}, {"json"});
  if (!flags.ok()) return Fail(flags.status());
  std::string model_dir = flags->GetOr("model", "");
  if (model_dir.empty() && flags->positional().size() == 1) model_dir = flags->positional()[0];
  if (model_dir.empty()) {
    return Fail(absl::InvalidArgumentError("model inspect needs a model directory"));
  }
  absl::StatusOr<model::MoeConfig> config = model::LoadMoeConfig(model_dir + "/config.json");
  if (!config.ok()) return Fail(config.status());
  absl::StatusOr<uint64_t> disk_bytes = model::CheckpointBytes(model_dir);
  if (!disk_bytes.ok()) return Fail(disk_bytes.status());
  const model::ModelLayout layout(*config);
  std::map<std::string, int64_t> by_role;
  for (const model::TensorSpec& spec : layout.tensors()) {
    by_role[std::string(model::TensorRoleName(spec.role))] += spec.size;
  }
  const int64_t per_expert = 3 * config->hidden_size * config->intermediate_size;
  // Parameters one token touches: everything but the routed experts it was not sent to.
  const int64_t active = layout.total_size() -
                         config->num_hidden_layers *
                             (config->num_local_experts - config->num_experts_per_tok) * per_expert;
  if (flags->Has("json")) {
    Json json = {{"parameters", layout.total_size()},
                 {"active_parameters_per_token", active},
                 {"layers", config->num_hidden_layers},
                 {"routed_experts_per_layer", config->num_local_experts},
                 {"experts_per_token", config->num_experts_per_tok},
                 {"shared_experts_per_layer", config->n_shared_experts},
                 {"parameters_per_routed_expert", per_expert},
                 {"tensors", layout.tensors().size()},
                 {"checkpoint_bytes", *disk_bytes},
                 {"f32_bytes", layout.total_size() * 4},
                 {"parameters_by_role", by_role}};
    std::printf("%s\n", JsonLine(json).c_str());
    return 0;
  }
  std::printf("model:       %s\n", model_dir.c_str());
  std::printf("parameters:  %lld (%lld active per token)\n",
              static_cast<long long>(layout.total_size()), static_cast<long long>(active));
  std::printf("layers:      %lld, hidden %lld, heads %lld (KV %lld), head_dim %lld\n",
              static_cast<long long>(config->num_hidden_layers),
              static_cast<long long>(config->hidden_size),
              static_cast<long long>(config->num_attention_heads),
              static_cast<long long>(config->num_key_value_heads),
              static_cast<long long>(config->head_dim));
  std::printf("experts:     %lld routed per layer, top-%lld, %lld shared; %lld parameters each\n",
              static_cast<long long>(config->num_local_experts),
              static_cast<long long>(config->num_experts_per_tok),
              static_cast<long long>(config->n_shared_experts), static_cast<long long>(per_expert));
  for (const auto& [role, count] : by_role) {
    std::printf("  %-15s %lld\n", role.c_str(), static_cast<long long>(count));
  }
  std::printf("bytes:       %llu on disk, %lld as f32 in memory\n",
              static_cast<unsigned long long>(*disk_bytes),
              static_cast<long long>(layout.total_size()) * 4);
  return 0;
}

int TraceCommand(const std::vector<std::string>& args) {
  auto flags =
      CommandLine::Parse(args, {"model", "state-dir", "config", "text", "threads", "adapter"},
                         {"json", "personal", "global", "int8", "bf16", "int8-activations"});
  if (!flags.ok()) return Fail(flags.status());
  absl::StatusOr<std::string> model_dir = ChosenModel(*flags);
  if (!model_dir.ok()) return Fail(model_dir.status());
  absl::StatusOr<std::string> text = flags->Require("text");
  if (!text.ok()) return Fail(text.status());
  if (absl::Status status = ApplyThreads(*flags); !status.ok()) return Fail(status);
  absl::StatusOr<InferenceModel> inference = InferenceModel::Load(*model_dir, *flags);
  if (!inference.ok()) return Fail(inference.status());
  const model::MoeConfig& config = inference->config();
  absl::StatusOr<std::unique_ptr<model::Tokenizer>> tokenizer =
      model::LoadTokenizer(*model_dir, config.vocab_size);
  if (!tokenizer.ok()) return Fail(tokenizer.status());
  absl::StatusOr<std::vector<int32_t>> tokens = (*tokenizer)->Encode(*text);
  if (!tokens.ok()) return Fail(tokens.status());
  if (tokens->empty()) return Fail(absl::InvalidArgumentError("--text has no tokens"));
  const auto count = static_cast<int64_t>(tokens->size());
  absl::StatusOr<const model::ForwardPass*> ran = inference->Run(*tokens, 1, count);
  if (!ran.ok()) return Fail(ran.status());
  const model::ForwardPass& pass = **ran;

  const int64_t top_k = config.num_experts_per_tok;
  Json rows = Json::array();
  for (int64_t position = 0; position < count; ++position) {
    const int32_t id = (*tokens)[static_cast<size_t>(position)];
    absl::StatusOr<std::string> token_text = (*tokenizer)->Decode(std::span(&id, 1));
    Json layers = Json::array();
    for (const model::LayerActivations& layer : pass.layers) {
      Json experts = Json::array();
      Json weights = Json::array();
      for (int64_t j = 0; j < top_k; ++j) {
        experts.push_back(layer.expert_index[static_cast<size_t>(position * top_k + j)]);
        weights.push_back(layer.expert_weight[static_cast<size_t>(position * top_k + j)]);
      }
      layers.push_back({{"experts", experts}, {"weights", weights}});
    }
    rows.push_back({{"position", position},
                    {"id", id},
                    {"text", token_text.ok() ? *token_text : ""},
                    {"layers", layers}});
  }
  if (flags->Has("json")) {
    std::printf("%s\n", JsonLine({{"tokens", rows}}).c_str());
    return 0;
  }
  std::printf("%-5s %-10s", "pos", "token");
  for (size_t layer = 0; layer < pass.layers.size(); ++layer) {
    std::printf(" | layer %-*zu", static_cast<int>(top_k * 10 - 5), layer);
  }
  std::printf("\n");
  std::vector<std::vector<int64_t>> load(pass.layers.size(),
                                         std::vector<int64_t>(config.num_local_experts, 0));
  for (const Json& row : rows) {
    std::printf("%-5lld %-10s", static_cast<long long>(row["position"].get<int64_t>()),
                absl::StrCat("'", Printable(row["text"].get<std::string>()), "'").c_str());
    for (size_t layer = 0; layer < pass.layers.size(); ++layer) {
      std::printf(" |");
      const Json& choice = row["layers"][layer];
      for (int64_t j = 0; j < top_k; ++j) {
        const int expert = choice["experts"][j].get<int>();
        ++load[layer][static_cast<size_t>(expert)];
        std::printf(" e%-3d %.3f", expert, choice["weights"][j].get<double>());
      }
    }
    std::printf("\n");
  }
  std::printf("expert load (share of this text's token slots):\n");
  for (size_t layer = 0; layer < load.size(); ++layer) {
    std::printf("  layer %zu:", layer);
    for (size_t e = 0; e < load[layer].size(); ++e) {
      std::printf(" e%zu %.0f%%", e,
                  100.0 * static_cast<double>(load[layer][e]) / static_cast<double>(count * top_k));
    }
    std::printf("\n");
  }
  return 0;
}

int QuantizeCommand(const std::vector<std::string>& args) {
  auto flags =
      CommandLine::Parse(args, {"model", "out", "group-size", "threads"}, {"int8", "bf16"});
  if (!flags.ok()) return Fail(flags.status());
  absl::StatusOr<std::string> model_dir = flags->Require("model");
  if (!model_dir.ok()) return Fail(model_dir.status());
  absl::StatusOr<std::string> out = flags->Require("out");
  if (!out.ok()) return Fail(out.status());
  if (flags->Has("int8") == flags->Has("bf16")) {
    return Fail(absl::InvalidArgumentError("give exactly one of --int8 and --bf16"));
  }
  const model::WeightFormat format =
      flags->Has("int8") ? model::WeightFormat::kInt8 : model::WeightFormat::kBfloat16;
  absl::StatusOr<int64_t> group = flags->IntOr("group-size", 128, 0, int64_t{1} << 20);
  if (!group.ok()) return Fail(group.status());
  if (flags->Has("group-size") && format != model::WeightFormat::kInt8) {
    return Fail(absl::InvalidArgumentError("--group-size applies to --int8 only"));
  }
  if (absl::Status status = ApplyThreads(*flags); !status.ok()) return Fail(status);
  if (std::filesystem::weakly_canonical(*model_dir) == std::filesystem::weakly_canonical(*out)) {
    return Fail(absl::InvalidArgumentError("--out must not be the --model directory itself"));
  }
  absl::StatusOr<uint64_t> source_bytes = model::CheckpointBytes(*model_dir);
  if (!source_bytes.ok()) return Fail(source_bytes.status());
  absl::StatusOr<model::FrozenBase> base = model::FrozenBase::Open(*model_dir, format, *group);
  if (!base.ok()) return Fail(base.status());
  if (absl::Status status = model::SaveFrozenBase(*base, *out); !status.ok()) return Fail(status);
  if (absl::Status status = CopyTokenizer(*model_dir, *out); !status.ok()) return Fail(status);
  std::printf("%s\n", JsonLine({{"format", model::WeightFormatName(format)},
                                {"group_size", base->group_size()},
                                {"weight_bytes", base->bytes()},
                                {"source_bytes", *source_bytes},
                                {"out", *out}})
                          .c_str());
  return 0;
}

int HashCommand(const std::vector<std::string>& args) {
  auto flags = CommandLine::Parse(args, {"model", "expect", "threads"}, {"int8", "bf16"});
  if (!flags.ok()) return Fail(flags.status());
  absl::StatusOr<std::string> model_dir = flags->Require("model");
  if (!model_dir.ok()) return Fail(model_dir.status());
  absl::StatusOr<std::optional<model::WeightFormat>> format = HeldWeightFormat(*flags);
  if (!format.ok()) return Fail(format.status());
  if (absl::Status status = ApplyThreads(*flags); !status.ok()) return Fail(status);
  absl::StatusOr<model::FrozenBase> base = model::FrozenBase::Open(*model_dir, *format);
  if (!base.ok()) return Fail(base.status());
  if (auto expected = flags->Get("expect")) {
    if (absl::Status status = model::CheckBaseContentHash(*base, *expected, *model_dir);
        !status.ok()) {
      return Fail(status);
    }
  }
  std::printf("%s\n", JsonLine({{"sha256", model::BaseContentHash(*base)},
                                {"format", model::WeightFormatName(base->format())},
                                {"group_size", base->group_size()},
                                {"weight_bytes", base->bytes()},
                                {"model", *model_dir}})
                          .c_str());
  return 0;
}

int MergeAdapterCommand(const std::vector<std::string>& args) {
  auto flags = CommandLine::Parse(args, {"model", "adapter", "out", "dtype", "threads"}, {});
  if (!flags.ok()) return Fail(flags.status());
  absl::StatusOr<std::string> model_dir = flags->Require("model");
  if (!model_dir.ok()) return Fail(model_dir.status());
  absl::StatusOr<std::string> adapter = flags->Require("adapter");
  if (!adapter.ok()) return Fail(adapter.status());
  absl::StatusOr<std::string> out = flags->Require("out");
  if (!out.ok()) return Fail(out.status());
  absl::StatusOr<model::SaveOptions> options = SaveOptionsOf(*flags);
  if (!options.ok()) return Fail(options.status());
  if (absl::Status status = ApplyThreads(*flags); !status.ok()) return Fail(status);
  if (std::filesystem::weakly_canonical(*model_dir) == std::filesystem::weakly_canonical(*out)) {
    return Fail(absl::InvalidArgumentError("--out must not be the --model directory itself"));
  }
  // The base's own weights, exactly: an INT8 base merges as the weights it holds.
  absl::StatusOr<model::FrozenBase> base = model::FrozenBase::Open(*model_dir);
  if (!base.ok()) return Fail(base.status());
  absl::StatusOr<model::LoraAdapters> adapters = model::LoadAdaptersFor(*base, *adapter);
  if (!adapters.ok()) return Fail(adapters.status());
  model::ModelParameters merged = model::DecodeBase(*base);
  if (absl::Status status = model::MergeAdapters(*adapters, merged); !status.ok()) {
    return Fail(status);
  }
  if (absl::Status status = model::SaveModel(merged, *out, *options); !status.ok()) {
    return Fail(status);
  }
  if (absl::Status status = CopyTokenizer(*model_dir, *out); !status.ok()) return Fail(status);
  std::printf("%s\n", JsonLine({{"merged_adapters", adapters->layout().tensors().size()},
                                {"rank", adapters->config().rank},
                                {"lora_alpha", adapters->config().alpha},
                                {"base", *model_dir},
                                {"out", *out}})
                          .c_str());
  return 0;
}

}  // namespace

const char kModelUsage[] =
    R"(  model eval MODEL --data FILE [--adapter DIR] [--int8 [--int8-activations] | --bf16]
        [--seq-len N] [--batch B] [--threads T]
      Mean next-token loss of FILE's text in windows of N tokens (default 128), as one JSON
      line {"loss": nats, "tokens": predictions, "model": DIR}. --adapter runs the model with
      a PEFT LoRA adapter directory over it; --int8 or --bf16 holds the base in that format
      (an INT8 checkpoint from model quantize is held as INT8 without asking), and
      --int8-activations has an INT8 base quantize each product's input per token too, as
      generate and serve may.
      MODEL is --model DIR, or an enrolled site's (--state-dir DIR | --config FILE): its
      personal model when it has one, else its newest global model; add --personal or
      --global to choose. A personal model's experts past the global ones are the site's own.
  model init --config FILE --out DIR [--seed S] [--dtype f32|bf16|int8] [--group-size G]
      A new model from a Mixtral config.json with standard random weights. --dtype int8
      writes the same model as a frozen INT8 base (as model quantize would, with G columns per
      scale, default 128), never holding it in fp32.
  model inspect DIR [--json]
      Parameters (total, per token, by role), experts and bytes of a model directory.
  model trace MODEL --text TEXT [--adapter DIR] [--int8 [--int8-activations] | --bf16] [--json]
        [--threads T]
      For each token and layer, the experts the router chose and their weights; --adapter,
      --int8, --int8-activations and --bf16 as for eval.
  model hash --model DIR [--int8 | --bf16] [--expect SHA256] [--threads T]
      The content hash of DIR's weights as a frozen base holds them (as stored, or converted
      to INT8 or bf16): what a federation names its base by. --expect refuses (exit 1) a base
      whose hash differs. One JSON line {"sha256", "format", "group_size", "weight_bytes"}.
  model merge-adapter --model BASE --adapter DIR --out DIR [--dtype f32|bf16]
      A plain Mixtral checkpoint of BASE with the adapters folded in (W + alpha/r·B·A) and
      their routers: what the adapted model computes, for tools that load plain checkpoints.
  model quantize --model DIR (--int8 [--group-size G] | --bf16) --out DIR [--threads T]
      A frozen base for adapter training and inference: --int8 writes weight-only INT8 (one
      scale per output row and group of G input columns, default 128; 0 is one per row) in
      fedmoe's INT8 checkpoint format, --bf16 a plain bf16 checkpoint. Norms and routers stay
      fp32. Prints one JSON line {"format", "group_size", "weight_bytes", "source_bytes", "out"}.
)";

int ModelCommand(const std::vector<std::string>& args) {
  if (args.empty()) {
    return Fail(absl::InvalidArgumentError(
        "model needs eval, explain, generate, hash, init, inspect, merge-adapter, quantize or "
        "trace"));
  }
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (args[0] == "eval") return EvalCommand(rest);
  if (args[0] == "explain") return ExplainCommand(rest);
  if (args[0] == "generate") return GenerateCommand(rest);
  if (args[0] == "init") return InitCommand(rest);
  if (args[0] == "inspect") return InspectCommand(rest);
  if (args[0] == "hash") return HashCommand(rest);
  if (args[0] == "merge-adapter") return MergeAdapterCommand(rest);
  if (args[0] == "quantize") return QuantizeCommand(rest);
  if (args[0] == "trace") return TraceCommand(rest);
  return Fail(absl::InvalidArgumentError(absl::StrCat("unknown model command '", args[0], "'")));
}

}  // namespace fedmoe::client
