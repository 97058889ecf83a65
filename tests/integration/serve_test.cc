// `fedmoe-client serve` as a real process over loopback HTTP (issue [serve]): two streaming
// chats running at once produce what `model generate` produces for each alone, the API's
// refusals are specific and leave the server up, a full server answers 429 and a client that
// goes away cancels its work, the bearer token guards every route but /health, and a stream of
// malformed requests never brings it down.
//
// The HTTP client is the test's own few lines over a socket (loopback_http.h), independent of
// the server's library.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <csignal>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/integration/loopback_http.h"
#include "tests/integration/process_harness.h"
#include "tests/testing_temp_dir.h"

namespace fedmoe::testing {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

constexpr char kToken[] = "s3rve-t0ken-for-tests";

// Big enough that a long generation takes a good fraction of a second, so that a third request
// reliably finds two running; small enough to build in a moment.
constexpr char kModelConfig[] = R"({
  "model_type": "mixtral", "hidden_size": 192, "intermediate_size": 384,
  "num_hidden_layers": 4, "num_attention_heads": 6, "num_key_value_heads": 2,
  "num_local_experts": 6, "num_experts_per_tok": 2, "rms_norm_eps": 1e-5,
  "rope_theta": 10000.0, "vocab_size": 256, "max_position_embeddings": 4096,
  "hidden_act": "silu", "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2
})";

std::string Request(std::string_view method, std::string_view path, std::string_view body,
                    std::string_view token = kToken) {
  return HttpRequest(method, path, body, token);
}

HttpResponse Call(int port, const std::string& request) { return HttpCall(port, request); }

// Text as the server's JSON carries it: bytes that are not UTF-8 become U+FFFD.
std::string AsJsonText(const std::string& bytes) {
  return json::parse(json(bytes).dump(-1, ' ', false, json::error_handler_t::replace))
      .get<std::string>();
}

class ServeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    directory_ = new TempDir();
    const CommandResult init = InitModel(directory_->path(), kModelConfig, 11);
    ASSERT_EQ(init.exit_code, 0) << init.err;
    const std::filesystem::path token = directory_->path() / "token";
    WriteFile(token, std::string(kToken) + "\n");
    std::filesystem::permissions(
        token, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  }
  static void TearDownTestSuite() { delete directory_; }

  static std::string model_dir() { return (directory_->path() / "model").string(); }
  static std::string token_file() { return (directory_->path() / "token").string(); }

  // Starts `serve` with two sequences a batch and no queue, and returns its port.
  int Start(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> argv = {BinaryPath("fedmoe-client"),
                                     "serve",
                                     "--model",
                                     model_dir(),
                                     "--listen",
                                     "127.0.0.1:0",
                                     "--token-file",
                                     token_file(),
                                     "--max-batch",
                                     "2",
                                     "--max-queue",
                                     "0",
                                     "--threads",
                                     "2"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    server_ = std::make_unique<Daemon>(argv, directory_->path() / "serve.log");
    int port = 0;
    const std::regex serving(R"re("event":"serving","address":"127\.0\.0\.1:(\d+)")re");
    EXPECT_TRUE(WaitFor(
        [&] {
          std::smatch match;
          const std::string log = server_->Log();
          if (!std::regex_search(log, match, serving)) return false;
          port = std::stoi(match[1].str());
          return true;
        },
        absl::Seconds(30)))
        << server_->Log();
    return port;
  }

  std::map<std::string, double> Metrics(int port) {
    std::map<std::string, double> samples;
    std::string error;
    EXPECT_TRUE(ScrapeMetrics(absl::StrCat("127.0.0.1:", port), samples, error, kToken)) << error;
    return samples;
  }

  static TempDir* directory_;
  std::unique_ptr<Daemon> server_;
};

TempDir* ServeTest::directory_ = nullptr;

struct Streamed {
  std::string content;
  std::string finish_reason;
  json usage;
  bool first_has_role = false;
  bool ended_with_done = false;
};

Streamed StreamChat(int port, const json& request) {
  Streamed streamed;
  const HttpResponse response = Call(port, Request("POST", "/v1/chat/completions", request.dump()));
  EXPECT_EQ(response.status, 200) << response.body;
  EXPECT_THAT(response.headers, HasSubstr("Content-Type: text/event-stream"));
  const std::vector<std::string> events = ServerSentEvents(response.body);
  if (events.empty()) return streamed;
  streamed.ended_with_done = events.back() == "[DONE]";
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json chunk = json::parse(events[i]);
    EXPECT_EQ(chunk["object"], "chat.completion.chunk");
    if (chunk.contains("usage")) {
      streamed.usage = chunk["usage"];
      continue;
    }
    const json& choice = chunk["choices"][0];
    if (i == 0) streamed.first_has_role = choice["delta"].value("role", "") == "assistant";
    streamed.content += choice["delta"].value("content", "");
    if (!choice["finish_reason"].is_null()) streamed.finish_reason = choice["finish_reason"];
  }
  return streamed;
}

TEST_F(ServeTest, TwoConcurrentStreamingChatsMatchGenerateAlone) {
  const int port = Start();
  struct Chat {
    std::string prompt;
    double temperature;
    double top_p;
    int64_t seed;
  };
  const std::vector<Chat> chats = {
      {"Which invoices are overdue this month?", 0, 1, 0},
      {"Summarise the transfer log for the auditors.", 0.8, 0.9, 1234}};
  std::vector<Streamed> results(chats.size());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < chats.size(); ++i) {
    clients.emplace_back([&, i] {
      results[i] =
          StreamChat(port, {{"model", "model"},
                            {"messages", {{{"role", "user"}, {"content", chats[i].prompt}}}},
                            {"max_tokens", 48},
                            {"temperature", chats[i].temperature},
                            {"top_p", chats[i].top_p},
                            {"seed", chats[i].seed},
                            {"stream", true},
                            {"stream_options", {{"include_usage", true}}}});
    });
  }
  for (std::thread& client : clients) client.join();

  for (size_t i = 0; i < chats.size(); ++i) {
    SCOPED_TRACE(chats[i].prompt);
    const CommandResult alone = RunCommand(
        {BinaryPath("fedmoe-client"), "model", "generate", "--model", model_dir(), "--prompt",
         chats[i].prompt, "--max-tokens", "48", "--temperature", absl::StrCat(chats[i].temperature),
         "--top-p", absl::StrCat(chats[i].top_p), "--seed", absl::StrCat(chats[i].seed)});
    ASSERT_EQ(alone.exit_code, 0) << alone.err;
    ASSERT_FALSE(alone.out.empty());
    const std::string text = alone.out.substr(0, alone.out.size() - 1);  // its final newline
    const json summary = json::parse(alone.err.substr(alone.err.rfind('{')));
    EXPECT_EQ(results[i].content, AsJsonText(text));
    EXPECT_FALSE(results[i].content.empty());
    EXPECT_EQ(results[i].finish_reason, summary["finish_reason"]);
    EXPECT_EQ(results[i].usage["completion_tokens"], summary["generated_tokens"]);
    EXPECT_EQ(results[i].usage["prompt_tokens"], summary["prompt_tokens"]);
    EXPECT_TRUE(results[i].first_has_role);
    EXPECT_TRUE(results[i].ended_with_done);
  }

  // The same greedy request without streaming, on the completions endpoint.
  const HttpResponse whole = Call(
      port,
      Request("POST", "/v1/completions",
              json{{"prompt", chats[0].prompt}, {"max_tokens", 48}, {"temperature", 0}}.dump()));
  ASSERT_EQ(whole.status, 200) << whole.body;
  const json body = json::parse(whole.body);
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["choices"][0]["text"], results[0].content);
  EXPECT_THAT(body["id"].get<std::string>(), ::testing::StartsWith("cmpl-"));
  // Its prompt was the first chat's: all but its last token came from the prefix cache.
  EXPECT_EQ(body["usage"]["prompt_tokens_details"]["cached_tokens"],
            static_cast<int>(chats[0].prompt.size()) - 1);

  const HttpResponse models = Call(port, Request("GET", "/v1/models", ""));
  ASSERT_EQ(models.status, 200);
  EXPECT_EQ(json::parse(models.body)["data"][0]["id"], "model");
  const std::map<std::string, double> samples = Metrics(port);
  EXPECT_EQ(samples.at("fedmoe_serve_requests_total{outcome=\"finished\"}"), 3);
  EXPECT_GE(samples.at("fedmoe_serve_generated_tokens_total"), 3);

  server_->Signal(SIGTERM);
  EXPECT_EQ(server_->Wait(absl::Seconds(20)), 0) << server_->Log();
}

TEST_F(ServeTest, RefusalsAreSpecificAndTheServerStaysUp) {
  const int port = Start({"--max-prompt-tokens", "64", "--max-tokens-limit", "100"});
  struct Refusal {
    std::string request;
    int status;
    std::string says;
  };
  const auto post = [](const std::string& path, const std::string& body) {
    return Request("POST", path, body);
  };
  const std::vector<Refusal> refusals = {
      {post("/v1/completions", "{\"prompt\": \"a\", "), 400, "not valid JSON"},
      {post("/v1/completions", "[1, 2]"), 400, "must be a JSON object"},
      {post("/v1/completions", "{\"max_tokens\": 4}"), 400, "prompt is required"},
      {post("/v1/completions", R"({"prompt": 7})"), 400, "prompt must be a string"},
      {post("/v1/completions", json{{"prompt", std::string(65, 'x')}}.dump()), 400,
       "the prompt is 65 tokens; this server takes at most 64"},
      {post("/v1/completions", R"({"prompt": "a", "max_tokens": 101})"), 400,
       "max_tokens is 101; this server allows at most 100"},
      {post("/v1/completions", R"({"prompt": "a", "max_tokens": 0})"), 400,
       "max_tokens must be an integer of at least 1"},
      {post("/v1/completions", R"({"prompt": "a", "temperature": "hot"})"), 400,
       "temperature must be a number"},
      {post("/v1/completions", R"({"prompt": "a", "top_p": 1.5})"), 400, "top_p must be between"},
      {post("/v1/completions", R"({"prompt": "a", "n": 2})"), 400, "n must be 1"},
      {post("/v1/completions", R"({"prompt": "a", "stop": ["a","b","c","d","e"]})"), 400,
       "at most 4 strings"},
      {post("/v1/completions", R"({"prompt": "a", "stream": "yes"})"), 400,
       "stream must be true or false"},
      {post("/v1/completions", R"({"prompt": "a", "logprobs": 3})"), 400,
       "logprobs are not supported"},
      {post("/v1/completions", R"({"prompt": "a", "model": "gpt-4"})"), 404,
       "is not served here; GET /v1/models lists"},
      {post("/v1/chat/completions", R"({"messages": []})"), 400, "non-empty array"},
      {post("/v1/chat/completions", R"({"messages": [{"role": "tool", "content": "x"}]})"), 400,
       "roles are system, user and assistant"},
      {post(
           "/v1/chat/completions",
           R"({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]})"),
       400, "must end with a user message"},
      {post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": 5}]})"), 400,
       "messages[0].content must be a string"},
      {Request("GET", "/v1/completions", ""), 405, "takes POST"},
      {Request("POST", "/v1/models", ""), 405, "takes GET"},
      {Request("GET", "/v2/anything", ""), 404, "no route GET /v2/anything"},
      {post("/v1/completions", std::string(2 << 20, ' ')), 413, "at most"},
  };
  for (const Refusal& refusal : refusals) {
    SCOPED_TRACE(refusal.request.substr(0, 160));
    const HttpResponse response = Call(port, refusal.request);
    EXPECT_EQ(response.status, refusal.status) << response.body;
    EXPECT_THAT(response.body, HasSubstr(refusal.says));
    if (response.status != 413) {
      const json error = json::parse(response.body, nullptr, false);
      ASSERT_TRUE(error.is_object()) << response.body;
      EXPECT_TRUE(error["error"]["message"].is_string());
      EXPECT_TRUE(error["error"]["type"].is_string());
    }
  }
  // Nothing above reached the engine, and the server still answers.
  const HttpResponse ok = Call(
      port, Request("POST", "/v1/completions", R"({"prompt": "still here", "max_tokens": 3})"));
  EXPECT_EQ(ok.status, 200) << ok.body;
  // Without max_tokens a completion stops at OpenAI's default of 16 tokens.
  const HttpResponse unbounded =
      Call(port, Request("POST", "/v1/completions", R"({"prompt": "go", "temperature": 0})"));
  ASSERT_EQ(unbounded.status, 200) << unbounded.body;
  const json usage = json::parse(unbounded.body)["usage"];
  EXPECT_LE(usage["completion_tokens"].get<int>(), 16);
  EXPECT_TRUE(server_->running());
}

TEST_F(ServeTest, TheTokenGuardsEveryRouteButHealthAndExposureNeedsOne) {
  const int port = Start();
  for (const std::string& token : {std::string(), std::string("wrong-token")}) {
    for (const std::string& request :
         {Request("GET", "/v1/models", "", token), Request("GET", "/metrics", "", token),
          Request("POST", "/v1/completions", R"({"prompt": "a"})", token)}) {
      const HttpResponse response = Call(port, request);
      EXPECT_EQ(response.status, 401) << request;
      EXPECT_THAT(response.headers, HasSubstr("WWW-Authenticate: Bearer"));
      EXPECT_THAT(response.body, HasSubstr("bearer token is required"));
    }
  }
  const HttpResponse health = Call(port, Request("GET", "/health", "", ""));
  EXPECT_EQ(health.status, 200);
  EXPECT_EQ(json::parse(health.body)["status"], "ok");

  const CommandResult exposed = RunCommand(
      {BinaryPath("fedmoe-client"), "serve", "--model", model_dir(), "--listen", "0.0.0.0:0"});
  EXPECT_NE(exposed.exit_code, 0);
  EXPECT_THAT(exposed.err, HasSubstr("without a bearer token"));
  const std::filesystem::path readable = directory_->path() / "readable-token";
  WriteFile(readable, "abc\n");
  std::filesystem::permissions(readable, std::filesystem::perms::owner_read |
                                             std::filesystem::perms::owner_write |
                                             std::filesystem::perms::group_read);
  const CommandResult loose = RunCommand({BinaryPath("fedmoe-client"), "serve", "--model",
                                          model_dir(), "--token-file", readable.string()});
  EXPECT_NE(loose.exit_code, 0);
  EXPECT_THAT(loose.err, HasSubstr("readable by its owner only"));
}

TEST_F(ServeTest, AFullServerAnswers429AndAClientThatLeavesCancelsItsWork) {
  const int port = Start();
  const std::string long_request = Request(
      "POST", "/v1/completions",
      json{{"prompt", "go on"}, {"max_tokens", 4000}, {"temperature", 0}, {"stream", true}}.dump());
  // Two streams fill the batch of two; each has sent its first event before the third asks.
  // Greedy, since this model never picks its end-of-sequence token then: both would run for
  // seconds.
  std::vector<std::unique_ptr<Connection>> streams;
  for (int i = 0; i < 2; ++i) {
    streams.push_back(std::make_unique<Connection>(port));
    ASSERT_TRUE(streams.back()->Send(long_request, false));
    std::string received;
    ASSERT_TRUE(WaitFor(
        [&] {
          streams.back()->Read(received, absl::Milliseconds(50));
          return received.find("data: ") != std::string::npos;
        },
        absl::Seconds(30)))
        << received;
  }
  const HttpResponse busy =
      Call(port, Request("POST", "/v1/completions", R"({"prompt": "one more", "max_tokens": 2})"));
  EXPECT_EQ(busy.status, 429) << busy.body;
  EXPECT_THAT(busy.headers, HasSubstr("Retry-After: 1"));
  EXPECT_THAT(busy.body, HasSubstr("the server is busy"));

  for (auto& stream : streams) stream->Close();
  std::map<std::string, double> samples;
  EXPECT_TRUE(WaitFor(
      [&] {
        samples = Metrics(port);
        return samples["fedmoe_serve_requests_total{outcome=\"cancelled\"}"] == 2 &&
               samples["fedmoe_serve_active_sequences"] == 0;
      },
      absl::Seconds(30)));
  EXPECT_LT(samples["fedmoe_serve_generated_tokens_total"], 8000)
      << "the streams stopped when their clients left";
  EXPECT_EQ(samples["fedmoe_serve_requests_total{outcome=\"refused_busy\"}"], 1);
  EXPECT_EQ(samples["fedmoe_serve_http_responses_total{code=\"429\"}"], 1);
  const HttpResponse after =
      Call(port, Request("POST", "/v1/completions", R"({"prompt": "one more", "max_tokens": 2})"));
  EXPECT_EQ(after.status, 200) << after.body;
}

TEST_F(ServeTest, MalformedRequestsNeverBringItDown) {
  const int port = Start();
  const std::string valid = json{
      {"model", "model"},
      {"messages", {{{"role", "user"}, {"content", "hello"}}}},
      {"max_tokens", 2},
      {"stop", {"x"}},
      {"stream", true}}.dump();
  std::vector<std::string> requests = {
      "",
      "\r\n\r\n",
      "GET",
      "POST /v1/completions HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n{}",
      "POST /v1/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n{}",
      "POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
      "POST /v1/completions HTTP/9.9\r\n\r\n",
      std::string(10000, 'A'),
      Request("POST", "/v1/completions", "{\"prompt\": \"\xff\xfe\", \"max_tokens\": 2}"),
      Request("POST", "/v1/completions", R"({"prompt": "a", "max_tokens": 1e400})"),
      Request("POST", "/v1/completions", R"({"prompt": "a", "seed": 18446744073709551616})"),
      Request("POST", "/v1/completions", std::string(5000, '[') + std::string(5000, ']')),
      Request("POST", "/v1/chat/completions", R"({"messages": [{"role": {}}]})"),
      Request("POST", "/v1/chat/completions",
              R"({"messages": [{"role": "user", "content": [{"type": "image"}]}]})"),
  };
  std::mt19937 random(7);
  for (int i = 0; i < 240; ++i) {
    std::string body = valid;
    const int edits = 1 + static_cast<int>(random() % 4);
    for (int e = 0; e < edits && !body.empty(); ++e) {
      const size_t at = random() % body.size();
      switch (random() % 4) {
        case 0:
          body[at] = static_cast<char>(random() % 256);
          break;
        case 1:
          body.erase(at, 1 + random() % 8);
          break;
        case 2:
          body.insert(at, 1, "{}[]\",:0-e\\"[random() % 11]);
          break;
        default:
          body.resize(at);
      }
    }
    // Half with a Content-Length that matches, half as raw bytes after the request line.
    requests.push_back(i % 2 == 0 ? Request("POST", "/v1/chat/completions", body)
                                  : "POST /v1/chat/completions HTTP/1.1\r\n" + body);
  }
  int answered = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    Connection connection(port);
    ASSERT_TRUE(connection.connected()) << "the server is gone after request " << i;
    connection.Send(requests[i]);
    const HttpResponse response = ParseHttpResponse(connection.ReadToEnd(absl::Seconds(30)));
    if (response.status != 0) ++answered;
    EXPECT_TRUE(response.status == 0 || response.status == 200 ||
                (response.status >= 400 && response.status < 500))
        << "request " << i << " got " << response.status << ": " << response.body;
  }
  EXPECT_GT(answered, static_cast<int>(requests.size()) / 2);
  ASSERT_TRUE(server_->running()) << server_->Log();
  const HttpResponse health = Call(port, Request("GET", "/health", ""));
  EXPECT_EQ(health.status, 200);
  const HttpResponse ok =
      Call(port, Request("POST", "/v1/completions", R"({"prompt": "fine", "max_tokens": 2})"));
  EXPECT_EQ(ok.status, 200) << ok.body;
}

}  // namespace
}  // namespace fedmoe::testing
