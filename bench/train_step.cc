// Training throughput of the CPU path, side by side with a straightforward PyTorch eager
// implementation of the same model and step (bench/torch_reference.py, run by this program
// with the same threads, batch and sequence length), and the GFLOP/s of the expert matrix
// products beside a plain Eigen SGEMM of the same shapes. Where the CPU multiplies bf16 in
// hardware, the step and the expert products also run with bf16 weight products (mixed
// precision), beside PyTorch under bf16 autocast. One JSON object per line.
//
// With --device cuda, the step on the GPU instead (model/cuda_training.h, bf16 products):
// tokens/s and model-FLOP utilisation (MFU) against the GPU's dense bf16 peak, for small and
// medium, the latter too large for the CPU path; mfu_trained_set leaves out the weight
// gradients the default trainable set (experts and router) never computes.
//
//   build/bin/train_step [--config tiny|small|medium|all] [--steps N] [--threads T] [--no-torch]
//                        [--matmul-precision fp32|bf16|all] [--device cpu|cuda]
//                        [--batch B] [--accumulation N] [--peak-tflops P] [--attention tf32|fp32]
//                        [--expert-products grouped|streams] [--dp] [--private-experts P]
//
// --private-experts P: a site's step with P private experts per layer (model/personal.h) beside
// the same step on the global model alone, on `small` unless --config says otherwise, each in a
// child process: tokens/s, peak RSS and trained values, and their ratios (with --dp, both steps
// are DP-SGD's).
//
// --dp: the DP-SGD step (per-record clipping and noise) beside the same step without privacy, on
// `small` unless --config says otherwise, with 32 records of one 128-token window each (so both
// steps see the same tokens; a Poisson draw varies around that) and the experts and router
// trainable: tokens/s and peak RSS, each in a child process of its own so that one's peak does
// not hide the other's.
//
// --attention (GPU only): attention's products on the tensor cores with TF32 operands, the
// bf16 default, or fp32 on the CUDA cores, for the step's difference (bench/attention times
// the kernels alone). --expert-products (GPU only): each layer's expert products as one grouped
// cuBLAS call, the default, or one product each on concurrent streams.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <Eigen/Core>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "bench/child_process.h"
#include "bench/guarded_main.h"
#include "bench/train_step_shapes.h"
#include "kernels/cpu/aligned.h"
#include "kernels/cpu/bf16.h"
#include "kernels/cpu/dense.h"
#include "kernels/cpu/threads.h"
#include "model/backward.h"
#include "model/dp_sgd.h"
#include "model/init.h"
#include "model/optimizer.h"
#include "model/training_backend.h"
#ifdef FEDMOE_BENCH_CUDA
#include "kernels/cuda/device_memory.h"
#include "kernels/cuda/profile.h"
#include "kernels/device.h"
#include "model/cuda_training.h"
#endif

namespace fedmoe::bench {
namespace {

using kernels::cpu::AlignedFloats;

struct StepTimes {
  double tokens_per_second = 0;
  double forward = 0;
  double backward = 0;
  double optimizer = 0;
};

// One optimizer step as the trainer takes it: forward, backward (default trainable set,
// balance loss on), clipping and AdamW.
StepTimes TrainStep(const Shape& shape, int steps, model::MatMulPrecision precision) {
  model::ModelParameters parameters = model::InitializeModel(ConfigOf(shape), 1);
  const std::vector<int32_t> tokens = RandomTokens(shape.batch * (shape.seq_len + 1), 3);
  std::vector<int32_t> inputs;
  std::vector<int32_t> targets;
  for (int64_t b = 0; b < shape.batch; ++b) {
    const auto row = tokens.begin() + b * (shape.seq_len + 1);
    inputs.insert(inputs.end(), row, row + shape.seq_len);
    targets.insert(targets.end(), row + 1, row + shape.seq_len + 1);
  }
  const model::TrainableSet trainable;
  model::AdamW optimizer(parameters.layout(), trainable, {});
  AlignedFloats gradients(parameters.values().size());
  model::ForwardPass pass;
  pass.matmul_precision = precision;
  model::BackwardScratch scratch;
  model::BackwardOptions options{.balance_coefficient = 0.02,
                                 .predictions_in_step = static_cast<double>(targets.size())};
  StepTimes times;
  auto step = [&] {
    Clock::time_point phase = Clock::now();
    if (!model::Forward(parameters, inputs, shape.batch, shape.seq_len, pass).ok()) std::abort();
    times.forward += Seconds(phase);
    phase = Clock::now();
    std::fill(gradients.begin(), gradients.end(), 0.0f);
    if (!model::Backward(parameters, pass, targets, trainable, options, gradients, scratch).ok()) {
      std::abort();
    }
    times.backward += Seconds(phase);
    phase = Clock::now();
    const double norm = model::GradientNorm(parameters.layout(), trainable, gradients);
    optimizer.Step(parameters.values(), gradients, 1e-3, norm, 1.0);
    times.optimizer += Seconds(phase);
  };
  step();  // warm-up: buffers are allocated once, as in a training run
  times = StepTimes{};
  const Clock::time_point start = Clock::now();
  for (int i = 0; i < steps; ++i) step();
  times.tokens_per_second =
      static_cast<double>(shape.batch * shape.seq_len * steps) / Seconds(start);
  times.forward /= steps;
  times.backward /= steps;
  times.optimizer /= steps;
  return times;
}

// One optimizer step through the CPU training backend, as the trainer takes it, with or without
// DP-SGD, over `records` records of one window each. Returns tokens/s and the process's peak RSS.
// With private_experts > 0 the model has that many more experts per layer, balanced as a site's
// private ones (model/personal.h).
Json BackendStep(Shape shape, int steps, int64_t records, bool private_step,
                 int64_t private_experts = 0) {
  shape.experts += private_experts;
  model::ModelParameters parameters = model::InitializeModel(ConfigOf(shape), 1);
  const std::vector<int32_t> tokens = RandomTokens(records * (shape.seq_len + 1), 3);
  model::Batch batch;
  model::RecordRows rows;
  for (int64_t r = 0; r < records; ++r) {
    model::Record record;
    const auto first = tokens.begin() + r * (shape.seq_len + 1);
    record.tokens.assign(first, first + shape.seq_len + 1);
    record.loss.assign(record.tokens.size(), 1);
    record.loss.front() = 0;
    model::AppendRecordWindows(record, shape.seq_len, 1, 256, batch, rows);
  }
  const model::TrainableSet trainable;  // routed experts, shared experts, router
  model::BackendOptions backend_options;
  backend_options.trainable = trainable;
  absl::StatusOr<std::unique_ptr<model::TrainingBackend>> backend =
      model::CreateCpuTrainingBackend(parameters, backend_options);
  if (!backend.ok()) std::abort();
  int64_t trainable_values = 0;
  for (const model::TensorSpec& spec : parameters.layout().tensors()) {
    if (trainable.Includes(spec.role)) trainable_values += spec.size;
  }
  absl::StatusOr<model::GradientNoise> noise =
      model::GradientNoise::Create(1.0, 1.0, trainable_values);
  absl::StatusOr<privacy::SecureRandom> random = privacy::SecureRandom::FromSystem();
  if (!noise.ok() || !random.ok()) std::abort();
  model::BackwardOptions options{.balance_coefficient = 0.02,
                                 .predictions_in_step = static_cast<double>(batch.predictions),
                                 .private_experts = private_experts};
  model::PrivateBatch released;
  released.routing_sum.assign(static_cast<size_t>(parameters.config().num_hidden_layers *
                                                  parameters.config().num_local_experts),
                              0.0);
  auto step = [&] {
    if (!private_step) {
      if (!(*backend)->AccumulateGradients(batch, options).ok()) std::abort();
      if (!(*backend)->ApplyGradients(1e-3, 1.0).ok()) std::abort();
      return;
    }
    if (!(*backend)->AccumulateClippedGradients(batch, rows, options, 1.0, 0.25, released).ok()) {
      std::abort();
    }
    const absl::Status noised = (*backend)->UpdateStepGradients([&](std::span<float> gradients) {
      for (const model::TensorSpec& spec : parameters.layout().tensors()) {
        if (!trainable.Includes(spec.role)) continue;
        const std::span<float> tensor =
            gradients.subspan(static_cast<size_t>(spec.offset), static_cast<size_t>(spec.size));
        if (absl::Status status = noise->AddTo(tensor, *random); !status.ok()) return status;
        for (float& value : tensor) value /= static_cast<float>(records);
      }
      return absl::OkStatus();
    });
    if (!noised.ok()) std::abort();
    if (!(*backend)->ApplyGradients(1e-3, 0.0).ok()) std::abort();
  };
  step();
  const Clock::time_point start = Clock::now();
  for (int i = 0; i < steps; ++i) step();
  const double seconds = Seconds(start);
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return {{"tokens_per_second", static_cast<double>(records * shape.seq_len * steps) / seconds},
          {"step_seconds", seconds / steps},
          {"trainable_values", trainable_values},
          {"peak_rss_mib", static_cast<double>(usage.ru_maxrss) / 1024.0}};
}

int PrivateStepComparison(Shape shape, int steps, int64_t batch_override) {
  constexpr int64_t kRecords = 32;
  shape.seq_len = 128;
  const int64_t records = batch_override > 0 ? batch_override : kRecords;
  const Json plain = InChild([&] { return BackendStep(shape, steps, records, false); });
  const Json dp = InChild([&] { return BackendStep(shape, steps, records, true); });
  if (plain.contains("error") || dp.contains("error")) {
    std::fprintf(stderr, "train_step: a child step failed\n");
    return 1;
  }
  Json line = {{"benchmark", "train_step_dp"},
               {"config", shape.name},
               {"records", records},
               {"seq_len", shape.seq_len},
               {"trainable", "routed_experts,shared_experts,router"},
               {"threads", kernels::cpu::CpuThreads()},
               {"steps", steps},
               {"non_private", plain},
               {"private", dp},
               {"time_ratio", plain.at("tokens_per_second").get<double>() /
                                  dp.at("tokens_per_second").get<double>()},
               {"memory_ratio",
                dp.at("peak_rss_mib").get<double>() / plain.at("peak_rss_mib").get<double>()}};
  std::printf("%s\n", line.dump().c_str());
  return 0;
}

// A site's step with private experts (model/personal.h) beside the same step on the global model
// alone, both through the CPU backend, in the same run: what personalization costs.
int PrivateExpertsComparison(Shape shape, int steps, int64_t batch_override,
                             int64_t private_experts, bool private_step) {
  shape.seq_len = 128;
  const int64_t records = batch_override > 0 ? batch_override : 32;
  const Json global = InChild([&] { return BackendStep(shape, steps, records, private_step); });
  const Json personal =
      InChild([&] { return BackendStep(shape, steps, records, private_step, private_experts); });
  if (global.contains("error") || personal.contains("error")) {
    std::fprintf(stderr, "train_step: a child step failed\n");
    return 1;
  }
  auto ratio = [&](const char* key) {
    return personal.at(key).get<double>() / global.at(key).get<double>();
  };
  const Json line = {{"benchmark", "train_step_private_experts"},
                     {"config", shape.name},
                     {"experts", shape.experts},
                     {"private_experts", private_experts},
                     {"dp_sgd", private_step},
                     {"records", records},
                     {"seq_len", shape.seq_len},
                     {"threads", kernels::cpu::CpuThreads()},
                     {"steps", steps},
                     {"global_only", global},
                     {"with_private_experts", personal},
                     {"time_ratio", 1.0 / ratio("tokens_per_second")},
                     {"memory_ratio", ratio("peak_rss_mib")},
                     {"trainable_values_ratio", ratio("trainable_values")}};
  std::printf("%s\n", line.dump().c_str());
  return 0;
}

// The expert products of one MoE layer's forward and backward with balanced routing: per
// expert, 3 GEMMs forward and 6 backward (input and weight gradients), each 2·n·hidden·inner
// FLOPs, against Eigen SGEMM on the same [n, hidden] × [hidden, inner] shape.
Json ExpertProducts(const Shape& shape, int repeats, bool with_bf16) {
  const int64_t experts = shape.experts;
  const int64_t rows = shape.batch * shape.seq_len * shape.top_k / experts;  // balanced
  const int64_t h = shape.hidden;
  const int64_t inner = shape.inner;
  std::mt19937 generator(5);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  auto random = [&](int64_t n) {
    AlignedFloats values(static_cast<size_t>(n));
    for (float& v : values) v = normal(generator);
    return values;
  };
  const AlignedFloats in = random(rows * h), w1 = random(inner * h), w3 = random(inner * h),
                      w2 = random(h * inner), d_out = random(rows * h);
  AlignedFloats gate(rows * inner), up(rows * inner), act(rows * inner), out(rows * h),
      d_in(rows * h), d_w1(inner * h), d_w3(inner * h), d_w2(h * inner), d_gate(rows * inner),
      d_up(rows * inner), d_act(rows * inner);
  auto expert_pass = [&] {
    kernels::cpu::SwiGluMlpForward(in.data(), w1.data(), w3.data(), w2.data(), gate.data(),
                                   up.data(), act.data(), out.data(), rows, h, inner);
    kernels::cpu::SwiGluMlpBackward(in.data(), w1.data(), w3.data(), w2.data(), gate.data(),
                                    up.data(), act.data(), d_out.data(), d_in.data(), d_w1.data(),
                                    d_w3.data(), d_w2.data(), d_gate.data(), d_up.data(),
                                    d_act.data(), rows, h, inner);
  };
  expert_pass();
  Clock::time_point start = Clock::now();
  for (int i = 0; i < repeats; ++i) expert_pass();
  const double expert_seconds = Seconds(start) / repeats;
  const double expert_flops = 9.0 * 2.0 * static_cast<double>(rows * h * inner);

  // The same pass with bf16 products, as mixed-precision training runs it: the rounding of the
  // weights and of the input is part of the pass.
  double bf16_seconds = 0;
  if (with_bf16) {
    using kernels::cpu::AlignedBf16;
    using kernels::cpu::ToBf16;
    AlignedBf16 in_bf16(in.size()), weights_bf16(3 * w1.size()), act_bf16(act.size()),
        d_out_bf16(d_out.size()), d_gate_bf16(d_gate.size()), d_up_bf16(d_up.size());
    auto bf16_pass = [&] {
      const int64_t size = inner * h;
      ToBf16(w1.data(), weights_bf16.data(), size);
      ToBf16(w3.data(), weights_bf16.data() + size, size);
      ToBf16(w2.data(), weights_bf16.data() + 2 * size, size);
      ToBf16(in.data(), in_bf16.data(), rows * h);
      ToBf16(d_out.data(), d_out_bf16.data(), rows * h);
      const kernels::cpu::Bf16* w = weights_bf16.data();
      kernels::cpu::SwiGluMlpForwardBf16(in_bf16.data(), w, w + size, w + 2 * size, gate.data(),
                                         up.data(), act_bf16.data(), out.data(), rows, h, inner);
      kernels::cpu::SwiGluMlpBackwardBf16(
          in_bf16.data(), w, w + size, w + 2 * size, gate.data(), up.data(), act_bf16.data(),
          d_out_bf16.data(), d_in.data(), d_w1.data(), d_w3.data(), d_w2.data(), d_act.data(),
          d_gate_bf16.data(), d_up_bf16.data(), rows, h, inner);
    };
    bf16_pass();
    start = Clock::now();
    for (int i = 0; i < repeats; ++i) bf16_pass();
    bf16_seconds = Seconds(start) / repeats;
  }

  using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const RowMatrix a = RowMatrix::Random(rows, h);
  const RowMatrix b = RowMatrix::Random(inner, h);
  RowMatrix c(rows, inner);
  c.noalias() = a * b.transpose();
  start = Clock::now();
  for (int i = 0; i < 9 * repeats; ++i) c.noalias() = a * b.transpose();
  const double sgemm_seconds = Seconds(start) / (9 * repeats);
  const double sgemm_flops = 2.0 * static_cast<double>(rows * h * inner);
  const double expert_rate = expert_flops / expert_seconds * 1e-9;
  const double sgemm_rate = sgemm_flops / sgemm_seconds * 1e-9;
  Json result = {{"benchmark", "expert_products"},
                 {"config", shape.name},
                 {"rows_per_expert", rows},
                 {"hidden", h},
                 {"inner", inner},
                 {"expert_gflop_per_second", expert_rate},
                 {"sgemm_gflop_per_second", sgemm_rate},
                 {"ratio_to_sgemm", expert_rate / sgemm_rate},
                 {"threads", kernels::cpu::CpuThreads()}};
  if (with_bf16) {
    const double bf16_rate = expert_flops / bf16_seconds * 1e-9;
    result["expert_bf16_gflop_per_second"] = bf16_rate;
    result["bf16_ratio_to_sgemm"] = bf16_rate / sgemm_rate;
  }
  return result;
}

// Runs bench/torch_reference.py (in fp32, or under bf16 autocast, PyTorch's mixed precision)
// and returns its JSON line, or null when PyTorch is missing.
Json TorchReference(const Shape& shape, int steps, int threads, bool bf16_autocast) {
  const std::string command =
      std::string("/usr/bin/python3 ") + FEDMOE_SOURCE_DIR + "/bench/torch_reference.py --config " +
      shape.name + " --batch " + std::to_string(shape.batch) + " --seq-len " +
      std::to_string(shape.seq_len) + " --steps " + std::to_string(steps) + " --threads " +
      std::to_string(threads) + (bf16_autocast ? " --bf16-autocast" : "") + " 2>/dev/null";
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(command.c_str(), "r"), pclose);
  if (pipe == nullptr) return nullptr;
  std::string output;
  char buffer[4096];
  while (std::fgets(buffer, sizeof(buffer), pipe.get()) != nullptr) output += buffer;
  const Json json = Json::parse(output, nullptr, /*allow_exceptions=*/false);
  return json.is_discarded() ? Json(nullptr) : json;
}

int Main(int argc, char** argv) {
  std::string only = "all";
  int steps = 5;
  int threads = 0;
  bool torch = true;
  std::string precision_choice = "all";
  std::string device = "cpu";
  int64_t batch_override = 0;
  bool private_step = false;
  int64_t private_experts = 0;
  [[maybe_unused]] CudaStepChoices cuda_choices;  // read only by the CUDA bench
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--config" && i + 1 < argc) {
      only = argv[++i];
    } else if (arg == "--steps" && i + 1 < argc) {
      steps = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--threads" && i + 1 < argc) {
      threads = std::max(0, std::atoi(argv[++i]));
    } else if (arg == "--device" && i + 1 < argc &&
               (std::string(argv[i + 1]) == "cpu" || std::string(argv[i + 1]) == "cuda")) {
      device = argv[++i];
    } else if (arg == "--batch" && i + 1 < argc) {
      batch_override = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--accumulation" && i + 1 < argc) {
      cuda_choices.accumulation = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--peak-tflops" && i + 1 < argc) {
      cuda_choices.peak_tflops = std::max(1.0, std::atof(argv[++i]));
    } else if (arg == "--attention" && i + 1 < argc &&
               (std::string(argv[i + 1]) == "tf32" || std::string(argv[i + 1]) == "fp32")) {
      cuda_choices.tensor_core_attention = std::string(argv[++i]) == "tf32";
    } else if (arg == "--expert-products" && i + 1 < argc &&
               (std::string(argv[i + 1]) == "grouped" || std::string(argv[i + 1]) == "streams")) {
      cuda_choices.concurrent_expert_products = std::string(argv[++i]) == "streams";
    } else if (arg == "--no-torch") {
      torch = false;
    } else if (arg == "--dp") {
      private_step = true;
    } else if (arg == "--private-experts" && i + 1 < argc) {
      private_experts = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--matmul-precision" && i + 1 < argc &&
               (std::string(argv[i + 1]) == "fp32" || std::string(argv[i + 1]) == "bf16" ||
                std::string(argv[i + 1]) == "all")) {
      precision_choice = argv[++i];
    } else {
      std::fprintf(stderr,
                   "usage: train_step [--config tiny|small|medium|all] [--steps N] "
                   "[--threads T] [--no-torch] [--matmul-precision fp32|bf16|all] "
                   "[--device cpu|cuda] [--batch B] [--accumulation N] [--peak-tflops P] "
                   "[--attention tf32|fp32] [--expert-products grouped|streams] [--dp] "
                   "[--private-experts P]\n");
      return 2;
    }
  }
  if (device == "cuda") {
#ifdef FEDMOE_BENCH_CUDA
    if (!kernels::cuda::IsSimulator()) {
      if (absl::StatusOr<kernels::Device> gpu = kernels::ResolveDevice("cuda"); !gpu.ok()) {
        std::fprintf(stderr, "train_step: %s\n", std::string(gpu.status().message()).c_str());
        return 1;
      }
    }
    int failures = 0;
    for (Shape shape : kShapes) {
      if (only == "all" ? shape.name == "tiny" : only != shape.name) continue;
      if (batch_override > 0) shape.batch = batch_override;
      const Json line = CudaTrainStep(shape, steps, cuda_choices);
      failures += line.contains("error") ? 1 : 0;
      std::printf("%s\n", line.dump().c_str());
      std::fflush(stdout);
    }
    return failures == 0 ? 0 : 1;
#else
    std::fprintf(stderr, "train_step: this build has no CUDA kernels (nvcc was not found)\n");
    return 1;
#endif
  }
  kernels::cpu::SetCpuThreads(threads);
  kernels::cpu::RetainFreedMemory();
  if (private_experts > 0) {
    for (const Shape& shape : kShapes) {
      if (shape.name == (only == "all" ? "small" : only)) {
        return PrivateExpertsComparison(shape, steps, batch_override, private_experts,
                                        private_step);
      }
    }
    std::fprintf(stderr, "train_step: no config %s\n", only.c_str());
    return 2;
  }
  if (private_step) {
    for (const Shape& shape : kShapes) {
      if (shape.name == (only == "all" ? "small" : only)) {
        return PrivateStepComparison(shape, steps, batch_override);
      }
    }
    std::fprintf(stderr, "train_step: no config %s\n", only.c_str());
    return 2;
  }
  // bf16 only where the CPU multiplies bf16 in hardware: emulated, it measures nothing useful.
  std::vector<model::MatMulPrecision> precisions;
  if (precision_choice != "bf16") precisions.push_back(model::MatMulPrecision::kFloat32);
  if (precision_choice != "fp32" && kernels::cpu::HasNativeBf16MatMul() &&
      kernels::cpu::CheckBf16MatMul().ok()) {
    precisions.push_back(model::MatMulPrecision::kBfloat16);
  }
  if (precisions.empty()) {
    std::fprintf(stderr, "train_step: this CPU has no bf16 matrix products\n");
    return 1;
  }
  for (Shape shape : kShapes) {
    if (only == "all" ? !shape.on_cpu : only != shape.name) continue;
    if (!shape.on_cpu) {
      std::fprintf(stderr, "train_step: %s is for --device cuda\n", shape.name.c_str());
      return 2;
    }
    if (batch_override > 0) shape.batch = batch_override;
    std::vector<double> ours;
    for (const model::MatMulPrecision precision : precisions) {
      const StepTimes times = TrainStep(shape, steps, precision);
      ours.push_back(times.tokens_per_second);
      Json line = StepLine(shape, model::MatMulPrecisionName(precision));
      line.update({{"threads", kernels::cpu::CpuThreads()},
                   {"tokens_per_second", times.tokens_per_second},
                   {"forward_seconds", times.forward},
                   {"backward_seconds", times.backward},
                   {"optimizer_seconds", times.optimizer},
                   {"model_gflop_per_second",
                    times.tokens_per_second *
                        TrainingFlopsPerToken(ConfigOf(shape), shape.seq_len) * 1e-9}});
      std::printf("%s\n", line.dump().c_str());
      std::fflush(stdout);
    }
    std::printf("%s\n",
                ExpertProducts(shape, 3, precisions.back() == model::MatMulPrecision::kBfloat16)
                    .dump()
                    .c_str());
    if (torch) {
      // PyTorch in the same precisions: each of ours against its match, and all against the
      // fp32 step, the baseline.
      std::vector<double> theirs;
      for (const model::MatMulPrecision precision : precisions) {
        const Json reference = TorchReference(shape, steps, kernels::cpu::CpuThreads(),
                                              precision == model::MatMulPrecision::kBfloat16);
        if (reference.is_null()) break;
        std::printf("%s\n", reference.dump().c_str());
        theirs.push_back(reference.at("tokens_per_second").get<double>());
      }
      if (theirs.size() != precisions.size()) {
        std::printf("%s\n", Json{{"benchmark", "torch_train_step"},
                                 {"config", shape.name},
                                 {"error", "PyTorch not available (apt install python3-torch)"}}
                                .dump()
                                .c_str());
        continue;
      }
      for (size_t p = 0; p < precisions.size(); ++p) {
        Json line = {
            {"benchmark", "train_step_vs_torch"},
            {"config", shape.name},
            {"matmul_precision", model::MatMulPrecisionName(precisions[p])},
            {"fedmoe_tokens_per_second", ours[p]},
            {"torch_precision",
             precisions[p] == model::MatMulPrecision::kBfloat16 ? "bf16 autocast" : "fp32"},
            {"torch_tokens_per_second", theirs[p]},
            {"ratio", ours[p] / theirs[p]}};
        if (precisions[p] != model::MatMulPrecision::kFloat32 &&
            precisions.front() == model::MatMulPrecision::kFloat32) {
          line["ratio_to_torch_fp32"] = ours[p] / theirs.front();
        }
        std::printf("%s\n", line.dump().c_str());
      }
    }
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace
}  // namespace fedmoe::bench

int main(int argc, char** argv) {
  return fedmoe::bench::GuardedMain("train_step", [&] { return fedmoe::bench::Main(argc, argv); });
}
