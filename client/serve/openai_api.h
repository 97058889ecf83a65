// The JSON of the OpenAI-compatible API that `serve` speaks (issue [serve]): requests to
// /v1/completions and /v1/chat/completions parsed into what the engine takes, and the response
// bodies, stream chunks and errors in the shapes OpenAI's clients (and llama.cpp's and vLLM's
// users) expect.
//
// Parsing never throws and refuses with the parameter at fault: a field of the wrong type, a
// value out of range, or an option this server does not implement (n > 1, echo, logprobs,
// penalties, tools) rather than silently ignoring it. Fields it has no use for (user, …) are
// ignored as OpenAI's own server does.
#ifndef FEDMOE_CLIENT_SERVE_OPENAI_API_H_
#define FEDMOE_CLIENT_SERVE_OPENAI_API_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "client/serve/engine.h"
#include "model/generation.h"

namespace fedmoe::client::serve {

enum class Endpoint { kCompletions, kChatCompletions };

struct CompletionCall {
  Endpoint endpoint = Endpoint::kCompletions;
  Prompt prompt;
  model::GenerationOptions options;
  // Whether the request set max_tokens (max_completion_tokens for chat).
  bool max_tokens_given = false;
  bool stream = false;
  // stream_options.include_usage: a last chunk with the token counts.
  bool include_usage = false;
  // The model the request names; empty when it names none.
  std::string model;
};

// A refused request: the HTTP status and OpenAI's error fields.
struct ApiError {
  int http_status = 400;
  std::string message;
  // "invalid_request_error", "authentication_error", "rate_limit_error", "server_error", ...
  std::string type = "invalid_request_error";
  std::string param;
  std::string code;
};

// Parses a request body. Defaults as OpenAI's: temperature 1, top_p 1, max_tokens 16 for
// completions and what the context leaves for chat; the seed, when absent, is drawn.
// An ApiError (400) naming the parameter at fault.
std::optional<ApiError> ParseCompletionCall(std::string_view body, Endpoint endpoint,
                                            CompletionCall& call);

// The identity of one response: "cmpl-…" or "chatcmpl-…", its creation time and the model.
struct ResponseHeader {
  std::string id;
  int64_t created = 0;
  std::string model;
};

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cached_tokens = 0;
};

// The whole response of a call that did not stream.
std::string CompletionBody(Endpoint endpoint, const ResponseHeader& header, std::string_view text,
                           std::string_view finish_reason, const Usage& usage);
// One server-sent event's data for a streamed call: `text` so far unsent, and the finish reason
// on the last chunk. Chat's first chunk carries the assistant's role.
std::string StreamChunk(Endpoint endpoint, const ResponseHeader& header, std::string_view text,
                        std::optional<std::string_view> finish_reason, bool first);
// The chunk with the token counts and no choices (stream_options.include_usage).
std::string UsageChunk(Endpoint endpoint, const ResponseHeader& header, const Usage& usage);
std::string ErrorBody(const ApiError& error);
// GET /v1/models.
std::string ModelsBody(std::string_view model, int64_t created);

}  // namespace fedmoe::client::serve

#endif  // FEDMOE_CLIENT_SERVE_OPENAI_API_H_
