#include "model/config.h"

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "storage/read_file.h"

namespace fedmoe::model {
namespace {

using Json = nlohmann::json;

// Generous bounds that keep every size product below 2^62, so later arithmetic cannot overflow.
constexpr int64_t kMaxWidth = int64_t{1} << 20;
constexpr int64_t kMaxCount = int64_t{1} << 14;
constexpr int64_t kMaxVocab = int64_t{1} << 24;

std::string Quoted(std::string_view key) { return absl::StrCat("\"", std::string(key), "\""); }

class ConfigFields {
 public:
  explicit ConfigFields(const Json& object) : object_(object) {}

  absl::Status RequiredInt(std::string_view key, int64_t min, int64_t max, int64_t& out) const {
    if (!object_.contains(key)) {
      return absl::InvalidArgumentError(absl::StrCat("missing required key ", Quoted(key)));
    }
    return Int(key, min, max, out);
  }

  // A missing key or a null keeps `out` as it is (its default).
  absl::Status OptionalInt(std::string_view key, int64_t min, int64_t max, int64_t& out) const {
    if (!object_.contains(key) || object_.at(key).is_null()) return absl::OkStatus();
    return Int(key, min, max, out);
  }

  absl::Status OptionalPositiveDouble(std::string_view key, double& out) const {
    return OptionalDouble(key, /*zero_allowed=*/false, out);
  }

  absl::Status OptionalNonNegativeDouble(std::string_view key, double& out) const {
    return OptionalDouble(key, /*zero_allowed=*/true, out);
  }

  absl::Status OptionalBool(std::string_view key, bool& out) const {
    if (!object_.contains(key) || object_.at(key).is_null()) return absl::OkStatus();
    const Json& value = object_.at(key);
    if (!value.is_boolean()) {
      return absl::InvalidArgumentError(
          absl::StrCat(Quoted(key), " must be true or false, got ", value.dump()));
    }
    out = value.get<bool>();
    return absl::OkStatus();
  }

 private:
  absl::Status OptionalDouble(std::string_view key, bool zero_allowed, double& out) const {
    if (!object_.contains(key) || object_.at(key).is_null()) return absl::OkStatus();
    const Json& value = object_.at(key);
    const bool in_range = value.is_number() && std::isfinite(value.get<double>()) &&
                          (zero_allowed ? value.get<double>() >= 0 : value.get<double>() > 0);
    if (!in_range) {
      return absl::InvalidArgumentError(absl::StrCat(Quoted(key),
                                                     zero_allowed
                                                         ? " must be a non-negative number, got "
                                                         : " must be a positive number, got ",
                                                     value.dump()));
    }
    out = value.get<double>();
    return absl::OkStatus();
  }

  absl::Status Int(std::string_view key, int64_t min, int64_t max, int64_t& out) const {
    const Json& value = object_.at(key);
    if (!value.is_number_integer()) {
      return absl::InvalidArgumentError(
          absl::StrCat(Quoted(key), " must be an integer, got ", value.dump()));
    }
    // Unsigned values above int64's range would wrap in get<int64_t>().
    if (value.is_number_unsigned() &&
        value.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return absl::InvalidArgumentError(
          absl::StrCat(Quoted(key), " is ", value.dump(), ", more than the maximum ", max));
    }
    const auto number = value.get<int64_t>();
    if (number < min || number > max) {
      return absl::InvalidArgumentError(absl::StrCat(
          Quoted(key), " is ", number, ", outside the allowed range [", min, ", ", max, "]"));
    }
    out = number;
    return absl::OkStatus();
  }

  const Json& object_;
};

absl::Status Inconsistent(const std::string& message) {
  return absl::InvalidArgumentError(message);
}

absl::Status CheckConsistency(const MoeConfig& config, bool head_dim_given) {
  if (!head_dim_given && config.hidden_size % config.num_attention_heads != 0) {
    return Inconsistent(absl::StrCat("\"num_attention_heads\" (", config.num_attention_heads,
                                     ") does not divide \"hidden_size\" (", config.hidden_size,
                                     ")"));
  }
  if (config.num_attention_heads % config.num_key_value_heads != 0) {
    return Inconsistent(absl::StrCat("\"num_key_value_heads\" (", config.num_key_value_heads,
                                     ") does not divide \"num_attention_heads\" (",
                                     config.num_attention_heads, ")"));
  }
  if (config.head_dim % 2 != 0) {
    return Inconsistent(absl::StrCat("the head dimension (", config.head_dim,
                                     ") must be even for rotate-half RoPE"));
  }
  if (config.num_experts_per_tok > config.num_local_experts) {
    return Inconsistent(absl::StrCat("\"num_experts_per_tok\" (", config.num_experts_per_tok,
                                     ") is more than \"num_local_experts\" (",
                                     config.num_local_experts, ")"));
  }
  if (config.n_shared_experts > 0 && config.shared_expert_intermediate_size <= 0) {
    return Inconsistent("\"n_shared_experts\" is set but \"shared_expert_intermediate_size\" is 0");
  }
  if (config.bos_token_id >= config.vocab_size) {
    return Inconsistent(absl::StrCat("\"bos_token_id\" (", config.bos_token_id,
                                     ") is not below \"vocab_size\" (", config.vocab_size, ")"));
  }
  if (config.eos_token_id >= config.vocab_size) {
    return Inconsistent(absl::StrCat("\"eos_token_id\" (", config.eos_token_id,
                                     ") is not below \"vocab_size\" (", config.vocab_size, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<MoeConfig> ParseMoeConfig(std::string_view json_text) {
  const Json object = Json::parse(json_text.begin(), json_text.end(), nullptr,
                                  /*allow_exceptions=*/false);
  if (object.is_discarded()) return absl::InvalidArgumentError("config is not valid JSON");
  if (!object.is_object()) return absl::InvalidArgumentError("config is not a JSON object");

  if (object.contains("model_type") &&
      (!object.at("model_type").is_string() || object.at("model_type") != "mixtral")) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"model_type\" is ", object.at("model_type").dump(),
                     "; fedmoe computes the Mixtral architecture (\"mixtral\")"));
  }
  if (object.contains("hidden_act") &&
      (!object.at("hidden_act").is_string() || object.at("hidden_act") != "silu")) {
    return absl::InvalidArgumentError(absl::StrCat("\"hidden_act\" is ",
                                                   object.at("hidden_act").dump(),
                                                   "; Mixtral's experts use \"silu\" (SwiGLU)"));
  }
  if (object.contains("rope_scaling") && !object.at("rope_scaling").is_null()) {
    return absl::InvalidArgumentError(
        "\"rope_scaling\" is set, and fedmoe implements only plain RoPE");
  }

  MoeConfig config;
  const ConfigFields fields(object);
  absl::Status status;
  auto check = [&status](absl::Status next) {
    if (status.ok()) status = std::move(next);
  };
  check(fields.RequiredInt("vocab_size", 1, kMaxVocab, config.vocab_size));
  check(fields.RequiredInt("hidden_size", 1, kMaxWidth, config.hidden_size));
  check(fields.RequiredInt("intermediate_size", 1, kMaxWidth, config.intermediate_size));
  check(fields.RequiredInt("num_hidden_layers", 1, kMaxCount, config.num_hidden_layers));
  check(fields.RequiredInt("num_attention_heads", 1, kMaxCount, config.num_attention_heads));
  check(fields.RequiredInt("num_local_experts", 1, kMaxCount, config.num_local_experts));
  check(fields.RequiredInt("num_experts_per_tok", 1, kMaxCount, config.num_experts_per_tok));
  if (!status.ok()) return status;
  config.num_key_value_heads = config.num_attention_heads;
  check(fields.OptionalInt("num_key_value_heads", 1, kMaxCount, config.num_key_value_heads));
  const bool head_dim_given = object.contains("head_dim") && !object.at("head_dim").is_null();
  config.head_dim = config.hidden_size / config.num_attention_heads;
  check(fields.OptionalInt("head_dim", 1, kMaxWidth, config.head_dim));
  check(fields.OptionalInt("n_shared_experts", 0, kMaxCount, config.n_shared_experts));
  config.shared_expert_intermediate_size =
      config.n_shared_experts > 0 ? config.intermediate_size : 0;
  check(fields.OptionalInt("shared_expert_intermediate_size", 0, kMaxWidth,
                           config.shared_expert_intermediate_size));
  check(fields.OptionalPositiveDouble("rms_norm_eps", config.rms_norm_eps));
  check(fields.OptionalPositiveDouble("rope_theta", config.rope_theta));
  check(fields.OptionalInt("max_position_embeddings", 1, int64_t{1} << 24,
                           config.max_position_embeddings));
  check(fields.OptionalInt("sliding_window", 1, int64_t{1} << 24, config.sliding_window));
  check(fields.OptionalBool("tie_word_embeddings", config.tie_word_embeddings));
  check(fields.OptionalPositiveDouble("initializer_range", config.initializer_range));
  check(fields.OptionalNonNegativeDouble("router_aux_loss_coef", config.router_aux_loss_coef));
  check(fields.OptionalInt("bos_token_id", 0, kMaxVocab, config.bos_token_id));
  check(fields.OptionalInt("eos_token_id", 0, kMaxVocab, config.eos_token_id));
  if (!status.ok()) return status;
  if (absl::Status consistent = CheckConsistency(config, head_dim_given); !consistent.ok()) {
    return consistent;
  }
  return config;
}

absl::StatusOr<MoeConfig> LoadMoeConfig(const std::filesystem::path& path) {
  absl::StatusOr<std::string> text = storage::ReadSmallFile(path, uint64_t{1} << 20);
  if (!text.ok()) return text.status();
  absl::StatusOr<MoeConfig> config = ParseMoeConfig(*text);
  if (!config.ok()) {
    return absl::Status(config.status().code(),
                        absl::StrCat(path.string(), ": ", std::string(config.status().message())));
  }
  return config;
}

std::string MoeConfig::ToJson() const {
  nlohmann::ordered_json json;
  json["architectures"] = {"MixtralForCausalLM"};
  json["model_type"] = "mixtral";
  json["vocab_size"] = vocab_size;
  json["hidden_size"] = hidden_size;
  json["intermediate_size"] = intermediate_size;
  json["num_hidden_layers"] = num_hidden_layers;
  json["num_attention_heads"] = num_attention_heads;
  json["num_key_value_heads"] = num_key_value_heads;
  json["head_dim"] = head_dim;
  json["num_local_experts"] = num_local_experts;
  json["num_experts_per_tok"] = num_experts_per_tok;
  if (n_shared_experts > 0) {
    json["n_shared_experts"] = n_shared_experts;
    json["shared_expert_intermediate_size"] = shared_expert_intermediate_size;
  }
  json["rms_norm_eps"] = rms_norm_eps;
  json["rope_theta"] = rope_theta;
  json["max_position_embeddings"] = max_position_embeddings;
  json["sliding_window"] = sliding_window > 0 ? Json(sliding_window) : Json(nullptr);
  json["tie_word_embeddings"] = tie_word_embeddings;
  json["initializer_range"] = initializer_range;
  json["router_aux_loss_coef"] = router_aux_loss_coef;
  json["hidden_act"] = "silu";
  json["bos_token_id"] = bos_token_id >= 0 ? Json(bos_token_id) : Json(nullptr);
  json["eos_token_id"] = eos_token_id >= 0 ? Json(eos_token_id) : Json(nullptr);
  json["torch_dtype"] = "float32";
  return json.dump(2) + "\n";
}

}  // namespace fedmoe::model
