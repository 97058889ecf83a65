// The request bodies `fedmoe-client serve` parses (client/serve/openai_api.h), on arbitrary
// bytes: parsing never throws, and a body it accepts keeps its promises: options the engine
// takes as they are (a valid temperature and top_p, max_tokens of at least 1, at most four
// non-empty stop strings), a conversation of served roles only. The response and chunk bodies
// built from whatever text it holds (invalid UTF-8 included) are JSON that parses back.
#include <nlohmann/json.hpp>
#include <string>

#include "absl/strings/str_cat.h"
#include "client/serve/openai_api.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

using fedmoe::client::serve::CompletionCall;
using fedmoe::client::serve::Endpoint;

void CheckAccepted(const CompletionCall& call) {
  FEDMOE_FUZZ_CHECK(
      call.options.Validate().ok(),
      absl::StrCat("accepted options the engine refuses: ", call.options.Validate().ToString()));
  FEDMOE_FUZZ_CHECK(call.options.stop.size() <= 4, "more than four stop strings accepted");
  FEDMOE_FUZZ_CHECK(call.prompt.is_chat == (call.endpoint == Endpoint::kChatCompletions),
                    "a prompt of the other endpoint's kind");
  for (const fedmoe::model::ChatMessage& message : call.prompt.chat) {
    FEDMOE_FUZZ_CHECK(
        message.role == "system" || message.role == "user" || message.role == "assistant",
        absl::StrCat("accepted role ", message.role));
  }
  const std::string text = call.prompt.is_chat
                               ? (call.prompt.chat.empty() ? "" : call.prompt.chat.back().content)
                               : call.prompt.text;
  const fedmoe::client::serve::ResponseHeader header{.id = "cmpl-1", .created = 1, .model = "m"};
  for (const std::string& body :
       {fedmoe::client::serve::CompletionBody(call.endpoint, header, text, "stop", {}),
        fedmoe::client::serve::StreamChunk(call.endpoint, header, text, std::nullopt, true),
        fedmoe::client::serve::ErrorBody({.http_status = 400,
        .message = text,
        .type = "invalid_request_error",
        .param = text,
        .code = ""})}) {
    FEDMOE_FUZZ_CHECK(!nlohmann::json::parse(body, nullptr, false).is_discarded(),
                      "a response body is not JSON");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  for (const Endpoint endpoint : {Endpoint::kCompletions, Endpoint::kChatCompletions}) {
    CompletionCall call;
    if (!fedmoe::client::serve::ParseCompletionCall(body, endpoint, call).has_value()) {
      CheckAccepted(call);
    }
  }
  return 0;
}
