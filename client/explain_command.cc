#include "client/explain_command.h"

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>

#include "absl/strings/str_cat.h"
#include "client/explain_report.h"
#include "client/model_flags.h"
#include "config/command_line.h"
#include "model/adapted_model.h"
#include "model/explain.h"
#include "model/frozen_base.h"
#include "model/tokenizer.h"
#include "storage/atomic_file.h"

namespace fedmoe::client {
namespace {

using config::CommandLine;

int Fail(const absl::Status& status) { return config::ReportFailure("fedmoe-client", status); }

// The heat map data grows with layers · heads · tokens²; past this a page stops being one a
// browser opens comfortably.
constexpr int64_t kMaxExplainedTokens = 1024;

// The weights as the site would run them: the base held in the asked format (so that an INT8
// explanation is of the INT8 model), decoded to fp32, with the adapters folded in.
absl::StatusOr<model::ModelParameters> ExplainedModel(const std::string& model_dir,
                                                      const CommandLine& flags,
                                                      std::string& format_name) {
  absl::StatusOr<std::optional<model::WeightFormat>> format = HeldWeightFormat(flags);
  if (!format.ok()) return format.status();
  absl::StatusOr<model::FrozenBase> base = model::FrozenBase::Open(model_dir, *format);
  if (!base.ok()) return base.status();
  format_name = std::string(model::WeightFormatName(base->format()));
  model::ModelParameters parameters = model::DecodeBase(*base);
  if (const std::optional<std::string> adapter = flags.Get("adapter"); adapter.has_value()) {
    absl::StatusOr<model::LoraAdapters> adapters = model::LoadAdaptersFor(*base, *adapter);
    if (!adapters.ok()) return adapters.status();
    if (absl::Status status = model::MergeAdapters(*adapters, parameters); !status.ok()) {
      return status;
    }
  }
  return parameters;
}

}  // namespace

const char kExplainUsage[] =
    R"(  model explain --model DIR (--text TEXT | --text-file FILE) --out PAGE.html
        [--adapter DIR] [--int8 | --bf16] [--target TEXT] [--threads T]
      What the model does with the text, as one self-contained HTML page (no network use;
      written 0600, as it holds the text): the likely next tokens; each token's attribution
      to the prediction (gradient × input on the embeddings), coloured over the text; each
      token's routed experts and weights per layer; and an attention heat map per layer and
      head. The prediction explained is the most likely next token, or the first token of
      --target TEXT. --adapter, --int8 and --bf16 as for generate. At most 1024 tokens.
      Prints one JSON line {"out", "tokens", "target", "target_probability",
      "top_attributions"}.
)";

int ExplainCommand(const std::vector<std::string>& args) {
  auto flags = CommandLine::Parse(
      args, {"model", "adapter", "text", "text-file", "target", "out", "threads"},
      {"int8", "bf16"});
  if (!flags.ok()) return Fail(flags.status());
  absl::StatusOr<std::string> model_dir = flags->Require("model");
  if (!model_dir.ok()) return Fail(model_dir.status());
  absl::StatusOr<std::string> out = flags->Require("out");
  if (!out.ok()) return Fail(out.status());
  absl::StatusOr<std::string> text = TextFlag(*flags, "text");
  if (!text.ok()) return Fail(text.status());
  if (absl::Status status = ApplyThreads(*flags); !status.ok()) return Fail(status);

  std::string format_name;
  absl::StatusOr<model::ModelParameters> parameters =
      ExplainedModel(*model_dir, *flags, format_name);
  if (!parameters.ok()) return Fail(parameters.status());
  absl::StatusOr<std::unique_ptr<model::Tokenizer>> tokenizer =
      model::LoadTokenizer(*model_dir, parameters->config().vocab_size);
  if (!tokenizer.ok()) return Fail(tokenizer.status());
  absl::StatusOr<std::vector<int32_t>> tokens = (*tokenizer)->Encode(*text);
  if (!tokens.ok()) return Fail(tokens.status());
  if (static_cast<int64_t>(tokens->size()) > kMaxExplainedTokens) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("the text is ", tokens->size(), " tokens; model explain takes at most ",
                     kMaxExplainedTokens, " (its page holds every head's attention)")));
  }
  std::optional<int32_t> target;
  if (const std::optional<std::string> wanted = flags->Get("target"); wanted.has_value()) {
    absl::StatusOr<std::vector<int32_t>> target_tokens = (*tokenizer)->Encode(*wanted);
    if (!target_tokens.ok()) return Fail(target_tokens.status());
    if (target_tokens->empty()) {
      return Fail(absl::InvalidArgumentError("--target is empty: it needs a token to explain"));
    }
    target = target_tokens->front();
  }

  absl::StatusOr<model::Explanation> explanation = model::Explain(*parameters, *tokens, target);
  if (!explanation.ok()) return Fail(explanation.status());
  ExplainReportInput input{.explanation = &*explanation,
                           .token_labels = {},
                           .next_labels = {},
                           .target_label = {},
                           .model = *model_dir,
                           .adapter = flags->Get("adapter").value_or(""),
                           .weight_format = format_name};
  std::vector<int32_t> next_tokens;
  for (const model::NextTokenChoice& choice : explanation->top_next) {
    next_tokens.push_back(choice.token);
  }
  next_tokens.push_back(explanation->target);
  absl::StatusOr<std::vector<std::string>> labels =
      model::TokenLabels(**tokenizer, explanation->tokens);
  absl::StatusOr<std::vector<std::string>> next_labels =
      model::TokenLabels(**tokenizer, next_tokens);
  if (!labels.ok()) return Fail(labels.status());
  if (!next_labels.ok()) return Fail(next_labels.status());
  input.token_labels = *std::move(labels);
  input.target_label = next_labels->back();
  next_labels->pop_back();
  input.next_labels = *std::move(next_labels);

  if (absl::Status status = storage::WriteFileAtomically(
          *out, RenderExplainReport(input),
          std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
      !status.ok()) {
    return Fail(status);
  }
  nlohmann::json top = nlohmann::json::array();
  for (const size_t t : explanation->StrongestAttributions(5)) {
    top.push_back({{"index", t},
                   {"token", input.token_labels[t]},
                   {"attribution", explanation->attribution[t]}});
  }
  const nlohmann::json summary = {{"out", *out},
                                  {"tokens", explanation->tokens.size()},
                                  {"target", input.target_label},
                                  {"target_probability", explanation->target_probability},
                                  {"top_attributions", top}};
  std::printf("%s\n", JsonLine(summary).c_str());
  return 0;
}

}  // namespace fedmoe::client
