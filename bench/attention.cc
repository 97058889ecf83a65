// GPU flash attention, forward and backward, in its two arithmetics side by side
// (kernels/cuda/attention.h): fp32 on the CUDA cores, which fp32 training uses, and TF32 on the
// tensor cores, which bf16 training uses. Shapes are train_step's small and medium attention,
// with their batch and sequence length. One JSON object per line: milliseconds, and TFLOP/s of
// the useful products (a causal row's visible keys only; the forward pass 2 products, the
// backward 4, recomputation not counted), the TF32 line's speed-up over fp32, and how far its
// output lies from the fp32 one (as a fraction of the largest output).
//
// attention_sim runs the same on the CPU simulator of CUDA, a dry run whose timings mean
// nothing, on a tiny shape.
//
//   build/bin/attention [--config small|medium|all] [--iterations N]
#include "kernels/cuda/attention.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "bench/guarded_main.h"
#include "kernels/cuda/device_memory.h"
#include "kernels/device.h"

namespace fedmoe::bench {
namespace {

using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;
using kernels::cuda::AttentionArithmetic;
using kernels::cuda::AttentionShape;
using kernels::cuda::DeviceArray;

struct NamedShape {
  const char* name;
  AttentionShape shape;
};

const NamedShape kShapes[] = {
    {"tiny", {.batch = 1, .seq_len = 80, .heads = 2, .kv_heads = 1, .head_dim = 32}},
    {"small", {.batch = 8, .seq_len = 256, .heads = 8, .kv_heads = 4, .head_dim = 64}},
    {"medium", {.batch = 8, .seq_len = 1024, .heads = 16, .kv_heads = 16, .head_dim = 128}}};

// (query, key) pairs a causal row sees, over every row and head.
double VisiblePairs(const AttentionShape& shape) {
  double pairs = 0;
  for (int64_t i = 0; i < shape.seq_len; ++i) {
    pairs += static_cast<double>(
        shape.sliding_window > 0 ? std::min<int64_t>(i + 1, shape.sliding_window) : i + 1);
  }
  return pairs * static_cast<double>(shape.batch * shape.heads);
}

absl::StatusOr<DeviceArray<float>> RandomDeviceArray(size_t size, uint32_t seed) {
  std::mt19937 generator(seed);
  std::normal_distribution<float> normal;
  std::vector<float> host(size);
  for (float& value : host) value = normal(generator);
  absl::StatusOr<DeviceArray<float>> device = DeviceArray<float>::Allocate(size);
  if (!device.ok()) return device.status();
  if (absl::Status status = device->CopyFrom(host); !status.ok()) return status;
  return device;
}

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

struct Buffers {
  DeviceArray<float> q, k, v, d_out, out, logsumexp, d_q, d_k, d_v, scratch;
};

absl::StatusOr<Buffers> Allocate(const AttentionShape& shape) {
  const auto rows = static_cast<size_t>(shape.batch * shape.seq_len);
  const auto q_size = rows * static_cast<size_t>(shape.heads * shape.head_dim);
  const auto kv_size = rows * static_cast<size_t>(shape.kv_heads * shape.head_dim);
  Buffers b;
  absl::Status status;
  const auto take = [&](DeviceArray<float>& into, absl::StatusOr<DeviceArray<float>> made) {
    if (made.ok()) {
      into = std::move(*made);
    } else {
      status.Update(made.status());
    }
  };
  take(b.q, RandomDeviceArray(q_size, 1));
  take(b.k, RandomDeviceArray(kv_size, 2));
  take(b.v, RandomDeviceArray(kv_size, 3));
  take(b.d_out, RandomDeviceArray(q_size, 4));
  take(b.out, DeviceArray<float>::Allocate(q_size));
  take(b.logsumexp, DeviceArray<float>::Allocate(rows * static_cast<size_t>(shape.heads)));
  take(b.d_q, DeviceArray<float>::Allocate(q_size));
  take(b.d_k, DeviceArray<float>::Allocate(kv_size));
  take(b.d_v, DeviceArray<float>::Allocate(kv_size));
  take(b.scratch, DeviceArray<float>::Allocate(
                      static_cast<size_t>(kernels::cuda::CausalAttentionBackwardScratch(shape))));
  if (!status.ok()) return status;
  return b;
}

// Times `iterations` forward passes, then as many backward ones, after one of each unmeasured.
absl::StatusOr<Json> Measure(const AttentionShape& shape, AttentionArithmetic arithmetic,
                             int iterations, Buffers& b) {
  const auto forward = [&] {
    return kernels::cuda::CausalAttentionForward(b.q.data(), b.k.data(), b.v.data(), b.out.data(),
                                                 b.logsumexp.data(), shape, arithmetic);
  };
  const auto backward = [&] {
    return kernels::cuda::CausalAttentionBackward(
        b.q.data(), b.k.data(), b.v.data(), b.out.data(), b.logsumexp.data(), b.d_out.data(),
        b.d_q.data(), b.d_k.data(), b.d_v.data(), b.scratch.data(), shape, arithmetic);
  };
  absl::Status status = forward();
  status.Update(backward());
  status.Update(kernels::cuda::Synchronize());
  if (!status.ok()) return status;
  Clock::time_point start = Clock::now();
  for (int i = 0; i < iterations; ++i) status.Update(forward());
  status.Update(kernels::cuda::Synchronize());
  const double forward_seconds = Seconds(start) / iterations;
  start = Clock::now();
  for (int i = 0; i < iterations; ++i) status.Update(backward());
  status.Update(kernels::cuda::Synchronize());
  const double backward_seconds = Seconds(start) / iterations;
  if (!status.ok()) return status;
  const double product_flops = 2.0 * VisiblePairs(shape) * static_cast<double>(shape.head_dim);
  return Json{{"forward_ms", forward_seconds * 1e3},
              {"backward_ms", backward_seconds * 1e3},
              {"forward_tflops", 2 * product_flops / forward_seconds / 1e12},
              {"backward_tflops", 4 * product_flops / backward_seconds / 1e12}};
}

Json Run(const NamedShape& named, int iterations) {
  const AttentionShape& shape = named.shape;
  Json base = {{"benchmark", "attention"},   {"config", named.name},
               {"batch", shape.batch},       {"seq_len", shape.seq_len},
               {"heads", shape.heads},       {"kv_heads", shape.kv_heads},
               {"head_dim", shape.head_dim}, {"iterations", iterations}};
  if (kernels::cuda::IsSimulator()) {
    base["gpu"] = "CPU simulator of CUDA (timings mean nothing)";
  } else {
    const absl::StatusOr<std::string> gpu = kernels::CudaDeviceName(0);
    base["gpu"] = gpu.ok() ? *gpu : std::string(gpu.status().message());
  }
  absl::StatusOr<Buffers> buffers = Allocate(shape);
  if (!buffers.ok()) {
    base["error"] = std::string(buffers.status().message());
    return Json::array({base});
  }
  std::vector<float> fp32_out(buffers->out.size());
  std::vector<float> tf32_out(buffers->out.size());
  Json lines = Json::array();
  double fp32_forward = 0;
  double fp32_backward = 0;
  for (const AttentionArithmetic arithmetic :
       {AttentionArithmetic::kFloat32, AttentionArithmetic::kTensorFloat32}) {
    const bool tensor_cores = arithmetic == AttentionArithmetic::kTensorFloat32;
    Json line = base;
    line["arithmetic"] = tensor_cores ? "tf32 tensor cores" : "fp32";
    absl::StatusOr<Json> measured = Measure(shape, arithmetic, iterations, *buffers);
    if (!measured.ok()) {
      line["error"] = std::string(measured.status().message());
      lines.push_back(line);
      continue;
    }
    line.update(*measured);
    std::vector<float>& out = tensor_cores ? tf32_out : fp32_out;
    if (absl::Status copied = buffers->out.CopyTo(out); !copied.ok()) {
      line["error"] = std::string(copied.message());
    }
    if (tensor_cores && fp32_forward > 0) {
      line["forward_speedup_over_fp32"] = fp32_forward / (*measured)["forward_ms"].get<double>();
      line["backward_speedup_over_fp32"] = fp32_backward / (*measured)["backward_ms"].get<double>();
      double largest = 0;
      double difference = 0;
      for (size_t i = 0; i < out.size(); ++i) {
        largest = std::max(largest, std::abs(static_cast<double>(fp32_out[i])));
        difference = std::max(difference, std::abs(static_cast<double>(out[i]) - fp32_out[i]));
      }
      line["output_difference_of_largest"] = largest > 0 ? difference / largest : difference;
    } else if (!tensor_cores) {
      fp32_forward = (*measured)["forward_ms"].get<double>();
      fp32_backward = (*measured)["backward_ms"].get<double>();
    }
    lines.push_back(line);
  }
  return lines;
}

int Main(int argc, char** argv) {
  std::string config = kernels::cuda::IsSimulator() ? "tiny" : "all";
  int iterations = 10;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--config" && i + 1 < argc) {
      config = argv[++i];
    } else if (flag == "--iterations" && i + 1 < argc) {
      iterations = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: attention [--config tiny|small|medium|all] [--iterations N]\n");
      return 2;
    }
  }
  if (!kernels::cuda::IsSimulator()) {
    if (absl::StatusOr<kernels::Device> gpu = kernels::ResolveDevice("cuda"); !gpu.ok()) {
      std::fprintf(stderr, "attention: %s\n", std::string(gpu.status().message()).c_str());
      return 1;
    }
  }
  bool ran = false;
  bool failed = false;
  for (const NamedShape& named : kShapes) {
    // "all" is the shapes; tiny is the simulator's.
    if (config == "all" ? std::strcmp(named.name, "tiny") == 0 : config != named.name) continue;
    ran = true;
    for (const Json& line : Run(named, iterations)) {
      failed = failed || line.contains("error");
      std::printf("%s\n", line.dump().c_str());
    }
  }
  if (!ran) {
    std::fprintf(stderr, "attention: no config named %s\n", config.c_str());
    return 2;
  }
  return failed ? 1 : 0;
}

}  // namespace
}  // namespace fedmoe::bench

int main(int argc, char** argv) {
  return fedmoe::bench::GuardedMain("attention", [&] { return fedmoe::bench::Main(argc, argv); });
}
