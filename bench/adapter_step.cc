// LoRA adapter training over a frozen compact base (issue [peft]), measured:
//
//   7b:       one FFA-LoRA step (rank 8 on every routed expert's w1, w2 and w3, routers trained,
//             batch 4 × 128) on a 6.9B-parameter Mixtral-layout model with random weights
//             (hidden 2048, 16 layers, 64 experts top-8, inner 1024, 16 heads, vocabulary 50304),
//             over an INT8 and a bf16 base, each memory-mapped from a checkpoint on disk (made
//             once, in a child process, and kept under --cache-dir). Per base: seconds per step
//             and its phases, the base products' FLOPs and their rate over the step, the peak
//             RSS of the process that opened the base and stepped, against the bound
//             1.25 × base bytes + 2 GiB, and the bytes a round's update takes on the SecAgg ring.
//   products: the base's forward and input-gradient products alone, fp32 against bf16 against
//             INT8, on the 7B model's shapes (an expert's w1 over its share of a batch, q_proj
//             over the batch, the output head).
//   small:    train_step's `small` model: the adapter step's tokens/s against the full-expert
//             step's (experts and routers trained, fp32), side by side.
//
//   build/bin/adapter_step [--config 7b|products|small|all] [--base int8|bf16|all] [--steps N]
//                          [--threads T] [--cache-dir DIR] [--rank R]
//
// One JSON object per line. Each step runs in a child process of its own so that its peak RSS
// is its own.
#include <Eigen/Core>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "bench/child_process.h"
#include "bench/guarded_main.h"
#include "bench/train_step_shapes.h"
#include "kernels/cpu/aligned.h"
#include "kernels/cpu/frozen_linear.h"
#include "kernels/cpu/threads.h"
#include "model/adapted_model.h"
#include "model/backward.h"
#include "model/frozen_base.h"
#include "model/init.h"
#include "model/optimizer.h"
#include "privacy/ring_encoder.h"

namespace fedmoe::bench {
namespace {

using kernels::cpu::AlignedFloats;
using kernels::cpu::FrozenWeight;
using model::WeightFormat;

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

model::MoeConfig SevenBConfig() {
  model::MoeConfig config;
  config.vocab_size = 50304;
  config.hidden_size = 2048;
  config.intermediate_size = 1024;
  config.num_hidden_layers = 16;
  config.num_attention_heads = 16;
  config.num_key_value_heads = 16;
  config.head_dim = 128;
  config.num_local_experts = 64;
  config.num_experts_per_tok = 8;
  config.max_position_embeddings = 4096;
  config.initializer_range = 0.02;
  return config;
}

// Random weights fast enough for 6.9 billion of them: uniform with the config's standard
// deviation, from a SplitMix64 counter per value (the weights only need to be weights-like).
absl::Status RandomTensor(const model::MoeConfig& config, const model::TensorSpec& spec,
                          std::span<float> out) {
  if (spec.role == model::TensorRole::kNorm) {
    std::fill(out.begin(), out.end(), 1.0F);
    return absl::OkStatus();
  }
  const double half_width = config.initializer_range * std::sqrt(3.0);
  const uint64_t stream = model::TensorStreamSeed(7, static_cast<uint64_t>(spec.offset));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < static_cast<int64_t>(out.size()); ++i) {
    uint64_t z = stream + static_cast<uint64_t>(i) * 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    const double unit = static_cast<double>(z >> 11) * 0x1.0p-52 - 1.0;
    out[static_cast<size_t>(i)] = static_cast<float>(half_width * unit);
  }
  return absl::OkStatus();
}

// The base checkpoint for `format`, made in a child process when the cache lacks it.
absl::StatusOr<std::filesystem::path> CachedBase(const std::filesystem::path& cache,
                                                 const model::MoeConfig& config,
                                                 WeightFormat format) {
  const std::filesystem::path directory =
      cache / ("adapter_step-7b-" + std::string(model::WeightFormatName(format)));
  if (std::filesystem::exists(directory / "model.safetensors")) return directory;
  std::fprintf(stderr, "adapter_step: writing the %s base to %s (once)\n",
               std::string(model::WeightFormatName(format)).c_str(), directory.c_str());
  const Json made = InChild([&]() -> Json {
    absl::StatusOr<model::FrozenBase> base = model::FrozenBase::Build(
        config, format, 128, [&config](const model::TensorSpec& spec, std::span<float> out) {
          return RandomTensor(config, spec, out);
        });
    if (!base.ok()) return {{"error", base.status().ToString()}};
    if (absl::Status status = model::SaveFrozenBase(*base, directory); !status.ok()) {
      return {{"error", status.ToString()}};
    }
    return {{"bytes", base->bytes()}};
  });
  if (made.contains("error")) return absl::InternalError(made["error"].get<std::string>());
  return directory;
}

// The FLOPs of the base's products in one step: the forward product of every weight a token
// uses, and the input-gradient product of each one the gradient passes through (all of them but
// the first layer's attention, which only adapters there would need).
double BaseProductFlops(const model::MoeConfig& config, int64_t tokens) {
  const auto h = static_cast<double>(config.hidden_size);
  const double attention = h * static_cast<double>(config.query_width()) * 2 +
                           2 * h * static_cast<double>(config.key_value_width());
  const double experts = 3 * h *
                         static_cast<double>(config.num_experts_per_tok * config.intermediate_size +
                                             config.shared_inner_size());
  const double head = h * static_cast<double>(config.vocab_size);
  const auto layers = static_cast<double>(config.num_hidden_layers);
  const double forward = layers * (attention + experts) + head;
  const double backward = forward - attention;
  return 2 * static_cast<double>(tokens) * (forward + backward);
}

// The batch's inputs and next-token targets.
struct Batch {
  std::vector<int32_t> inputs;
  std::vector<int32_t> targets;
};

Batch RandomBatch(int64_t batch, int64_t seq_len, int64_t vocab) {
  std::mt19937 generator(3);
  Batch out;
  for (int64_t b = 0; b < batch; ++b) {
    std::vector<int32_t> row(static_cast<size_t>(seq_len + 1));
    for (int32_t& t : row) t = static_cast<int32_t>(generator() % static_cast<uint32_t>(vocab));
    out.inputs.insert(out.inputs.end(), row.begin(), row.end() - 1);
    out.targets.insert(out.targets.end(), row.begin() + 1, row.end());
  }
  return out;
}

struct AdapterStepResult {
  double seconds = 0, forward = 0, backward = 0, optimizer = 0;
  int64_t trained_values = 0;
  int64_t adapter_values = 0;
};

// `steps` adapter steps (after one warm-up when warm_up) as a trainer takes them: forward,
// backward, clipping and AdamW over the trained ranges.
AdapterStepResult AdapterSteps(const model::FrozenBase& base, const model::LoraConfig& lora,
                               int64_t batch, int64_t seq_len, int steps, bool warm_up) {
  absl::StatusOr<model::LoraAdapters> adapters = model::NewAdapters(base, lora);
  if (!adapters.ok()) std::abort();
  const std::vector<model::TrainedRange> ranges = model::AdapterTrainedRanges(*adapters);
  model::AdamW optimizer(ranges, {});
  AlignedFloats gradients(adapters->values().size());
  const Batch data = RandomBatch(batch, seq_len, base.config().vocab_size);
  model::AdaptedPass pass;
  model::AdaptedScratch scratch;
  const model::BackwardOptions options{.balance_coefficient = 0.02,
                                       .predictions_in_step = static_cast<double>(batch * seq_len)};
  AdapterStepResult result;
  auto step = [&] {
    Clock::time_point phase = Clock::now();
    if (!model::AdaptedForward(base, *adapters, data.inputs, batch, seq_len, pass).ok()) {
      std::abort();
    }
    result.forward += Seconds(phase);
    phase = Clock::now();
    std::fill(gradients.begin(), gradients.end(), 0.0F);
    if (!model::AdaptedBackward(base, *adapters, pass, data.targets, options, gradients, scratch)
             .ok()) {
      std::abort();
    }
    result.backward += Seconds(phase);
    phase = Clock::now();
    optimizer.Step(adapters->values(), gradients, 1e-4, model::GradientNorm(ranges, gradients),
                   1.0);
    result.optimizer += Seconds(phase);
  };
  if (warm_up) {
    step();
    result = {};
  }
  const Clock::time_point start = Clock::now();
  for (int i = 0; i < steps; ++i) step();
  result.seconds = Seconds(start) / steps;
  result.forward /= steps;
  result.backward /= steps;
  result.optimizer /= steps;
  for (const model::TrainedRange& range : ranges) result.trained_values += range.size;
  result.adapter_values = adapters->layout().total_size();
  return result;
}

int SevenB(const std::vector<WeightFormat>& formats, const std::filesystem::path& cache, int steps,
           int64_t rank) {
  const model::MoeConfig config = SevenBConfig();
  constexpr int64_t kBatch = 4;
  constexpr int64_t kSeqLen = 128;
  const int64_t parameters = model::ModelLayout(config).total_size();
  for (const WeightFormat format : formats) {
    absl::StatusOr<std::filesystem::path> directory = CachedBase(cache, config, format);
    if (!directory.ok()) {
      std::fprintf(stderr, "adapter_step: %s\n", directory.status().ToString().c_str());
      return 1;
    }
    const Json line = InChild([&]() -> Json {
      const Clock::time_point opening = Clock::now();
      absl::StatusOr<model::FrozenBase> base = model::FrozenBase::Open(*directory);
      if (!base.ok()) return {{"error", base.status().ToString()}};
      const double open_seconds = Seconds(opening);
      model::LoraConfig lora;
      lora.rank = rank;
      lora.alpha = 2.0 * static_cast<double>(rank);
      const AdapterStepResult step = AdapterSteps(*base, lora, kBatch, kSeqLen, steps, false);
      const double peak_bytes = PeakRssMib() * 1024 * 1024;
      const double bound = 1.25 * static_cast<double>(base->bytes()) + 2 * kGiB;
      const double flops = BaseProductFlops(config, kBatch * kSeqLen);
      // What a round moves: the trained values (B's and routers) with each layer's expert
      // weights and routing histogram, encoded for the SecAgg ring at the default 32 bits,
      // padded as the coordinator plans it (a multiple of the rotation block, privacy/hadamard.h).
      const auto plain = static_cast<size_t>(step.trained_values + 2 * config.num_hidden_layers *
                                                                       config.num_local_experts);
      privacy::RingEncoding encoding;
      encoding.rotation_block = privacy::RotationBlockOf(privacy::EncodedLength(plain));
      absl::StatusOr<privacy::RingEncoder> encoder = privacy::RingEncoder::Create(plain, encoding);
      if (!encoder.ok()) return {{"error", encoder.status().ToString()}};
      constexpr int kRingBits = 32;
      const double update_bytes = static_cast<double>(encoder->encoded_dimension()) * kRingBits / 8;
      const double update_bound = 1.1 * static_cast<double>(step.trained_values) * kRingBits / 8;
      return {{"benchmark", "adapter_step"},
              {"config", "7b"},
              {"base", model::WeightFormatName(format)},
              {"parameters", parameters},
              {"rank", rank},
              {"targets", "w1,w2,w3"},
              {"batch", kBatch},
              {"seq_len", kSeqLen},
              {"threads", kernels::cpu::CpuThreads()},
              {"base_bytes", base->bytes()},
              {"open_seconds", open_seconds},
              {"step_seconds", step.seconds},
              {"forward_seconds", step.forward},
              {"backward_seconds", step.backward},
              {"optimizer_seconds", step.optimizer},
              {"base_product_gflop", flops / 1e9},
              {"base_product_gflops_over_step", flops / 1e9 / step.seconds},
              {"peak_rss_gib", peak_bytes / kGiB},
              {"rss_bound_gib", bound / kGiB},
              {"fits_rss_bound", peak_bytes <= bound},
              {"adapter_values", step.adapter_values},
              {"trained_values", step.trained_values},
              {"update_bytes", update_bytes},
              {"update_bytes_bound", update_bound},
              {"fits_update_bound", update_bytes <= update_bound}};
    });
    if (line.contains("error")) {
      std::fprintf(stderr, "adapter_step: %s\n", line["error"].dump().c_str());
      return 1;
    }
    std::printf("%s\n", line.dump().c_str());
    std::fflush(stdout);
  }
  return 0;
}

// GFLOP/s of one frozen product in each format, on random weights of the given shape.
int Products() {
  const model::MoeConfig config = SevenBConfig();
  struct ProductShape {
    const char* name;
    int64_t rows, in_features, out_features;
  };
  // 512 tokens in a batch, 64 of them (512·8/64) per expert.
  const ProductShape shapes[] = {{"expert_w1", 64, config.hidden_size, config.intermediate_size},
                                 {"q_proj", 512, config.hidden_size, config.query_width()},
                                 {"lm_head", 512, config.hidden_size, config.vocab_size}};
  for (const ProductShape& shape : shapes) {
    const int64_t size = shape.in_features * shape.out_features;
    std::mt19937 generator(5);
    std::normal_distribution<float> normal(0.0F, 0.02F);
    AlignedFloats weights(static_cast<size_t>(size));
    for (float& w : weights) w = normal(generator);
    kernels::cpu::AlignedBf16 rounded(weights.size());
    kernels::cpu::ToBf16(weights.data(), rounded.data(), size);
    const kernels::cpu::Int8Matrix int8 =
        kernels::cpu::QuantizeInt8(weights, shape.out_features, shape.in_features, 128);
    AlignedFloats in(static_cast<size_t>(shape.rows * shape.in_features), 0.5F);
    AlignedFloats out(static_cast<size_t>(shape.rows * shape.out_features));
    AlignedFloats d_in(in.size());
    Json line = {{"benchmark", "adapter_step_products"},
                 {"product", shape.name},
                 {"rows", shape.rows},
                 {"in_features", shape.in_features},
                 {"out_features", shape.out_features},
                 {"threads", kernels::cpu::CpuThreads()}};
    const double flops = 2.0 * static_cast<double>(shape.rows * size);
    for (const FrozenWeight& weight :
         {FrozenWeight::Float32(weights.data(), shape.out_features, shape.in_features),
          FrozenWeight::Bfloat16(rounded.data(), shape.out_features, shape.in_features),
          FrozenWeight::Int8(int8)}) {
      const std::string name(model::WeightFormatName(weight.format));
      const auto rate = [&](const std::function<void()>& product) {
        product();
        int repeats = 0;
        const Clock::time_point start = Clock::now();
        do {
          product();
          ++repeats;
        } while (Seconds(start) < 0.5);
        return flops * repeats / Seconds(start) / 1e9;
      };
      line[name + "_forward_gflops"] = rate(
          [&] { kernels::cpu::FrozenLinearForward(in.data(), weight, out.data(), shape.rows); });
      line[name + "_input_gradient_gflops"] = rate([&] {
        kernels::cpu::FrozenLinearBackwardInput(out.data(), weight, d_in.data(), shape.rows);
      });
      line[name + "_weight_bytes"] = weight.bytes();
    }
    line["int8_over_bf16_forward"] =
        line["int8_forward_gflops"].get<double>() / line["bf16_forward_gflops"].get<double>();
    line["int8_over_fp32_forward"] =
        line["int8_forward_gflops"].get<double>() / line["fp32_forward_gflops"].get<double>();
    std::printf("%s\n", line.dump().c_str());
    std::fflush(stdout);
  }
  return 0;
}

int Small(int steps, int64_t rank) {
  const Shape& shape = kShapes[1];
  const model::MoeConfig config = ConfigOf(shape);
  const Json full = InChild([&]() -> Json {
    model::ModelParameters parameters = model::InitializeModel(config, 1);
    const Batch data = RandomBatch(shape.batch, shape.seq_len, config.vocab_size);
    const model::TrainableSet trainable;
    model::AdamW optimizer(parameters.layout(), trainable, {});
    AlignedFloats gradients(parameters.values().size());
    model::ForwardPass pass;
    model::BackwardScratch scratch;
    const model::BackwardOptions options{
        .balance_coefficient = 0.02,
        .predictions_in_step = static_cast<double>(shape.batch * shape.seq_len)};
    auto step = [&] {
      if (!model::Forward(parameters, data.inputs, shape.batch, shape.seq_len, pass).ok()) {
        std::abort();
      }
      std::fill(gradients.begin(), gradients.end(), 0.0F);
      if (!model::Backward(parameters, pass, data.targets, trainable, options, gradients, scratch)
               .ok()) {
        std::abort();
      }
      optimizer.Step(parameters.values(), gradients, 1e-4,
                     model::GradientNorm(parameters.layout(), trainable, gradients), 1.0);
    };
    step();
    const Clock::time_point start = Clock::now();
    for (int i = 0; i < steps; ++i) step();
    return {{"tokens_per_second",
             static_cast<double>(shape.batch * shape.seq_len * steps) / Seconds(start)},
            {"peak_rss_mib", PeakRssMib()}};
  });
  Json line = {{"benchmark", "adapter_step_small"},
               {"config", shape.name},
               {"batch", shape.batch},
               {"seq_len", shape.seq_len},
               {"rank", rank},
               {"targets", "w1,w2,w3"},
               {"threads", kernels::cpu::CpuThreads()},
               {"full_expert_tokens_per_second", full.value("tokens_per_second", 0.0)},
               {"full_expert_peak_rss_mib", full.value("peak_rss_mib", 0.0)}};
  for (const WeightFormat format :
       {WeightFormat::kFloat32, WeightFormat::kBfloat16, WeightFormat::kInt8}) {
    const Json adapter = InChild([&]() -> Json {
      const model::FrozenBase base =
          model::FrozenBase::FromParameters(model::InitializeModel(config, 1), format);
      model::LoraConfig lora;
      lora.rank = rank;
      lora.alpha = 2.0 * static_cast<double>(rank);
      const AdapterStepResult step =
          AdapterSteps(base, lora, shape.batch, shape.seq_len, steps, true);
      return {
          {"tokens_per_second", static_cast<double>(shape.batch * shape.seq_len) / step.seconds},
          {"peak_rss_mib", PeakRssMib()}};
    });
    const std::string name(model::WeightFormatName(format));
    line["adapter_" + name + "_tokens_per_second"] = adapter.value("tokens_per_second", 0.0);
    line["adapter_" + name + "_peak_rss_mib"] = adapter.value("peak_rss_mib", 0.0);
    line["adapter_" + name + "_over_full"] =
        adapter.value("tokens_per_second", 0.0) / full.value("tokens_per_second", 1.0);
  }
  std::printf("%s\n", line.dump().c_str());
  return 0;
}

int Run(int argc, char** argv) {
  std::string which = "all";
  std::string bases = "all";
  int steps = 1;
  int threads = 0;
  int64_t rank = 8;
  std::filesystem::path cache = std::filesystem::temp_directory_path();
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    const bool has_value = i + 1 < argc;
    if (flag == "--help" || flag == "-h") {
      std::printf(
          "usage: adapter_step [--config 7b|products|small|all] [--base int8|bf16|all]\n"
          "                    [--steps N] [--threads T] [--cache-dir DIR] [--rank R]\n");
      return 0;
    }
    if (!has_value) {
      std::fprintf(stderr, "adapter_step: %s needs a value\n", flag.c_str());
      return 2;
    }
    const std::string value = argv[++i];
    if (flag == "--config") {
      which = value;
    } else if (flag == "--base") {
      bases = value;
    } else if (flag == "--steps") {
      steps = std::max(1, std::atoi(value.c_str()));
    } else if (flag == "--threads") {
      threads = std::atoi(value.c_str());
    } else if (flag == "--cache-dir") {
      cache = value;
    } else if (flag == "--rank") {
      rank = std::max<int64_t>(1, std::atoll(value.c_str()));
    } else {
      std::fprintf(stderr, "adapter_step: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  kernels::cpu::SetCpuThreads(threads);
  std::vector<WeightFormat> formats;
  if (bases == "int8" || bases == "all") formats.push_back(WeightFormat::kInt8);
  if (bases == "bf16" || bases == "all") formats.push_back(WeightFormat::kBfloat16);
  if (formats.empty()) {
    std::fprintf(stderr, "adapter_step: --base must be int8, bf16 or all\n");
    return 2;
  }
  if (which == "products" || which == "all") {
    if (int status = Products(); status != 0) return status;
  }
  if (which == "small" || which == "all") {
    if (int status = Small(steps, rank); status != 0) return status;
  }
  if (which == "7b" || which == "all") return SevenB(formats, cache, steps, rank);
  return 0;
}

}  // namespace
}  // namespace fedmoe::bench

int main(int argc, char** argv) {
  return fedmoe::bench::GuardedMain("adapter_step", [&] { return fedmoe::bench::Run(argc, argv); });
}
