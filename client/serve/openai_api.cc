#include "client/serve/openai_api.h"

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace fedmoe::client::serve {
namespace {

using nlohmann::json;

// OpenAI takes at most four stop strings.
constexpr size_t kMaxStopStrings = 4;
// Completions' default length when a request sets none, as OpenAI's.
constexpr int64_t kDefaultCompletionTokens = 16;

ApiError Invalid(std::string param, std::string message) {
  return ApiError{.http_status = 400,
                  .message = std::move(message),
                  .type = "invalid_request_error",
                  .param = std::move(param),
                  .code = ""};
}

// A field's value when present and not null.
const json* Field(const json& body, const char* name) {
  const auto found = body.find(name);
  if (found == body.end() || found->is_null()) return nullptr;
  return &*found;
}

std::optional<ApiError> ReadNumber(const json& body, const char* name, double least, double most,
                                   double& value) {
  const json* field = Field(body, name);
  if (field == nullptr) return std::nullopt;
  if (!field->is_number()) return Invalid(name, absl::StrCat(name, " must be a number"));
  const double number = field->get<double>();
  if (!std::isfinite(number) || number < least || number > most) {
    return Invalid(name, absl::StrCat(name, " must be between ", least, " and ", most, ", not ",
                                      field->dump()));
  }
  value = number;
  return std::nullopt;
}

std::optional<ApiError> ReadInteger(const json& body, const char* name, int64_t least,
                                    int64_t& value, bool& given) {
  const json* field = Field(body, name);
  if (field == nullptr) return std::nullopt;
  if (!field->is_number_integer()) {
    return Invalid(name, absl::StrCat(name, " must be an integer"));
  }
  const bool fits =
      field->is_number_unsigned()
          ? field->get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())
          : true;
  if (!fits || field->get<int64_t>() < least) {
    return Invalid(name, absl::StrCat(name, " must be an integer of at least ", least, ", not ",
                                      field->dump()));
  }
  value = field->get<int64_t>();
  given = true;
  return std::nullopt;
}

// A string, or (as OpenAI also takes) an array of text parts [{"type": "text", "text": …}].
std::optional<std::string> TextOf(const json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (!value.is_array()) return std::nullopt;
  std::string text;
  for (const json& part : value) {
    if (!part.is_object()) return std::nullopt;
    const json* type = Field(part, "type");
    const json* content = Field(part, "text");
    if (type == nullptr || !type->is_string() || type->get<std::string>() != "text" ||
        content == nullptr || !content->is_string()) {
      return std::nullopt;
    }
    text += content->get<std::string>();
  }
  return text;
}

std::optional<ApiError> ReadPrompt(const json& body, Endpoint endpoint, Prompt& prompt) {
  if (endpoint == Endpoint::kCompletions) {
    const json* field = Field(body, "prompt");
    if (field == nullptr) return Invalid("prompt", "prompt is required");
    // One prompt per request: a string, or an array holding one string.
    if (field->is_array() && field->size() == 1 && (*field)[0].is_string()) field = &(*field)[0];
    if (!field->is_string()) {
      return Invalid("prompt", "prompt must be a string (this server takes one prompt a request)");
    }
    prompt = Prompt::Text(field->get<std::string>());
    return std::nullopt;
  }
  const json* messages = Field(body, "messages");
  if (messages == nullptr || !messages->is_array() || messages->empty()) {
    return Invalid("messages", "messages must be a non-empty array");
  }
  std::vector<model::ChatMessage> chat;
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& message = (*messages)[i];
    const std::string param = absl::StrCat("messages[", i, "]");
    if (!message.is_object()) return Invalid(param, absl::StrCat(param, " must be an object"));
    const json* role = Field(message, "role");
    if (role == nullptr || !role->is_string()) {
      return Invalid(param + ".role", absl::StrCat(param, ".role must be a string"));
    }
    const json* content = Field(message, "content");
    std::optional<std::string> text = content == nullptr ? std::nullopt : TextOf(*content);
    if (!text.has_value()) {
      return Invalid(param + ".content",
                     absl::StrCat(param, ".content must be a string or an array of text parts"));
    }
    std::string role_name = role->get<std::string>();
    // OpenAI's newer name for the system role.
    if (role_name == "developer") role_name = "system";
    if (role_name != "system" && role_name != "user" && role_name != "assistant") {
      return Invalid(param + ".role", absl::StrCat(param, ".role \"", role->get<std::string>(),
                                                   "\" is not served; roles are system, user "
                                                   "and assistant"));
    }
    chat.push_back({.role = std::move(role_name), .content = *std::move(text)});
  }
  prompt = Prompt::Chat(std::move(chat));
  return std::nullopt;
}

std::optional<ApiError> RefuseUnsupported(const json& body) {
  int64_t n = 1;
  bool given = false;
  if (std::optional<ApiError> error = ReadInteger(body, "n", 1, n, given)) return error;
  if (n != 1) return Invalid("n", "n must be 1: this server generates one choice a request");
  if (const json* echo = Field(body, "echo"); echo != nullptr && *echo != false) {
    return Invalid("echo", "echo is not supported");
  }
  if (const json* logprobs = Field(body, "logprobs"); logprobs != nullptr && *logprobs != false) {
    return Invalid("logprobs", "logprobs are not supported");
  }
  for (const char* penalty : {"presence_penalty", "frequency_penalty"}) {
    if (const json* field = Field(body, penalty);
        field != nullptr && !(field->is_number() && field->get<double>() == 0)) {
      return Invalid(penalty, absl::StrCat(penalty, " is not supported (only 0)"));
    }
  }
  for (const char* absent : {"tools", "functions", "logit_bias", "suffix", "best_of"}) {
    if (const json* field = Field(body, absent);
        field != nullptr && !(field->is_array() && field->empty()) &&
        !(field->is_object() && field->empty()) &&
        !(std::string_view(absent) == "best_of" && *field == 1)) {
      return Invalid(absent, absl::StrCat(absent, " is not supported"));
    }
  }
  return std::nullopt;
}

json Header(Endpoint endpoint, const ResponseHeader& header, bool chunk) {
  const char* object = endpoint == Endpoint::kCompletions
                           ? "text_completion"
                           : (chunk ? "chat.completion.chunk" : "chat.completion");
  return {{"id", header.id},
          {"object", object},
          {"created", header.created},
          {"model", header.model},
          {"system_fingerprint", nullptr}};
}

json UsageJson(const Usage& usage) {
  return {{"prompt_tokens", usage.prompt_tokens},
          {"completion_tokens", usage.completion_tokens},
          {"total_tokens", usage.prompt_tokens + usage.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", usage.cached_tokens}}}};
}

}  // namespace

std::optional<ApiError> ParseCompletionCall(std::string_view body, Endpoint endpoint,
                                            CompletionCall& call) {
  const json parsed = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) return Invalid("", "the request body is not valid JSON");
  if (!parsed.is_object()) return Invalid("", "the request body must be a JSON object");
  call = CompletionCall{};
  call.endpoint = endpoint;
  if (const json* model = Field(parsed, "model")) {
    if (!model->is_string()) return Invalid("model", "model must be a string");
    call.model = model->get<std::string>();
  }
  if (std::optional<ApiError> error = ReadPrompt(parsed, endpoint, call.prompt)) return error;
  if (std::optional<ApiError> error = RefuseUnsupported(parsed)) return error;

  // Chat's default is what the context leaves (the engine cuts it to that).
  call.options.max_tokens = endpoint == Endpoint::kCompletions
                                ? kDefaultCompletionTokens
                                : std::numeric_limits<int64_t>::max();
  for (const char* name : {"max_tokens", "max_completion_tokens"}) {
    if (std::optional<ApiError> error =
            ReadInteger(parsed, name, 1, call.options.max_tokens, call.max_tokens_given)) {
      return error;
    }
  }
  // OpenAI's defaults; its temperature goes up to 2.
  call.options.sampling = {.temperature = 1, .top_p = 1};
  if (std::optional<ApiError> error =
          ReadNumber(parsed, "temperature", 0, 2, call.options.sampling.temperature)) {
    return error;
  }
  if (std::optional<ApiError> error =
          ReadNumber(parsed, "top_p", 0, 1, call.options.sampling.top_p)) {
    return error;
  }
  if (call.options.sampling.top_p == 0) {
    return Invalid("top_p", "top_p must be above 0");
  }
  int64_t seed = 0;
  bool seed_given = false;
  if (const json* field = Field(parsed, "seed"); field != nullptr && field->is_number_integer() &&
                                                 !field->is_number_unsigned() &&
                                                 field->get<int64_t>() < 0) {
    // OpenAI's clients send any 64-bit integer; a negative one is as good a seed.
    seed = field->get<int64_t>();
    seed_given = true;
  } else if (std::optional<ApiError> error = ReadInteger(parsed, "seed", 0, seed, seed_given)) {
    return error;
  }
  // Not a secret: only which of the likely continuations a request takes.
  call.options.seed = seed_given
                          ? static_cast<uint64_t>(seed)
                          : (uint64_t{std::random_device()()} << 32) | std::random_device()();
  if (const json* stop = Field(parsed, "stop")) {
    std::vector<std::string> strings;
    if (stop->is_string()) {
      strings.push_back(stop->get<std::string>());
    } else if (stop->is_array() && stop->size() <= kMaxStopStrings) {
      for (const json& item : *stop) {
        if (!item.is_string()) return Invalid("stop", "stop must hold strings");
        strings.push_back(item.get<std::string>());
      }
    } else {
      return Invalid("stop", "stop must be a string or an array of at most 4 strings");
    }
    for (const std::string& text : strings) {
      if (text.empty()) return Invalid("stop", "a stop string is empty");
    }
    call.options.stop = std::move(strings);
  }
  if (const json* stream = Field(parsed, "stream")) {
    if (!stream->is_boolean()) return Invalid("stream", "stream must be true or false");
    call.stream = stream->get<bool>();
  }
  if (const json* stream_options = Field(parsed, "stream_options")) {
    const json* include =
        stream_options->is_object() ? Field(*stream_options, "include_usage") : nullptr;
    if (!stream_options->is_object() || (include != nullptr && !include->is_boolean())) {
      return Invalid("stream_options", "stream_options must be {\"include_usage\": true|false}");
    }
    call.include_usage = include != nullptr && include->get<bool>();
  }
  return std::nullopt;
}

std::string CompletionBody(Endpoint endpoint, const ResponseHeader& header, std::string_view text,
                           std::string_view finish_reason, const Usage& usage) {
  json body = Header(endpoint, header, false);
  json choice = {{"index", 0}, {"finish_reason", finish_reason}, {"logprobs", nullptr}};
  if (endpoint == Endpoint::kCompletions) {
    choice["text"] = text;
  } else {
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  }
  body["choices"] = json::array({std::move(choice)});
  body["usage"] = UsageJson(usage);
  // Replaced, not thrown on: a piece of a character cut off by max_tokens.
  return body.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string StreamChunk(Endpoint endpoint, const ResponseHeader& header, std::string_view text,
                        std::optional<std::string_view> finish_reason, bool first) {
  json body = Header(endpoint, header, true);
  json choice = {{"index", 0}, {"logprobs", nullptr}};
  choice["finish_reason"] = finish_reason.has_value() ? json(*finish_reason) : json(nullptr);
  if (endpoint == Endpoint::kCompletions) {
    choice["text"] = text;
  } else {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || !finish_reason.has_value()) delta["content"] = text;
    choice["delta"] = std::move(delta);
  }
  body["choices"] = json::array({std::move(choice)});
  return body.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string UsageChunk(Endpoint endpoint, const ResponseHeader& header, const Usage& usage) {
  json body = Header(endpoint, header, true);
  body["choices"] = json::array();
  body["usage"] = UsageJson(usage);
  return body.dump();
}

std::string ErrorBody(const ApiError& error) {
  const json body = {{"error",
                      {{"message", error.message},
                       {"type", error.type},
                       {"param", error.param.empty() ? json(nullptr) : json(error.param)},
                       {"code", error.code.empty() ? json(nullptr) : json(error.code)}}}};
  return body.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string ModelsBody(std::string_view model, int64_t created) {
  const json body = {
      {"object", "list"},
      {"data",
       json::array(
           {{{"id", model}, {"object", "model"}, {"created", created}, {"owned_by", "fedmoe"}}})}};
  return body.dump();
}

}  // namespace fedmoe::client::serve
