// Every op that both devices have, run on each device against one reference, in the manner of
// ggml's test-backend-ops: the references are plain loops in double written here, from the
// ops' formulas, sharing no code with either twin. A Backend runs an op on host vectors, so
// each test reads the same for the CPU and for CUDA (the simulator in cuda_sim_test, the GPU in
// cuda_kernels_test, which skips the CUDA half without one).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/dense.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/frozen_linear.h"
#include "kernels/cpu/int8.h"
#include "kernels/cpu/lora.h"
#include "kernels/cpu/moe_routing.h"
#include "kernels/cpu/optimizer.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/cross_entropy.h"
#include "kernels/cuda/dense.h"
#include "kernels/cuda/frozen_linear.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/lora.h"
#include "kernels/cuda/moe_routing.h"
#include "kernels/cuda/optimizer.h"
#include "tests/kernels/cuda_test_support.h"
#include "tests/kernels/gradient_check.h"

namespace fedmoe::kernels {
namespace {

using Floats = std::vector<float>;
using Ints = std::vector<int32_t>;
using testing::Download;
using testing::RandomVector;
using testing::Upload;

// Each op as both devices take it, over host vectors. Backward ops write their gradients,
// except where the op's contract adds (RMSNorm's and the embedding's): the caller zeroes those.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual void RmsNormForward(const Floats& in, const Floats& weight, Floats& out, Floats& rstd,
                              int64_t rows, int64_t width, float eps) = 0;
  virtual void RmsNormBackward(const Floats& in, const Floats& weight, const Floats& rstd,
                               const Floats& d_out, Floats& d_in, Floats& d_weight, int64_t rows,
                               int64_t width) = 0;
  virtual void SwiGluForward(const Floats& gate, const Floats& up, Floats& out) = 0;
  virtual void SwiGluBackward(const Floats& gate, const Floats& up, const Floats& d_out,
                              Floats& d_gate, Floats& d_up) = 0;
  // direction +1 forward, −1 backward.
  virtual void Rope(Floats& x, int64_t batch, int64_t seq_len, int64_t heads,
                    const cpu::RopeTable& table, int direction) = 0;
  // RoPE over `rows` consecutive positions of one sequence from first_position.
  virtual void RopeAt(Floats& x, int64_t rows, int64_t heads, int64_t first_position,
                      const cpu::RopeTable& table) = 0;
  // New queries at positions first_position … against a sequence's cached keys and values.
  virtual void CachedAttention(const Floats& q, const Floats& k_cache, const Floats& v_cache,
                               Floats& out, int64_t rows, int64_t first_position,
                               const cpu::AttentionShape& shape) = 0;
  virtual void EmbeddingForward(const Ints& tokens, const Floats& table, Floats& out, int64_t rows,
                                int64_t width) = 0;
  virtual void EmbeddingBackward(const Ints& tokens, const Floats& d_out, Floats& d_table,
                                 int64_t rows, int64_t width) = 0;
  virtual void RouterTopKForward(const Floats& logits, Floats& probs, Ints& index, Floats& weight,
                                 int64_t rows, int64_t experts, int64_t top_k) = 0;
  virtual void RouterTopKBackward(const Floats& probs, const Ints& index, const Floats& d_weight,
                                  const Floats& d_probs, Floats& d_logits, int64_t rows,
                                  int64_t experts, int64_t top_k) = 0;
  virtual void CrossEntropyBackward(const Floats& logits, const Ints& targets, Floats& d_logits,
                                    Floats& losses, int64_t rows, int64_t vocab, float scale) = 0;
  // The forward pass and, from d_out, the input gradients; each device saves what it saves.
  virtual void CausalAttention(const Floats& q, const Floats& k, const Floats& v,
                               const Floats& d_out, Floats& out, Floats& d_q, Floats& d_k,
                               Floats& d_v, const cpu::AttentionShape& shape) = 0;
  virtual void AdamWUpdate(Floats& parameters, const Floats& gradients, Floats& first,
                           Floats& second, const std::vector<ParameterRange>& ranges,
                           const AdamWStep& step, double norm_squared) = 0;
  // The frozen products: out = in·ŵᵀ, and d_in += d_out·ŵ. `weight` points at host memory.
  virtual void FrozenLinear(const FrozenWeight& weight, const Floats& in, const Floats& d_out,
                            Floats& out, Floats& d_in, int64_t rows) = 0;
  // LoRA's forward, then its backward (d_a skipped when train_a is false).
  virtual void Lora(const Floats& in, const Floats& a, const Floats& b, const Floats& d_out,
                    Floats& low, Floats& out, Floats& d_in, Floats& d_a, Floats& d_b, Floats& d_low,
                    const LoraShape& shape, bool train_a) = 0;
};

class CpuBackend final : public Backend {
 public:
  void RmsNormForward(const Floats& in, const Floats& weight, Floats& out, Floats& rstd,
                      int64_t rows, int64_t width, float eps) override {
    cpu::RmsNormForward(in.data(), weight.data(), out.data(), rstd.data(), rows, width, eps);
  }
  void RmsNormBackward(const Floats& in, const Floats& weight, const Floats& rstd,
                       const Floats& d_out, Floats& d_in, Floats& d_weight, int64_t rows,
                       int64_t width) override {
    cpu::RmsNormBackward(in.data(), weight.data(), rstd.data(), d_out.data(), d_in.data(),
                         d_weight.data(), rows, width);
  }
  void SwiGluForward(const Floats& gate, const Floats& up, Floats& out) override {
    cpu::SwiGluForward(gate.data(), up.data(), out.data(), static_cast<int64_t>(out.size()));
  }
  void SwiGluBackward(const Floats& gate, const Floats& up, const Floats& d_out, Floats& d_gate,
                      Floats& d_up) override {
    cpu::SwiGluBackward(gate.data(), up.data(), d_out.data(), d_gate.data(), d_up.data(),
                        static_cast<int64_t>(d_out.size()));
  }
  void Rope(Floats& x, int64_t batch, int64_t seq_len, int64_t heads, const cpu::RopeTable& table,
            int direction) override {
    if (direction > 0) {
      cpu::RopeForward(x.data(), batch, seq_len, heads, table);
    } else {
      cpu::RopeBackward(x.data(), batch, seq_len, heads, table);
    }
  }
  void RopeAt(Floats& x, int64_t rows, int64_t heads, int64_t first_position,
              const cpu::RopeTable& table) override {
    cpu::RopeForwardAt(x.data(), rows, heads, first_position, table);
  }
  void CachedAttention(const Floats& q, const Floats& k_cache, const Floats& v_cache, Floats& out,
                       int64_t rows, int64_t first_position,
                       const cpu::AttentionShape& shape) override {
    cpu::CachedAttentionForward(q.data(), k_cache.data(), v_cache.data(), out.data(), rows,
                                first_position, shape);
  }
  void EmbeddingForward(const Ints& tokens, const Floats& table, Floats& out, int64_t rows,
                        int64_t width) override {
    cpu::EmbeddingForward(tokens.data(), table.data(), out.data(), rows, width);
  }
  void EmbeddingBackward(const Ints& tokens, const Floats& d_out, Floats& d_table, int64_t rows,
                         int64_t width) override {
    cpu::EmbeddingBackward(tokens.data(), d_out.data(), d_table.data(), rows, width);
  }
  void RouterTopKForward(const Floats& logits, Floats& probs, Ints& index, Floats& weight,
                         int64_t rows, int64_t experts, int64_t top_k) override {
    cpu::RouterTopKForward(logits.data(), probs.data(), index.data(), weight.data(), rows, experts,
                           top_k);
  }
  void RouterTopKBackward(const Floats& probs, const Ints& index, const Floats& d_weight,
                          const Floats& d_probs, Floats& d_logits, int64_t rows, int64_t experts,
                          int64_t top_k) override {
    cpu::RouterTopKBackward(probs.data(), index.data(), d_weight.data(), d_probs.data(),
                            d_logits.data(), rows, experts, top_k);
  }
  void CrossEntropyBackward(const Floats& logits, const Ints& targets, Floats& d_logits,
                            Floats& losses, int64_t rows, int64_t vocab, float scale) override {
    cpu::CrossEntropyBackward(logits.data(), targets.data(), d_logits.data(), losses.data(), rows,
                              vocab, scale);
  }
  void CausalAttention(const Floats& q, const Floats& k, const Floats& v, const Floats& d_out,
                       Floats& out, Floats& d_q, Floats& d_k, Floats& d_v,
                       const cpu::AttentionShape& shape) override {
    Floats probs(static_cast<size_t>(shape.batch * shape.heads * shape.seq_len * shape.seq_len));
    cpu::CausalAttentionForward(q.data(), k.data(), v.data(), out.data(), probs.data(), shape);
    cpu::CausalAttentionBackward(q.data(), k.data(), v.data(), probs.data(), d_out.data(),
                                 d_q.data(), d_k.data(), d_v.data(), shape);
  }
  void AdamWUpdate(Floats& parameters, const Floats& gradients, Floats& first, Floats& second,
                   const std::vector<ParameterRange>& ranges, const AdamWStep& step,
                   double norm_squared) override {
    cpu::AdamWUpdate(parameters.data(), gradients.data(), first.data(), second.data(), ranges, step,
                     norm_squared);
  }
  void FrozenLinear(const FrozenWeight& weight, const Floats& in, const Floats& d_out, Floats& out,
                    Floats& d_in, int64_t rows) override {
    cpu::FrozenLinearForward(in.data(), weight, out.data(), rows);
    cpu::FrozenLinearBackwardInput(d_out.data(), weight, d_in.data(), rows);
  }
  void Lora(const Floats& in, const Floats& a, const Floats& b, const Floats& d_out, Floats& low,
            Floats& out, Floats& d_in, Floats& d_a, Floats& d_b, Floats& d_low,
            const LoraShape& shape, bool train_a) override {
    cpu::LoraForward(in.data(), a.data(), b.data(), low.data(), out.data(), shape);
    cpu::LoraBackward(in.data(), a.data(), b.data(), low.data(), d_out.data(), d_in.data(),
                      train_a ? d_a.data() : nullptr, d_b.data(), d_low.data(), shape);
  }
};

// Uploads the inputs, runs the CUDA twin, downloads the outputs; a failed launch fails the test.
class CudaBackend final : public Backend {
 public:
  void RmsNormForward(const Floats& in, const Floats& weight, Floats& out, Floats& rstd,
                      int64_t rows, int64_t width, float eps) override {
    auto d_in = Upload(in), d_weight = Upload(weight), d_out = Upload(out), d_rstd = Upload(rstd);
    EXPECT_TRUE(cuda::RmsNormForward(d_in.data(), d_weight.data(), d_out.data(), nullptr,
                                     d_rstd.data(), rows, width, eps)
                    .ok());
    out = Download(d_out);
    rstd = Download(d_rstd);
  }
  void RmsNormBackward(const Floats& in, const Floats& weight, const Floats& rstd,
                       const Floats& d_out, Floats& d_in, Floats& d_weight, int64_t rows,
                       int64_t width) override {
    auto device_in = Upload(in), device_weight = Upload(weight), device_rstd = Upload(rstd),
         device_d_out = Upload(d_out), device_d_in = Upload(d_in),
         device_d_weight = Upload(d_weight),
         scratch = Upload(Floats(static_cast<size_t>(cuda::RmsNormBackwardScratch(rows, width))));
    EXPECT_TRUE(cuda::RmsNormBackward(device_in.data(), device_weight.data(), device_rstd.data(),
                                      device_d_out.data(), device_d_in.data(),
                                      device_d_weight.data(), scratch.data(), rows, width)
                    .ok());
    d_in = Download(device_d_in);
    d_weight = Download(device_d_weight);
  }
  void SwiGluForward(const Floats& gate, const Floats& up, Floats& out) override {
    auto d_gate = Upload(gate), d_up = Upload(up), d_out = Upload(out);
    EXPECT_TRUE(cuda::SwiGluForward(d_gate.data(), d_up.data(), d_out.data(), nullptr,
                                    static_cast<int64_t>(out.size()))
                    .ok());
    out = Download(d_out);
  }
  void SwiGluBackward(const Floats& gate, const Floats& up, const Floats& d_out, Floats& d_gate,
                      Floats& d_up) override {
    auto device_gate = Upload(gate), device_up = Upload(up), device_d_out = Upload(d_out),
         device_d_gate = Upload(d_gate), device_d_up = Upload(d_up);
    EXPECT_TRUE(cuda::SwiGluBackward(device_gate.data(), device_up.data(), device_d_out.data(),
                                     device_d_gate.data(), nullptr, device_d_up.data(), nullptr,
                                     static_cast<int64_t>(d_out.size()))
                    .ok());
    d_gate = Download(device_d_gate);
    d_up = Download(device_d_up);
  }
  void Rope(Floats& x, int64_t batch, int64_t seq_len, int64_t heads, const cpu::RopeTable& table,
            int direction) override {
    const auto values = static_cast<size_t>(seq_len * table.head_dim() / 2);
    auto cos = Upload(Floats(table.cos(0), table.cos(0) + values));
    auto sin = Upload(Floats(table.sin(0), table.sin(0) + values));
    auto device_x = Upload(x);
    const cuda::DeviceRopeTable device_table{
        .cos = cos.data(), .sin = sin.data(), .head_dim = table.head_dim()};
    EXPECT_TRUE((direction > 0
                     ? cuda::RopeForward(device_x.data(), batch, seq_len, heads, device_table)
                     : cuda::RopeBackward(device_x.data(), batch, seq_len, heads, device_table))
                    .ok());
    x = Download(device_x);
  }
  void RopeAt(Floats& x, int64_t rows, int64_t heads, int64_t first_position,
              const cpu::RopeTable& table) override {
    const auto values = static_cast<size_t>(table.max_positions() * table.head_dim() / 2);
    auto cos = Upload(Floats(table.cos(0), table.cos(0) + values));
    auto sin = Upload(Floats(table.sin(0), table.sin(0) + values));
    auto device_x = Upload(x);
    const cuda::DeviceRopeTable device_table{
        .cos = cos.data(), .sin = sin.data(), .head_dim = table.head_dim()};
    EXPECT_TRUE(
        cuda::RopeForwardAt(device_x.data(), rows, heads, first_position, device_table).ok());
    x = Download(device_x);
  }
  void CachedAttention(const Floats& q, const Floats& k_cache, const Floats& v_cache, Floats& out,
                       int64_t rows, int64_t first_position,
                       const cpu::AttentionShape& shape) override {
    auto device_q = Upload(q), device_k = Upload(k_cache), device_v = Upload(v_cache),
         device_out = Upload(out),
         scratch = Upload(Floats(
             static_cast<size_t>(cuda::CachedAttentionScratch(rows, first_position, shape))));
    EXPECT_TRUE(cuda::CachedAttentionForward(device_q.data(), device_k.data(), device_v.data(),
                                             device_out.data(), rows, first_position, shape,
                                             scratch.data())
                    .ok());
    out = Download(device_out);
  }
  void EmbeddingForward(const Ints& tokens, const Floats& table, Floats& out, int64_t rows,
                        int64_t width) override {
    auto d_tokens = Upload(tokens);
    auto d_table = Upload(table), d_out = Upload(out);
    EXPECT_TRUE(
        cuda::EmbeddingForward(d_tokens.data(), d_table.data(), d_out.data(), rows, width).ok());
    out = Download(d_out);
  }
  void EmbeddingBackward(const Ints& tokens, const Floats& d_out, Floats& d_table, int64_t rows,
                         int64_t width) override {
    auto device_tokens = Upload(tokens);
    auto device_d_out = Upload(d_out), device_d_table = Upload(d_table);
    EXPECT_TRUE(cuda::EmbeddingBackward(device_tokens.data(), device_d_out.data(),
                                        device_d_table.data(), rows, width)
                    .ok());
    d_table = Download(device_d_table);
  }
  void RouterTopKForward(const Floats& logits, Floats& probs, Ints& index, Floats& weight,
                         int64_t rows, int64_t experts, int64_t top_k) override {
    auto d_logits = Upload(logits), d_probs = Upload(probs), d_weight = Upload(weight);
    auto d_index = Upload(index);
    EXPECT_TRUE(cuda::RouterTopKForward(d_logits.data(), d_probs.data(), d_index.data(),
                                        d_weight.data(), rows, experts, top_k)
                    .ok());
    probs = Download(d_probs);
    index = Download(d_index);
    weight = Download(d_weight);
  }
  void RouterTopKBackward(const Floats& probs, const Ints& index, const Floats& d_weight,
                          const Floats& d_probs, Floats& d_logits, int64_t rows, int64_t experts,
                          int64_t top_k) override {
    auto device_probs = Upload(probs), device_d_weight = Upload(d_weight),
         device_d_probs = Upload(d_probs), device_d_logits = Upload(d_logits);
    auto device_index = Upload(index);
    EXPECT_TRUE(cuda::RouterTopKBackward(device_probs.data(), device_index.data(),
                                         device_d_weight.data(), device_d_probs.data(),
                                         device_d_logits.data(), rows, experts, top_k)
                    .ok());
    d_logits = Download(device_d_logits);
  }
  void CrossEntropyBackward(const Floats& logits, const Ints& targets, Floats& d_logits,
                            Floats& losses, int64_t rows, int64_t vocab, float scale) override {
    auto device_logits = Upload(logits), device_d_logits = Upload(d_logits),
         device_losses = Upload(losses);
    auto device_targets = Upload(targets);
    EXPECT_TRUE(cuda::CrossEntropyBackward(device_logits.data(), device_targets.data(),
                                           device_d_logits.data(), device_losses.data(), rows,
                                           vocab, scale)
                    .ok());
    d_logits = Download(device_d_logits);
    losses = Download(device_losses);
  }
  void CausalAttention(const Floats& q, const Floats& k, const Floats& v, const Floats& d_out,
                       Floats& out, Floats& d_q, Floats& d_k, Floats& d_v,
                       const cpu::AttentionShape& shape) override {
    auto device_q = Upload(q), device_k = Upload(k), device_v = Upload(v),
         device_d_out = Upload(d_out), device_out = Upload(out), device_d_q = Upload(d_q),
         device_d_k = Upload(d_k), device_d_v = Upload(d_v),
         logsumexp = Upload(Floats(static_cast<size_t>(shape.batch * shape.heads * shape.seq_len))),
         scratch = Upload(Floats(static_cast<size_t>(cuda::CausalAttentionBackwardScratch(shape))));
    const auto arithmetic = cuda::AttentionArithmetic::kFloat32;
    EXPECT_TRUE(cuda::CausalAttentionForward(device_q.data(), device_k.data(), device_v.data(),
                                             device_out.data(), logsumexp.data(), shape, arithmetic)
                    .ok());
    EXPECT_TRUE(cuda::CausalAttentionBackward(
                    device_q.data(), device_k.data(), device_v.data(), device_out.data(),
                    logsumexp.data(), device_d_out.data(), device_d_q.data(), device_d_k.data(),
                    device_d_v.data(), scratch.data(), shape, arithmetic)
                    .ok());
    out = Download(device_out);
    d_q = Download(device_d_q);
    d_k = Download(device_d_k);
    d_v = Download(device_d_v);
  }
  void AdamWUpdate(Floats& parameters, const Floats& gradients, Floats& first, Floats& second,
                   const std::vector<ParameterRange>& ranges, const AdamWStep& step,
                   double norm_squared) override {
    absl::StatusOr<cuda::DeviceRanges> device_ranges = cuda::DeviceRanges::Create(ranges);
    ASSERT_TRUE(device_ranges.ok()) << device_ranges.status();
    auto device_parameters = Upload(parameters), device_gradients = Upload(gradients),
         device_first = Upload(first), device_second = Upload(second);
    auto device_norm = Upload(std::vector<double>{norm_squared});
    EXPECT_TRUE(cuda::AdamWUpdate(device_parameters.data(), nullptr, device_gradients.data(),
                                  device_first.data(), device_second.data(), *device_ranges, step,
                                  device_norm.data())
                    .ok());
    parameters = Download(device_parameters);
    first = Download(device_first);
    second = Download(device_second);
  }
  void FrozenLinear(const FrozenWeight& weight, const Floats& in, const Floats& d_out, Floats& out,
                    Floats& d_in, int64_t rows) override {
    absl::StatusOr<cuda::Blas> blas = cuda::Blas::Create();
    ASSERT_TRUE(blas.ok()) << blas.status();
    const auto count = static_cast<size_t>(weight.rows * weight.columns);
    const auto* bytes = static_cast<const uint8_t*>(weight.values);
    const size_t value_bytes = weight.format == WeightFormat::kFloat32    ? 4
                               : weight.format == WeightFormat::kBfloat16 ? 2
                                                                          : 1;
    auto device_values = Upload(std::vector<uint8_t>(bytes, bytes + count * value_bytes));
    auto device_scales =
        Upload(weight.scales == nullptr
                   ? Floats(1)
                   : Floats(weight.scales, weight.scales + weight.rows * weight.groups_per_row()));
    FrozenWeight on_device = weight;
    on_device.values = device_values.data();
    on_device.scales = weight.scales == nullptr ? nullptr : device_scales.data();
    auto device_in = Upload(in), device_d_out = Upload(d_out), device_out = Upload(out),
         device_d_in = Upload(d_in),
         scratch = Upload(Floats(
             std::max<size_t>(1, static_cast<size_t>(cuda::FrozenLinearScratch(on_device)))));
    EXPECT_TRUE(cuda::FrozenLinearForward(*blas, device_in.data(), on_device, device_out.data(),
                                          rows, scratch.data())
                    .ok());
    EXPECT_TRUE(cuda::FrozenLinearBackwardInput(*blas, device_d_out.data(), on_device,
                                                device_d_in.data(), rows, scratch.data())
                    .ok());
    out = Download(device_out);
    d_in = Download(device_d_in);
  }
  void Lora(const Floats& in, const Floats& a, const Floats& b, const Floats& d_out, Floats& low,
            Floats& out, Floats& d_in, Floats& d_a, Floats& d_b, Floats& d_low,
            const LoraShape& shape, bool train_a) override {
    absl::StatusOr<cuda::Blas> blas = cuda::Blas::Create();
    ASSERT_TRUE(blas.ok()) << blas.status();
    auto device_in = Upload(in), device_a = Upload(a), device_b = Upload(b),
         device_d_out = Upload(d_out), device_low = Upload(low), device_out = Upload(out),
         device_d_in = Upload(d_in), device_d_a = Upload(d_a), device_d_b = Upload(d_b),
         device_d_low = Upload(d_low);
    EXPECT_TRUE(cuda::LoraForward(*blas, device_in.data(), device_a.data(), device_b.data(),
                                  device_low.data(), device_out.data(), shape)
                    .ok());
    EXPECT_TRUE(cuda::LoraBackward(*blas, device_in.data(), device_a.data(), device_b.data(),
                                   device_low.data(), device_d_out.data(), device_d_in.data(),
                                   train_a ? device_d_a.data() : nullptr, device_d_b.data(),
                                   device_d_low.data(), shape)
                    .ok());
    low = Download(device_low);
    out = Download(device_out);
    d_in = Download(device_d_in);
    d_a = Download(device_d_a);
    d_b = Download(device_d_b);
    d_low = Download(device_d_low);
  }
};

enum class Device { kCpu, kCuda };

class BackendOpsTest : public ::testing::TestWithParam<Device> {
 protected:
  void SetUp() override {
    if (GetParam() == Device::kCuda) {
      FEDMOE_REQUIRE_CUDA();
      backend_ = std::make_unique<CudaBackend>();
    } else {
      backend_ = std::make_unique<CpuBackend>();
    }
  }

  // Within `absolute` plus a relative 1e-5 of the double reference: a few float roundings of
  // the largest term, whatever order either device adds in.
  static void ExpectNear(const Floats& actual, const std::vector<double>& expected, double absolute,
                         const std::string& name) {
    ASSERT_EQ(actual.size(), expected.size()) << name;
    for (size_t i = 0; i < actual.size(); ++i) {
      ASSERT_NEAR(actual[i], expected[i], absolute + 1e-5 * std::abs(expected[i]))
          << name << " at " << i;
    }
  }

  std::unique_ptr<Backend> backend_;
};

double Sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

TEST_P(BackendOpsTest, RmsNorm) {
  constexpr int64_t kRows = 7;
  constexpr int64_t kWidth = 45;
  constexpr float kEps = 1e-5F;
  const Floats in = RandomVector(kRows * kWidth, 1), weight = RandomVector(kWidth, 2),
               d_out = RandomVector(kRows * kWidth, 3);
  std::vector<double> out(in.size()), rstd(kRows), d_in(in.size()), d_weight(kWidth);
  for (int64_t r = 0; r < kRows; ++r) {
    const float* x = in.data() + r * kWidth;
    double squares = 0;
    for (int64_t i = 0; i < kWidth; ++i) squares += double{x[i]} * x[i];
    rstd[r] = 1.0 / std::sqrt(squares / kWidth + kEps);
    double projection = 0;  // Σ w·dy·x
    for (int64_t i = 0; i < kWidth; ++i) {
      out[r * kWidth + i] = x[i] * rstd[r] * weight[i];
      projection += double{weight[i]} * d_out[r * kWidth + i] * x[i];
      d_weight[i] += double{d_out[r * kWidth + i]} * x[i] * rstd[r];
    }
    for (int64_t i = 0; i < kWidth; ++i) {
      d_in[r * kWidth + i] = rstd[r] * weight[i] * d_out[r * kWidth + i] -
                             x[i] * std::pow(rstd[r], 3) * projection / kWidth;
    }
  }
  Floats got_out(in.size()), got_rstd(kRows), got_d_in(in.size(), 0), got_d_weight(kWidth, 0);
  backend_->RmsNormForward(in, weight, got_out, got_rstd, kRows, kWidth, kEps);
  ExpectNear(got_out, out, 1e-6, "out");
  ExpectNear(got_rstd, rstd, 1e-6, "rstd");
  backend_->RmsNormBackward(in, weight, got_rstd, d_out, got_d_in, got_d_weight, kRows, kWidth);
  ExpectNear(got_d_in, d_in, 1e-5, "d_in");
  ExpectNear(got_d_weight, d_weight, 1e-5, "d_weight");
}

TEST_P(BackendOpsTest, SwiGlu) {
  constexpr size_t kValues = 1000;
  const Floats gate = RandomVector(kValues, 4), up = RandomVector(kValues, 5),
               d_out = RandomVector(kValues, 6);
  std::vector<double> out(kValues), d_gate(kValues), d_up(kValues);
  for (size_t i = 0; i < kValues; ++i) {
    const double s = Sigmoid(gate[i]);
    out[i] = gate[i] * s * up[i];
    d_gate[i] = d_out[i] * up[i] * s * (1 + gate[i] * (1 - s));
    d_up[i] = d_out[i] * gate[i] * s;
  }
  Floats got_out(kValues), got_d_gate(kValues), got_d_up(kValues);
  backend_->SwiGluForward(gate, up, got_out);
  ExpectNear(got_out, out, 1e-6, "out");
  backend_->SwiGluBackward(gate, up, d_out, got_d_gate, got_d_up);
  ExpectNear(got_d_gate, d_gate, 1e-6, "d_gate");
  ExpectNear(got_d_up, d_up, 1e-6, "d_up");
}

TEST_P(BackendOpsTest, RopeAndItsTranspose) {
  constexpr int64_t kBatch = 2, kSeq = 9, kHeads = 3, kHeadDim = 16;
  constexpr double kTheta = 10000;
  const cpu::RopeTable table(kSeq, kHeadDim, kTheta);
  const Floats x = RandomVector(kBatch * kSeq * kHeads * kHeadDim, 7);
  std::vector<double> forward(x.size()), backward(x.size());
  for (int64_t row = 0; row < kBatch * kSeq; ++row) {
    const int64_t position = row % kSeq;
    for (int64_t head = 0; head < kHeads; ++head) {
      const int64_t base = (row * kHeads + head) * kHeadDim;
      for (int64_t i = 0; i < kHeadDim / 2; ++i) {
        const double angle = position * std::pow(kTheta, -2.0 * static_cast<double>(i) / kHeadDim);
        const double a = x[base + i], b = x[base + i + kHeadDim / 2];
        forward[base + i] = a * std::cos(angle) - b * std::sin(angle);
        forward[base + i + kHeadDim / 2] = b * std::cos(angle) + a * std::sin(angle);
        backward[base + i] = a * std::cos(angle) + b * std::sin(angle);
        backward[base + i + kHeadDim / 2] = b * std::cos(angle) - a * std::sin(angle);
      }
    }
  }
  Floats rotated = x, unrotated = x;
  backend_->Rope(rotated, kBatch, kSeq, kHeads, table, 1);
  ExpectNear(rotated, forward, 1e-6, "forward");
  backend_->Rope(unrotated, kBatch, kSeq, kHeads, table, -1);
  ExpectNear(unrotated, backward, 1e-6, "backward");
}

TEST_P(BackendOpsTest, RopeAtAPositionRotatesByThePosition) {
  constexpr int64_t kRows = 3, kFirst = 7, kHeads = 2, kHeadDim = 16;
  constexpr double kTheta = 500000;
  const cpu::RopeTable table(kFirst + kRows, kHeadDim, kTheta);
  Floats x = RandomVector(kRows * kHeads * kHeadDim, 8);
  std::vector<double> expected(x.size());
  for (int64_t row = 0; row < kRows; ++row) {
    for (int64_t head = 0; head < kHeads; ++head) {
      const int64_t base = (row * kHeads + head) * kHeadDim;
      for (int64_t i = 0; i < kHeadDim / 2; ++i) {
        const double angle =
            (kFirst + row) * std::pow(kTheta, -2.0 * static_cast<double>(i) / kHeadDim);
        const double a = x[base + i], b = x[base + i + kHeadDim / 2];
        expected[base + i] = a * std::cos(angle) - b * std::sin(angle);
        expected[base + i + kHeadDim / 2] = b * std::cos(angle) + a * std::sin(angle);
      }
    }
  }
  backend_->RopeAt(x, kRows, kHeads, kFirst, table);
  ExpectNear(x, expected, 1e-6, "rotated");
}

// Prefill (rows from position 0) and decoding (one row, or a few, at the end of a longer
// cache), with grouped KV heads and a window shorter than the cache.
TEST_P(BackendOpsTest, CachedAttentionSeesEachRowsWindowOfTheCache) {
  const cpu::AttentionShape shape{
      .batch = 1, .seq_len = 0, .heads = 4, .kv_heads = 2, .head_dim = 16, .sliding_window = 5};
  const int64_t width = shape.heads * shape.head_dim, kv_width = shape.kv_heads * shape.head_dim;
  const int64_t group = shape.heads / shape.kv_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(shape.head_dim));
  struct Case {
    int64_t rows, first;
  };
  for (const Case c : {Case{6, 0}, Case{1, 11}, Case{3, 9}}) {
    SCOPED_TRACE(::testing::Message() << c.rows << " rows from position " << c.first);
    const int64_t cached = c.first + c.rows;
    const Floats q = RandomVector(c.rows * width, 21 + c.first),
                 k = RandomVector(cached * kv_width, 22 + c.first),
                 v = RandomVector(cached * kv_width, 23 + c.first);
    std::vector<double> expected(q.size(), 0);
    for (int64_t r = 0; r < c.rows; ++r) {
      const int64_t position = c.first + r;
      const int64_t first_key = std::max<int64_t>(0, position - shape.sliding_window + 1);
      for (int64_t h = 0; h < shape.heads; ++h) {
        const int64_t kv = (h / group) * shape.head_dim;
        std::vector<double> p;
        double top = -INFINITY, total = 0;
        for (int64_t j = first_key; j <= position; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < shape.head_dim; ++d) {
            dot += double{q[r * width + h * shape.head_dim + d]} * k[j * kv_width + kv + d];
          }
          p.push_back(dot * scale);
          top = std::max(top, p.back());
        }
        for (double& value : p) total += value = std::exp(value - top);
        for (int64_t j = first_key; j <= position; ++j) {
          for (int64_t d = 0; d < shape.head_dim; ++d) {
            expected[r * width + h * shape.head_dim + d] +=
                p[j - first_key] / total * v[j * kv_width + kv + d];
          }
        }
      }
    }
    Floats out(q.size());
    backend_->CachedAttention(q, k, v, out, c.rows, c.first, shape);
    ExpectNear(out, expected, 1e-5, "out");
  }
}

TEST_P(BackendOpsTest, EmbeddingGathersRowsAndAddsRepeatedTokens) {
  constexpr int64_t kVocab = 11, kWidth = 33;
  const Ints tokens = {3, 0, 10, 3, 3, 7};
  const auto rows = static_cast<int64_t>(tokens.size());
  const Floats table = RandomVector(kVocab * kWidth, 8), d_out = RandomVector(rows * kWidth, 9);
  std::vector<double> out(static_cast<size_t>(rows * kWidth)), d_table(table.size(), 0.5);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < kWidth; ++i) {
      out[r * kWidth + i] = table[tokens[r] * kWidth + i];
      d_table[tokens[r] * kWidth + i] += d_out[r * kWidth + i];
    }
  }
  Floats got_out(out.size()), got_d_table(table.size(), 0.5F);
  backend_->EmbeddingForward(tokens, table, got_out, rows, kWidth);
  ExpectNear(got_out, out, 0, "out");
  backend_->EmbeddingBackward(tokens, d_out, got_d_table, rows, kWidth);
  ExpectNear(got_d_table, d_table, 1e-6, "d_table (added to what was there)");
}

TEST_P(BackendOpsTest, RouterTopK) {
  constexpr int64_t kRows = 6, kExperts = 8, kTopK = 3;
  Floats logits = RandomVector(kRows * kExperts, 10);
  logits[1] = logits[2];  // a tie: the lower index wins
  const Floats d_weight = RandomVector(kRows * kTopK, 11),
               d_probs = RandomVector(kRows * kExperts, 12);
  std::vector<double> probs(logits.size()), weight(kRows * kTopK), d_logits(logits.size());
  Ints index(kRows * kTopK);
  for (int64_t r = 0; r < kRows; ++r) {
    const float* z = logits.data() + r * kExperts;
    double* p = probs.data() + r * kExperts;
    const double top = *std::max_element(z, z + kExperts);
    double total = 0;
    for (int64_t e = 0; e < kExperts; ++e) total += p[e] = std::exp(z[e] - top);
    for (int64_t e = 0; e < kExperts; ++e) p[e] /= total;
    std::vector<int32_t> order(kExperts);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return z[a] > z[b]; });
    double chosen = 0;
    for (int64_t j = 0; j < kTopK; ++j) chosen += p[order[j]];
    // d logits through w_j = p_j / S and the softmax, from the chain rule written out.
    std::vector<double> dp(p, p + kExperts);
    for (int64_t e = 0; e < kExperts; ++e) dp[e] = d_probs[r * kExperts + e];
    for (int64_t j = 0; j < kTopK; ++j) {
      index[r * kTopK + j] = order[j];
      weight[r * kTopK + j] = p[order[j]] / chosen;
      for (int64_t i = 0; i < kTopK; ++i) {
        // ∂w_i/∂p_j = (δ_ij·S − p_i) / S²
        const double partial = ((i == j ? chosen : 0.0) - p[order[i]]) / (chosen * chosen);
        dp[order[j]] += d_weight[r * kTopK + i] * partial;
      }
    }
    double dot = 0;
    for (int64_t e = 0; e < kExperts; ++e) dot += p[e] * dp[e];
    for (int64_t e = 0; e < kExperts; ++e) d_logits[r * kExperts + e] = p[e] * (dp[e] - dot);
  }
  Floats got_probs(logits.size()), got_weight(weight.size()), got_d_logits(logits.size());
  Ints got_index(index.size());
  backend_->RouterTopKForward(logits, got_probs, got_index, got_weight, kRows, kExperts, kTopK);
  ExpectNear(got_probs, probs, 1e-6, "probs");
  EXPECT_EQ(got_index, index);
  ExpectNear(got_weight, weight, 1e-6, "weight");
  backend_->RouterTopKBackward(got_probs, got_index, d_weight, d_probs, got_d_logits, kRows,
                               kExperts, kTopK);
  ExpectNear(got_d_logits, d_logits, 1e-5, "d_logits");
}

TEST_P(BackendOpsTest, CrossEntropySkipsUncountedRows) {
  constexpr int64_t kRows = 5, kVocab = 37;
  constexpr float kScale = 0.25F;
  const Floats logits = RandomVector(kRows * kVocab, 13);
  const Ints targets = {4, -1, 36, 0, 17};
  std::vector<double> losses(kRows, 0), d_logits(logits.size(), 0);
  for (int64_t r = 0; r < kRows; ++r) {
    if (targets[r] < 0) continue;
    const float* z = logits.data() + r * kVocab;
    const double top = *std::max_element(z, z + kVocab);
    double total = 0;
    for (int64_t v = 0; v < kVocab; ++v) total += std::exp(z[v] - top);
    losses[r] = top + std::log(total) - z[targets[r]];
    for (int64_t v = 0; v < kVocab; ++v) {
      d_logits[r * kVocab + v] = kScale * (std::exp(z[v] - top) / total - (v == targets[r]));
    }
  }
  Floats got_losses(kRows), got_d_logits(logits.size(), 9.0F);
  backend_->CrossEntropyBackward(logits, targets, got_d_logits, got_losses, kRows, kVocab, kScale);
  ExpectNear(got_losses, losses, 1e-5, "losses");
  ExpectNear(got_d_logits, d_logits, 1e-6, "d_logits (written, not added)");
}

TEST_P(BackendOpsTest, CausalAttentionWithGroupedKeyValueHeads) {
  const cpu::AttentionShape shape{
      .batch = 2, .seq_len = 13, .heads = 4, .kv_heads = 2, .head_dim = 16};
  const int64_t width = shape.heads * shape.head_dim, kv_width = shape.kv_heads * shape.head_dim;
  const int64_t rows = shape.batch * shape.seq_len;
  const Floats q = RandomVector(rows * width, 14), k = RandomVector(rows * kv_width, 15),
               v = RandomVector(rows * kv_width, 16), d_out = RandomVector(rows * width, 17);
  std::vector<double> out(q.size(), 0), d_q(q.size(), 0), d_k(k.size(), 0), d_v(v.size(), 0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(shape.head_dim));
  const int64_t group = shape.heads / shape.kv_heads;
  for (int64_t b = 0; b < shape.batch; ++b) {
    for (int64_t h = 0; h < shape.heads; ++h) {
      const int64_t kv = h / group;
      auto q_at = [&](int64_t t) { return (b * shape.seq_len + t) * width + h * shape.head_dim; };
      auto kv_at = [&](int64_t t) {
        return (b * shape.seq_len + t) * kv_width + kv * shape.head_dim;
      };
      for (int64_t t = 0; t < shape.seq_len; ++t) {
        // p_s = softmax over s ≤ t of q_t·k_s·scale.
        std::vector<double> p(static_cast<size_t>(t + 1));
        double top = -INFINITY, total = 0;
        for (int64_t s = 0; s <= t; ++s) {
          double dot = 0;
          for (int64_t d = 0; d < shape.head_dim; ++d)
            dot += double{q[q_at(t) + d]} * k[kv_at(s) + d];
          top = std::max(top, p[s] = dot * scale);
        }
        for (double& value : p) total += value = std::exp(value - top);
        for (double& value : p) value /= total;
        // dp_s = d_out_t·v_s; ds_s = p_s·(dp_s − Σ p·dp).
        std::vector<double> dp(p.size());
        double expected_dp = 0;
        for (int64_t s = 0; s <= t; ++s) {
          for (int64_t d = 0; d < shape.head_dim; ++d) {
            out[q_at(t) + d] += p[s] * v[kv_at(s) + d];
            dp[s] += double{d_out[q_at(t) + d]} * v[kv_at(s) + d];
            d_v[kv_at(s) + d] += p[s] * d_out[q_at(t) + d];
          }
          expected_dp += p[s] * dp[s];
        }
        for (int64_t s = 0; s <= t; ++s) {
          const double ds = p[s] * (dp[s] - expected_dp) * scale;
          for (int64_t d = 0; d < shape.head_dim; ++d) {
            d_q[q_at(t) + d] += ds * k[kv_at(s) + d];
            d_k[kv_at(s) + d] += ds * q[q_at(t) + d];
          }
        }
      }
    }
  }
  Floats got_out(q.size()), got_d_q(q.size()), got_d_k(k.size()), got_d_v(v.size());
  backend_->CausalAttention(q, k, v, d_out, got_out, got_d_q, got_d_k, got_d_v, shape);
  ExpectNear(got_out, out, 1e-5, "out");
  ExpectNear(got_d_q, d_q, 1e-5, "d_q");
  ExpectNear(got_d_k, d_k, 1e-5, "d_k");
  ExpectNear(got_d_v, d_v, 1e-5, "d_v");
}

TEST_P(BackendOpsTest, AdamWClipsDecaysAndLeavesOtherRangesAlone) {
  constexpr size_t kValues = 300;
  const Floats gradients = RandomVector(kValues, 18);
  Floats parameters = RandomVector(kValues, 19), first = RandomVector(kValues, 20), second(kValues);
  for (size_t i = 0; i < kValues; ++i) second[i] = std::abs(first[i]) * 0.1F;
  // Two ranges, the second without decay; values 100..149 belong to neither.
  const std::vector<ParameterRange> ranges = {{.offset = 0, .size = 100, .decay = true},
                                              {.offset = 150, .size = 150, .decay = false}};
  constexpr double kLr = 0.01, kDecay = 0.1, kBeta1 = 0.9, kBeta2 = 0.999, kEpsilon = 1e-8;
  constexpr int64_t kStep = 3;
  constexpr double kNormSquared = 16.0, kMaxNorm = 2.0;  // ‖g‖ = 4: clipped by a half
  const AdamWStep step = MakeAdamWStep(kBeta1, kBeta2, kEpsilon, kDecay, kLr, kStep, kMaxNorm);
  std::vector<double> expected_theta(parameters.begin(), parameters.end());
  std::vector<double> expected_m(first.begin(), first.end()),
      expected_v(second.begin(), second.end());
  for (const ParameterRange& range : ranges) {
    for (int64_t i = range.offset; i < range.offset + range.size; ++i) {
      const double g = 0.5 * gradients[i];
      expected_m[i] = kBeta1 * first[i] + (1 - kBeta1) * g;
      expected_v[i] = kBeta2 * second[i] + (1 - kBeta2) * g * g;
      const double m_hat = expected_m[i] / (1 - std::pow(kBeta1, kStep));
      const double v_hat = expected_v[i] / (1 - std::pow(kBeta2, kStep));
      expected_theta[i] = parameters[i] - kLr * (m_hat / (std::sqrt(v_hat) + kEpsilon) +
                                                 (range.decay ? kDecay * parameters[i] : 0.0));
    }
  }
  backend_->AdamWUpdate(parameters, gradients, first, second, ranges, step, kNormSquared);
  ExpectNear(first, expected_m, 1e-7, "m");
  ExpectNear(second, expected_v, 1e-7, "v");
  // ε sits inside √v̂ + ε in the reference and √v/√(1−β2^t) + ε in the twins: the same.
  ExpectNear(parameters, expected_theta, 1e-6, "theta");
}

// The frozen products in each format against double loops over the weight decoded here from
// its definition: the fp32 values, bf16 bits widened, scale · q per group of 32 columns.
TEST_P(BackendOpsTest, FrozenLinearInEveryFormat) {
  // 150 output rows: two of the CPU's 64-row tiles and a partial one; 70 or 72 columns: a partial
  // group. On the CPU, 12 input rows take the tiles' GEMM; up to kFusedMaxRows (8) take
  // matrix-vector products per tile at 70 columns, and at 72 or 88 (columns and groups in
  // multiples of 8) the INT8 vector kernel, whose 1, 2 and 3 rows run 4, 2 and 1 chains of sums
  // over blocks of 32, 16 and 8 columns, with a group's last 8 or 24 columns left over.
  for (const auto& [kRows, kIn] : {std::pair<int64_t, int64_t>{5, 70},
                                   {12, 70},
                                   {1, 72},
                                   {1, 88},
                                   {2, 88},
                                   {3, 72},
                                   {5, 72},
                                   {8, 72}}) {
    constexpr int64_t kOut = 150, kGroup = 32;
    const Floats weights = RandomVector(kOut * kIn, 31);
    const cpu::Int8Matrix int8 = cpu::QuantizeInt8(weights, kOut, kIn, kGroup);
    std::vector<uint16_t> bf16(weights.size());
    for (size_t i = 0; i < weights.size(); ++i) {
      uint32_t bits = 0;
      std::memcpy(&bits, &weights[i], sizeof(bits));
      bf16[i] = static_cast<uint16_t>((bits + 0x8000U) >> 16);  // nearest (no ties here)
    }
    const Floats in = RandomVector(kRows * kIn, 32), d_out = RandomVector(kRows * kOut, 33);
    for (const FrozenWeight& weight :
         {FrozenWeight::Float32(weights.data(), kOut, kIn),
          FrozenWeight::Bfloat16(bf16.data(), kOut, kIn), FrozenWeight::Int8(int8)}) {
      std::vector<double> decoded(weights.size());
      for (int64_t o = 0; o < kOut; ++o) {
        for (int64_t c = 0; c < kIn; ++c) {
          const size_t i = static_cast<size_t>(o * kIn + c);
          if (weight.format == WeightFormat::kFloat32) {
            decoded[i] = weights[i];
          } else if (weight.format == WeightFormat::kBfloat16) {
            const uint32_t bits = uint32_t{bf16[i]} << 16;
            float value = 0;
            std::memcpy(&value, &bits, sizeof(value));
            decoded[i] = value;
          } else {
            const int64_t groups = (kIn + kGroup - 1) / kGroup;
            decoded[i] =
                double{int8.scales[static_cast<size_t>(o * groups + c / kGroup)]} * int8.values[i];
          }
        }
      }
      std::vector<double> out(static_cast<size_t>(kRows * kOut)), d_in(in.size(), 0.25);
      for (int64_t r = 0; r < kRows; ++r) {
        for (int64_t o = 0; o < kOut; ++o) {
          for (int64_t c = 0; c < kIn; ++c) {
            out[r * kOut + o] += double{in[r * kIn + c]} * decoded[o * kIn + c];
            d_in[r * kIn + c] += double{d_out[r * kOut + o]} * decoded[o * kIn + c];
          }
        }
      }
      Floats got_out(out.size(), 9.0F), got_d_in(in.size(), 0.25F);
      backend_->FrozenLinear(weight, in, d_out, got_out, got_d_in, kRows);
      const std::string format =
          std::to_string(static_cast<int>(weight.format)) + ", rows " + std::to_string(kRows);
      ExpectNear(got_out, out, 1e-5, "out, format " + format);
      ExpectNear(got_d_in, d_in, 1e-5, "d_in (added to what was there), format " + format);
    }
  }
}

// An INT8 weight with int8 activations against double sums over the input quantized here from
// the definition (per row and group: scale = largest / 127, q = round-half-even(x · 127 /
// largest)): out = Σ_groups scale_w · scale_x · Σ q_w · q_x. The input gradient stays the
// weight-only product's. On the CPU, 32-column multiples run the integer vector kernel (rows in
// blocks of 4, then 3, 2 or 1 left); 70 columns or groups of 24 take the plain loops. Row 0's
// second group is all zeros, which quantizes to scale 0.
TEST_P(BackendOpsTest, FrozenLinearWithInt8Activations) {
  struct Case {
    int64_t rows, columns, group;
  };
  for (const Case& shape : {Case{1, 128, 32}, Case{2, 96, 32}, Case{4, 64, 64}, Case{9, 128, 128},
                            Case{7, 160, 32}, Case{5, 70, 32}, Case{3, 72, 24}}) {
    constexpr int64_t kOut = 150;
    const int64_t groups = (shape.columns + shape.group - 1) / shape.group;
    const Floats weights = RandomVector(kOut * shape.columns, 51);
    const cpu::Int8Matrix int8 = cpu::QuantizeInt8(weights, kOut, shape.columns, shape.group);
    Floats in = RandomVector(shape.rows * shape.columns, 52);
    std::fill(in.begin() + shape.group, in.begin() + std::min(2 * shape.group, shape.columns),
              0.0F);
    const Floats d_out = RandomVector(shape.rows * kOut, 53);
    std::vector<int> q_in(in.size());
    std::vector<double> scale_in(static_cast<size_t>(shape.rows * groups));
    for (int64_t r = 0; r < shape.rows; ++r) {
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t begin = g * shape.group, end = std::min(begin + shape.group, shape.columns);
        float largest = 0;
        for (int64_t c = begin; c < end; ++c) {
          largest = std::max(largest, std::abs(in[r * shape.columns + c]));
        }
        scale_in[r * groups + g] = largest / 127.0F;
        for (int64_t c = begin; c < end; ++c) {
          q_in[r * shape.columns + c] =
              largest == 0 ? 0
                           : static_cast<int>(
                                 std::nearbyint(in[r * shape.columns + c] * (127.0F / largest)));
        }
      }
    }
    std::vector<double> out(static_cast<size_t>(shape.rows * kOut)), exact(out.size()),
        d_in(in.size(), 0.25);
    for (int64_t r = 0; r < shape.rows; ++r) {
      for (int64_t o = 0; o < kOut; ++o) {
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t begin = g * shape.group, end = std::min(begin + shape.group, shape.columns);
          int64_t sum = 0;
          for (int64_t c = begin; c < end; ++c) {
            sum += int64_t{int8.values[o * shape.columns + c]} * q_in[r * shape.columns + c];
          }
          out[r * kOut + o] += double{int8.scales[o * groups + g]} * scale_in[r * groups + g] *
                               static_cast<double>(sum);
        }
        for (int64_t c = 0; c < shape.columns; ++c) {
          const double w = double{int8.scales[o * groups + c / shape.group]} *
                           int8.values[o * shape.columns + c];
          exact[r * kOut + o] += double{in[r * shape.columns + c]} * w;
          d_in[r * shape.columns + c] += double{d_out[r * kOut + o]} * w;
        }
      }
    }
    FrozenWeight weight = FrozenWeight::Int8(int8);
    weight.int8_activations = true;
    Floats got_out(out.size(), 9.0F), got_d_in(in.size(), 0.25F);
    backend_->FrozenLinear(weight, in, d_out, got_out, got_d_in, shape.rows);
    const std::string name = "rows " + std::to_string(shape.rows) + ", columns " +
                             std::to_string(shape.columns) + ", group " +
                             std::to_string(shape.group);
    ExpectNear(got_out, out, 1e-5, "out, " + name);
    ExpectNear(got_d_in, d_in, 1e-5, "d_in (weight-only), " + name);
    // And it is still the product: within 2% of the unquantized input's, as a norm.
    double error = 0, total = 0;
    for (size_t i = 0; i < out.size(); ++i) {
      error += (got_out[i] - exact[i]) * (got_out[i] - exact[i]);
      total += exact[i] * exact[i];
    }
    EXPECT_LT(std::sqrt(error / total), 0.02) << name;
  }
}

// LoRA's branch against its formulas: low = s·x·Aᵀ, out += low·Bᵀ; d_b += d_outᵀ·low,
// d_low = s·d_out·B, d_a += d_lowᵀ·x, d_in += d_low·A; with A frozen, d_a untouched.
TEST_P(BackendOpsTest, LoraBranchForwardAndBackward) {
  const LoraShape shape{.rows = 7, .in_features = 20, .out_features = 13, .rank = 3, .scale = 2.5F};
  const Floats in = RandomVector(static_cast<size_t>(shape.rows * shape.in_features), 41),
               a = RandomVector(static_cast<size_t>(shape.rank * shape.in_features), 42),
               b = RandomVector(static_cast<size_t>(shape.out_features * shape.rank), 43),
               d_out = RandomVector(static_cast<size_t>(shape.rows * shape.out_features), 44),
               base_out = RandomVector(d_out.size(), 45);
  std::vector<double> low(static_cast<size_t>(shape.rows * shape.rank)),
      out(base_out.begin(), base_out.end()), d_low(low.size()), d_a(a.size(), 0.5),
      d_b(b.size(), 0.5), d_in(in.size(), 0.5);
  for (int64_t r = 0; r < shape.rows; ++r) {
    for (int64_t k = 0; k < shape.rank; ++k) {
      double sum = 0, back = 0;
      for (int64_t c = 0; c < shape.in_features; ++c) {
        sum += double{in[r * shape.in_features + c]} * a[k * shape.in_features + c];
      }
      for (int64_t o = 0; o < shape.out_features; ++o) {
        back += double{d_out[r * shape.out_features + o]} * b[o * shape.rank + k];
      }
      low[r * shape.rank + k] = shape.scale * sum;
      d_low[r * shape.rank + k] = shape.scale * back;
    }
    for (int64_t o = 0; o < shape.out_features; ++o) {
      for (int64_t k = 0; k < shape.rank; ++k) {
        out[r * shape.out_features + o] += low[r * shape.rank + k] * b[o * shape.rank + k];
        d_b[o * shape.rank + k] +=
            double{d_out[r * shape.out_features + o]} * low[r * shape.rank + k];
      }
    }
    for (int64_t k = 0; k < shape.rank; ++k) {
      for (int64_t c = 0; c < shape.in_features; ++c) {
        d_a[k * shape.in_features + c] += d_low[r * shape.rank + k] * in[r * shape.in_features + c];
        d_in[r * shape.in_features + c] += d_low[r * shape.rank + k] * a[k * shape.in_features + c];
      }
    }
  }
  for (const bool train_a : {true, false}) {
    Floats got_low(low.size()), got_out = base_out, got_d_in(in.size(), 0.5F),
                                got_d_a(a.size(), 0.5F), got_d_b(b.size(), 0.5F),
                                got_d_low(low.size());
    backend_->Lora(in, a, b, d_out, got_low, got_out, got_d_in, got_d_a, got_d_b, got_d_low, shape,
                   train_a);
    ExpectNear(got_low, low, 1e-5, "low");
    ExpectNear(got_out, out, 1e-5, "out (added to)");
    ExpectNear(got_d_low, d_low, 1e-5, "d_low");
    ExpectNear(got_d_b, d_b, 1e-5, "d_b (added to)");
    ExpectNear(got_d_in, d_in, 1e-5, "d_in (added to)");
    ExpectNear(got_d_a, train_a ? d_a : std::vector<double>(a.size(), 0.5), 1e-5,
               train_a ? "d_a (added to)" : "d_a untouched with A frozen");
  }
}

INSTANTIATE_TEST_SUITE_P(Devices, BackendOpsTest, ::testing::Values(Device::kCpu, Device::kCuda),
                         [](const ::testing::TestParamInfo<Device>& device) {
                           return std::string(device.param == Device::kCpu ? "Cpu" : "Cuda");
                         });

}  // namespace
}  // namespace fedmoe::kernels
