// `fedmoe-client serve` driven over loopback HTTP (issue [serve]), one JSON line per result:
//   - the machine's copy bandwidth, STREAM's way (the bound batch-1 decoding is held to);
//   - per format (fp32, bf16, INT8, and "w8a8": INT8 with int8 activations, serve's --int8
//     --int8-activations): batch-1 decode tokens/s, the weight bytes a token reads, and the
//     fraction of the bandwidth bound (bandwidth ÷ bytes per token) reached;
//   - for INT8 and w8a8: aggregate tokens/s with 1, 4 and 16 concurrent streaming clients, with
//     p50 and p99 time to first token;
//   - for INT8 and w8a8: time to first token on a 512-token prefix the prefix cache holds,
//     against the same prompt length unseen.
// The model is random weights (model init's, seed 5) in the shape of train_step's `small` or
// `medium` (4.7B parameters), written straight in each format (model::InitializeBase), so that
// no format needs the model in fp32 on the way. A format whose weights would take more than 60%
// of this machine's memory is reported as skipped, with its size, rather than measured from swap.
//
// --device cuda runs the server's decoding on the GPU (its lines say "device"); the bandwidth
// bound is then not reported, since the copy measured is the host's.
//
//   build/bin/serve [--config small|medium] [--tokens N] [--threads T] [--device cpu|cuda]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/train_step_shapes.h"
#include "model/frozen_base.h"
#include "model/init.h"
#include "tests/integration/loopback_http.h"
#include "tests/integration/process_harness.h"
#include "tests/testing_temp_dir.h"

namespace fedmoe::bench {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

// Copy bandwidth as STREAM counts it (bytes read plus bytes written, per second) by memcpy over
// buffers far larger than the caches, best of five. Decoding reads the weights and writes
// little, so this, not the bytes copied alone, is the bound it can approach.
double CopyBandwidth() {
  const size_t size = size_t{512} << 20;
  std::vector<char> from(size, 1), to(size, 0);
  double best = 0;
  for (int i = 0; i < 5; ++i) {
    const Clock::time_point start = Clock::now();
    std::memcpy(to.data(), from.data(), size);
    // The copy's destination escapes, so the compiler cannot drop the copy as unused.
    asm volatile("" : : "r"(to.data()) : "memory");
    best = std::max(best, 2 * static_cast<double>(size) / Seconds(start, Clock::now()));
  }
  return best;
}

// The weight bytes one decoded token reads: every attention projection, the router, its top-k
// and shared experts' three matrices, and the output head.
double ActiveWeightBytes(const model::MoeConfig& config, std::string_view format) {
  const auto h = static_cast<double>(config.hidden_size);
  const double matrices =
      static_cast<double>(config.num_hidden_layers) *
          (2 * h * static_cast<double>(config.query_width()) +
           2 * h * static_cast<double>(config.key_value_width()) +
           3 * h *
               static_cast<double>(config.num_experts_per_tok * config.intermediate_size +
                                   config.shared_inner_size())) +
      h * static_cast<double>(config.vocab_size);
  const double routers = static_cast<double>(config.num_hidden_layers) * h *
                         static_cast<double>(config.num_local_experts) * 4;
  // INT8 carries an fp32 scale per 128 values.
  const double per_value = format == "fp32" ? 4 : format == "bf16" ? 2 : 1 + 4.0 / 128;
  return matrices * per_value + routers;
}

struct Timed {
  int64_t tokens = 0;
  double first_token_seconds = 0;
  double decode_seconds = 0;  // from the first token to the end
  Clock::time_point start, end;
};

// One streaming completion, timed from the request to the first text and to the end.
Timed Stream(int port, const std::string& prompt, int64_t max_tokens) {
  Timed timed;
  const std::string body = json{{"prompt", prompt},
                                {"max_tokens", max_tokens},
                                {"temperature", 0},
                                {"stream", true},
                                {"stream_options", {{"include_usage", true}}}}
                               .dump();
  testing::Connection connection(port);
  timed.start = Clock::now();
  if (!connection.Send(testing::HttpRequest("POST", "/v1/completions", body, ""))) return timed;
  std::string raw;
  Clock::time_point first;
  bool seen = false;
  while (connection.Read(raw, absl::Seconds(120))) {
    if (!seen && raw.find("\"text\":\"") != std::string::npos) {
      first = Clock::now();
      seen = true;
    }
  }
  timed.end = Clock::now();
  const testing::HttpResponse response = testing::ParseHttpResponse(raw);
  for (const std::string& event : testing::ServerSentEvents(response.body)) {
    const json chunk = json::parse(event, nullptr, false);
    if (chunk.is_object() && chunk.contains("usage")) {
      timed.tokens = chunk["usage"]["completion_tokens"];
    }
  }
  if (!seen) first = timed.end;
  timed.first_token_seconds = Seconds(timed.start, first);
  timed.decode_seconds = Seconds(first, timed.end);
  return timed;
}

// Printable text of `length` bytes (one token each under the byte tokenizer), from `seed`.
std::string Text(size_t length, uint32_t seed) {
  std::mt19937 random(seed);
  std::string text(length, ' ');
  for (char& c : text) c = static_cast<char>('a' + random() % 26);
  return text;
}

double Percentile(std::vector<double> values, double fraction) {
  std::sort(values.begin(), values.end());
  const auto index = static_cast<size_t>(fraction * static_cast<double>(values.size() - 1) + 0.5);
  return values[std::min(index, values.size() - 1)];
}

class Server {
 public:
  Server(const std::string& model, std::string_view format, int threads, const std::string& device,
         const std::filesystem::path& log) {
    std::vector<std::string> argv = {testing::BinaryPath("fedmoe-client"),
                                     "serve",
                                     "--model",
                                     model,
                                     "--listen",
                                     "127.0.0.1:0",
                                     "--max-batch",
                                     "16",
                                     "--threads",
                                     std::to_string(threads),
                                     "--device",
                                     device};
    if (format == "w8a8") {
      argv.insert(argv.end(), {"--int8", "--int8-activations"});
    } else if (format != "fp32") {
      argv.push_back(absl::StrCat("--", std::string(format)));
    }
    daemon_ = std::make_unique<testing::Daemon>(argv, log);
    const std::regex serving(R"re("event":"serving","address":"127\.0\.0\.1:(\d+)")re");
    testing::WaitFor(
        [&] {
          std::smatch match;
          const std::string text = daemon_->Log();
          if (!std::regex_search(text, match, serving)) return !daemon_->running();
          port_ = std::stoi(match[1].str());
          return true;
        },
        absl::Minutes(5));
  }
  int port() const { return port_; }

 private:
  std::unique_ptr<testing::Daemon> daemon_;
  int port_ = 0;
};

void Print(const json& line) { std::printf("%s\n", line.dump().c_str()); }

double PhysicalMemoryBytes() {
  return static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGESIZE));
}

void RunConfig(const Shape& shape, int64_t tokens, int threads, const std::string& device,
               double bandwidth) {
  const bool on_cpu = device == "cpu";
  const model::MoeConfig config = ConfigOf(shape);
  const testing::TempDir directory;
  const std::string prompt = Text(32, 1);
  double fp32_rate = 0, bf16_rate = 0, int8_rate = 0;
  for (const std::string format : {"fp32", "bf16", "int8", "w8a8"}) {
    // w8a8 serves the INT8 checkpoint, its inputs quantized as it runs.
    const std::string stored = format == "w8a8" ? "int8" : format;
    const model::WeightFormat weight_format = *model::ParseWeightFormat(stored);
    const double parameters = static_cast<double>(model::ModelLayout(config).total_size());
    const double held_bytes = parameters * (stored == "fp32" ? 4 : stored == "bf16" ? 2 : 1);
    if (held_bytes > 0.6 * PhysicalMemoryBytes()) {
      Print(
          {{"benchmark", "serve_decode_batch1"},
           {"config", shape.name},
           {"format", format},
           {"skipped", absl::StrCat("its weights take ", held_bytes / 1e9, " GB of this machine's ",
                                    PhysicalMemoryBytes() / 1e9, " GB")}});
      continue;
    }
    const std::filesystem::path model_dir = directory.path() / stored;
    if (format != "w8a8") {
      absl::StatusOr<model::FrozenBase> base = model::InitializeBase(config, weight_format, 128, 5);
      const absl::Status saved =
          base.ok() ? model::SaveFrozenBase(*base, model_dir) : base.status();
      if (!saved.ok()) {
        Print({{"benchmark", "serve"}, {"config", shape.name}, {"error", saved.ToString()}});
        return;
      }
    }
    Server server(model_dir.string(), format, threads, device,
                  directory.path() / (format + ".log"));
    if (server.port() == 0) {
      Print({{"benchmark", "serve"},
             {"config", shape.name},
             {"format", format},
             {"error", "the server did not start"}});
      continue;
    }
    Stream(server.port(), prompt, 8);  // warms the page cache and the allocator
    std::vector<double> rates;
    for (int i = 0; i < 3; ++i) {
      const Timed timed = Stream(server.port(), Text(32, 10 + i), tokens);
      rates.push_back(static_cast<double>(timed.tokens - 1) / timed.decode_seconds);
    }
    const double rate = Percentile(rates, 0.5);
    if (format == "fp32") fp32_rate = rate;
    if (format == "bf16") bf16_rate = rate;
    if (format == "int8") int8_rate = rate;
    const double bytes = ActiveWeightBytes(config, stored);
    Print(
        {{"benchmark", "serve_decode_batch1"},
         {"config", shape.name},
         {"format", format},
         {"device", device},
         {"decode_tokens_per_second", rate},
         {"vs_fp32", fp32_rate > 0 ? json(rate / fp32_rate) : json(nullptr)},
         {"vs_bf16", bf16_rate > 0 ? json(rate / bf16_rate) : json(nullptr)},
         {"vs_int8", int8_rate > 0 ? json(rate / int8_rate) : json(nullptr)},
         {"active_weight_bytes_per_token", bytes},
         {"bandwidth_bound_tokens_per_second", on_cpu ? json(bandwidth / bytes) : json(nullptr)},
         {"fraction_of_bandwidth_bound", on_cpu ? json(rate * bytes / bandwidth) : json(nullptr)}});
    if (stored != "int8") continue;

    for (const int clients : {1, 4, 16}) {
      std::vector<Timed> runs(static_cast<size_t>(clients));
      std::vector<std::thread> threads_of_clients;
      for (int c = 0; c < clients; ++c) {
        threads_of_clients.emplace_back([&, c] {
          runs[static_cast<size_t>(c)] =
              Stream(server.port(), Text(32, 100 + static_cast<uint32_t>(c)), tokens);
        });
      }
      for (std::thread& thread : threads_of_clients) thread.join();
      int64_t total = 0;
      Clock::time_point start = runs[0].start, end = runs[0].end;
      std::vector<double> first_tokens;
      for (const Timed& run : runs) {
        total += run.tokens;
        start = std::min(start, run.start);
        end = std::max(end, run.end);
        first_tokens.push_back(run.first_token_seconds);
      }
      Print({{"benchmark", "serve_concurrent_streams"},
             {"config", shape.name},
             {"format", format},
             {"device", device},
             {"clients", clients},
             {"tokens_per_stream", tokens},
             {"aggregate_tokens_per_second", static_cast<double>(total) / Seconds(start, end)},
             {"time_to_first_token_p50_seconds", Percentile(first_tokens, 0.5)},
             {"time_to_first_token_p99_seconds", Percentile(first_tokens, 0.99)}});
    }

    // The same 528-token prompt length, unseen and then with its 512-token prefix cached.
    std::vector<double> unseen, cached;
    for (uint32_t i = 0; i < 5; ++i) {
      const std::string prefix = Text(512, 1000 + i);
      unseen.push_back(Stream(server.port(), prefix + Text(16, 2000 + i), 1).first_token_seconds);
      cached.push_back(Stream(server.port(), prefix + Text(16, 3000 + i), 1).first_token_seconds);
    }
    Print({{"benchmark", "serve_prefix_cache"},
           {"config", shape.name},
           {"format", format},
           {"device", device},
           {"shared_prefix_tokens", 512},
           {"time_to_first_token_unseen_seconds", Percentile(unseen, 0.5)},
           {"time_to_first_token_cached_seconds", Percentile(cached, 0.5)},
           {"speedup", Percentile(unseen, 0.5) / Percentile(cached, 0.5)}});
  }
}

}  // namespace
}  // namespace fedmoe::bench

int main(int argc, char** argv) {
  std::string config = "small";
  int64_t tokens = 64;
  int threads = static_cast<int>(std::thread::hardware_concurrency());
  std::string device = "cpu";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--config" && i + 1 < argc) {
      config = argv[++i];
    } else if (arg == "--tokens" && i + 1 < argc) {
      tokens = std::max<int64_t>(2, std::atoll(argv[++i]));
    } else if (arg == "--threads" && i + 1 < argc) {
      threads = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--device" && i + 1 < argc &&
               (std::strcmp(argv[i + 1], "cpu") == 0 || std::strcmp(argv[i + 1], "cuda") == 0)) {
      device = argv[++i];
    } else {
      std::fprintf(stderr,
                   "usage: serve [--config small|medium] [--tokens N] [--threads T] "
                   "[--device cpu|cuda]\n"
                   "Drives fedmoe-client serve over loopback HTTP; prints JSON lines.\n");
      return arg == "--help" || arg == "-h" ? 0 : 2;
    }
  }
  const double bandwidth = fedmoe::bench::CopyBandwidth();
  fedmoe::bench::Print({{"benchmark", "memory_copy"},
                        {"bytes_read_and_written_per_second", bandwidth},
                        {"gb_per_second", bandwidth / 1e9}});
  for (const fedmoe::bench::Shape& shape : fedmoe::bench::kShapes) {
    if (shape.name != config) continue;
    fedmoe::bench::RunConfig(shape, tokens, threads, device, bandwidth);
  }
  return 0;
}
