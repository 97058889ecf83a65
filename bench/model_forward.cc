// Forward-pass throughput of the MoE transformer on the CPU kernels, for the issue's `tiny` and
// `small` configurations, beside the Eigen SGEMM rate of this machine for the same expert-shaped
// product, so the two can be compared within one run.
//
//   build/bin/model_forward [--benchmark_filter=small]
#include <Eigen/Core>
#include <random>
#include <string>
#include <vector>

#include "bench/json_lines_reporter.h"
#include "kernels/cpu/threads.h"
#include "model/forward.h"
#include "model/init.h"

namespace fedmoe::bench {
namespace {

struct Shape {
  const char* name;
  model::MoeConfig config;
  int64_t batch;
  int64_t seq_len;
};

model::MoeConfig Config(int64_t hidden, int64_t layers, int64_t heads, int64_t kv_heads,
                        int64_t inner) {
  model::MoeConfig config;
  config.vocab_size = 258;  // bytes plus two special tokens
  config.hidden_size = hidden;
  config.intermediate_size = inner;
  config.num_hidden_layers = layers;
  config.num_attention_heads = heads;
  config.num_key_value_heads = kv_heads;
  config.head_dim = hidden / heads;
  config.num_local_experts = 8;
  config.num_experts_per_tok = 2;
  config.max_position_embeddings = 4096;
  return config;
}

const Shape kShapes[] = {
    {"tiny", Config(64, 2, 4, 2, 128), 16, 128},
    {"small", Config(512, 4, 8, 4, 1408), 8, 256},
};

// Matmul FLOPs per token (2 per multiply-add): the dense projections, the router, k experts,
// the output head, and causal attention's two products over on average seq_len / 2 keys.
double ForwardFlopsPerToken(const model::MoeConfig& c, int64_t seq_len) {
  const auto hidden = static_cast<double>(c.hidden_size);
  const double attention_projections =
      hidden * static_cast<double>(2 * c.query_width() + 2 * c.key_value_width());
  const double experts = static_cast<double>(c.num_experts_per_tok) * 3.0 * hidden *
                         static_cast<double>(c.intermediate_size);
  const double router = hidden * static_cast<double>(c.num_local_experts);
  const double attention_scores =
      2.0 * static_cast<double>(seq_len) / 2.0 * static_cast<double>(c.query_width());
  const double per_layer = attention_projections + experts + router + attention_scores;
  return 2.0 * (static_cast<double>(c.num_hidden_layers) * per_layer +
                hidden * static_cast<double>(c.vocab_size));
}

void BM_Forward(benchmark::State& state) {
  const Shape& shape = kShapes[state.range(0)];
  const model::ModelParameters parameters = model::InitializeModel(shape.config, 1);
  std::mt19937 generator(3);
  std::uniform_int_distribution<int32_t> token(0, 255);
  std::vector<int32_t> tokens(static_cast<size_t>(shape.batch * shape.seq_len));
  for (int32_t& t : tokens) t = token(generator);
  model::ForwardPass pass;
  // One untimed pass first, so the timed ones reuse its buffers as training steps do.
  if (!model::Forward(parameters, tokens, shape.batch, shape.seq_len, pass).ok()) {
    state.SkipWithError("forward failed");
  }
  for (auto _ : state) {
    const absl::Status status =
        model::Forward(parameters, tokens, shape.batch, shape.seq_len, pass);
    if (!status.ok()) state.SkipWithError(std::string(status.message()).c_str());
    benchmark::DoNotOptimize(pass.logits.data());
  }
  const auto tokens_per_step = static_cast<double>(tokens.size());
  const auto iterations = static_cast<double>(state.iterations());
  state.counters["tokens_per_second"] =
      benchmark::Counter(tokens_per_step * iterations, benchmark::Counter::kIsRate);
  state.counters["gflop_per_second"] = benchmark::Counter(
      tokens_per_step * iterations * ForwardFlopsPerToken(shape.config, shape.seq_len) * 1e-9,
      benchmark::Counter::kIsRate);
  state.counters["hidden"] = static_cast<double>(shape.config.hidden_size);
  state.counters["layers"] = static_cast<double>(shape.config.num_hidden_layers);
  state.counters["heads"] = static_cast<double>(shape.config.num_attention_heads);
  state.counters["kv_heads"] = static_cast<double>(shape.config.num_key_value_heads);
  state.counters["experts"] = static_cast<double>(shape.config.num_local_experts);
  state.counters["top_k"] = static_cast<double>(shape.config.num_experts_per_tok);
  state.counters["intermediate"] = static_cast<double>(shape.config.intermediate_size);
  state.counters["batch"] = static_cast<double>(shape.batch);
  state.counters["seq_len"] = static_cast<double>(shape.seq_len);
  state.counters["threads"] = kernels::cpu::CpuThreads();
  state.SetLabel(shape.name);
}
BENCHMARK(BM_Forward)->Arg(0)->Arg(1)->MinTime(2)->Unit(benchmark::kMillisecond)->UseRealTime();

// The machine's Eigen SGEMM rate on the shape of one small-model expert's first projection
// (its share of a 2048-token batch): the ceiling the expert products are measured against.
void BM_EigenSgemm(benchmark::State& state) {
  const Eigen::Index rows = state.range(0);
  const Eigen::Index inner = state.range(1);
  const Eigen::Index cols = state.range(2);
  using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const RowMatrix a = RowMatrix::Random(rows, inner);
  const RowMatrix b = RowMatrix::Random(cols, inner);
  RowMatrix c(rows, cols);
  for (auto _ : state) {
    c.noalias() = a * b.transpose();
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["gflop_per_second"] =
      benchmark::Counter(2.0 * static_cast<double>(rows * inner * cols) *
                             static_cast<double>(state.iterations()) * 1e-9,
                         benchmark::Counter::kIsRate);
  state.counters["m"] = static_cast<double>(rows);
  state.counters["k"] = static_cast<double>(inner);
  state.counters["n"] = static_cast<double>(cols);
  state.counters["threads"] = kernels::cpu::CpuThreads();
}
BENCHMARK(BM_EigenSgemm)
    ->Args({512, 512, 1408})
    ->Args({1024, 1024, 1024})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace fedmoe::bench

int main(int argc, char** argv) {
  fedmoe::kernels::cpu::RetainFreedMemory();
  return fedmoe::bench::RunBenchmarks(argc, argv);
}
