// Every CPU backward kernel against central finite differences of its forward kernel, through
// a random linear functional J = ⟨R, out⟩ of the output (so d_out = R).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/dense.h"
#include "kernels/cpu/moe_routing.h"
#include "tests/kernels/gradient_check.h"

namespace fedmoe::kernels::cpu {
namespace {

using testing::Dot;
using testing::ExpectGradientMatches;
using testing::RandomVector;

TEST(CpuBackwardTest, Linear) {
  const int64_t rows = 5, in = 7, out = 6;
  std::vector<float> x = RandomVector(rows * in, 1);
  std::vector<float> w = RandomVector(out * in, 2);
  const std::vector<float> r = RandomVector(rows * out, 3);
  std::vector<float> y(rows * out);
  auto objective = [&] {
    LinearForward(x.data(), w.data(), y.data(), rows, in, out);
    return Dot(y, r);
  };
  std::vector<float> dx(x.size(), 0.5f), dw(w.size(), 0.25f);
  LinearBackward(x.data(), w.data(), r.data(), dx.data(), dw.data(), rows, in, out);
  // The kernels add into gradients: take the starting values back off.
  for (float& v : dx) v -= 0.5f;
  for (float& v : dw) v -= 0.25f;
  ExpectGradientMatches(x, dx, objective, "d_in");
  ExpectGradientMatches(w, dw, objective, "d_weight");
}

TEST(CpuBackwardTest, RmsNorm) {
  const int64_t rows = 4, width = 9;
  std::vector<float> x = RandomVector(rows * width, 4);
  std::vector<float> w = RandomVector(width, 5);
  const std::vector<float> r = RandomVector(rows * width, 6);
  std::vector<float> y(x.size()), rstd(rows);
  auto objective = [&] {
    RmsNormForward(x.data(), w.data(), y.data(), rstd.data(), rows, width, 1e-5f);
    return Dot(y, r);
  };
  objective();
  std::vector<float> dx(x.size(), 0.0f), dw(w.size(), 0.0f);
  RmsNormBackward(x.data(), w.data(), rstd.data(), r.data(), dx.data(), dw.data(), rows, width);
  ExpectGradientMatches(x, dx, objective, "d_in");
  ExpectGradientMatches(w, dw, objective, "d_weight");
}

TEST(CpuBackwardTest, Rope) {
  const int64_t batch = 2, seq_len = 5, heads = 3;
  const RopeTable table(seq_len, 8, 10000.0);
  std::vector<float> x = RandomVector(batch * seq_len * heads * 8, 7);
  const std::vector<float> r = RandomVector(x.size(), 8);
  auto objective = [&] {
    std::vector<float> y = x;
    RopeForward(y.data(), batch, seq_len, heads, table);
    return Dot(y, r);
  };
  std::vector<float> dx = r;
  RopeBackward(dx.data(), batch, seq_len, heads, table);
  ExpectGradientMatches(x, dx, objective, "d_x");
}

TEST(CpuBackwardTest, SwiGluMlp) {
  const int64_t rows = 6, width = 5, inner = 7;
  std::vector<float> x = RandomVector(rows * width, 9);
  std::vector<float> w1 = RandomVector(inner * width, 10, 0.5f);
  std::vector<float> w3 = RandomVector(inner * width, 11, 0.5f);
  std::vector<float> w2 = RandomVector(width * inner, 12, 0.5f);
  const std::vector<float> r = RandomVector(rows * width, 13);
  std::vector<float> gate(rows * inner), up(rows * inner), act(rows * inner), y(rows * width);
  auto objective = [&] {
    SwiGluMlpForward(x.data(), w1.data(), w3.data(), w2.data(), gate.data(), up.data(), act.data(),
                     y.data(), rows, width, inner);
    return Dot(y, r);
  };
  objective();
  std::vector<float> dx(x.size(), 0.0f), dw1(w1.size(), 0.0f), dw3(w3.size(), 0.0f),
      dw2(w2.size(), 0.0f), d_gate(gate.size()), d_up(up.size()), d_act(act.size());
  SwiGluMlpBackward(x.data(), w1.data(), w3.data(), w2.data(), gate.data(), up.data(), act.data(),
                    r.data(), dx.data(), dw1.data(), dw3.data(), dw2.data(), d_gate.data(),
                    d_up.data(), d_act.data(), rows, width, inner);
  ExpectGradientMatches(x, dx, objective, "d_in");
  ExpectGradientMatches(w1, dw1, objective, "d_w1");
  ExpectGradientMatches(w3, dw3, objective, "d_w3");
  ExpectGradientMatches(w2, dw2, objective, "d_w2");
}

class AttentionBackwardTest : public ::testing::TestWithParam<AttentionShape> {};

TEST_P(AttentionBackwardTest, MatchesFiniteDifferences) {
  const AttentionShape shape = GetParam();
  const int64_t rows = shape.batch * shape.seq_len;
  std::vector<float> q = RandomVector(rows * shape.heads * shape.head_dim, 14);
  std::vector<float> k = RandomVector(rows * shape.kv_heads * shape.head_dim, 15);
  std::vector<float> v = RandomVector(rows * shape.kv_heads * shape.head_dim, 16);
  const std::vector<float> r = RandomVector(q.size(), 17);
  std::vector<float> out(q.size());
  std::vector<float> probs(shape.batch * shape.heads * shape.seq_len * shape.seq_len);
  auto objective = [&] {
    CausalAttentionForward(q.data(), k.data(), v.data(), out.data(), probs.data(), shape);
    return Dot(out, r);
  };
  objective();
  std::vector<float> dq(q.size()), dk(k.size()), dv(v.size());
  CausalAttentionBackward(q.data(), k.data(), v.data(), probs.data(), r.data(), dq.data(),
                          dk.data(), dv.data(), shape);
  ExpectGradientMatches(q, dq, objective, "d_q");
  ExpectGradientMatches(k, dk, objective, "d_k");
  ExpectGradientMatches(v, dv, objective, "d_v");
}

// The last two span three of the kernels' 64-row query blocks, the second with a window that
// crosses their boundaries.
INSTANTIATE_TEST_SUITE_P(Shapes, AttentionBackwardTest,
                         ::testing::Values(AttentionShape{2, 6, 2, 2, 4, 0},
                                           AttentionShape{2, 6, 4, 2, 4, 0},
                                           AttentionShape{1, 7, 3, 1, 6, 3},
                                           AttentionShape{1, 150, 2, 1, 4, 0},
                                           AttentionShape{1, 150, 2, 2, 4, 70}));

// The forward pass against softmax over each query's visible keys, computed directly in double.
TEST(AttentionForwardTest, MatchesADirectSoftmaxOverTheVisibleKeys) {
  for (const AttentionShape shape :
       {AttentionShape{2, 150, 4, 2, 8, 0}, AttentionShape{1, 150, 2, 1, 8, 70}}) {
    const int64_t rows = shape.batch * shape.seq_len;
    const int64_t q_width = shape.heads * shape.head_dim;
    const int64_t kv_width = shape.kv_heads * shape.head_dim;
    const std::vector<float> q = RandomVector(rows * q_width, 21);
    const std::vector<float> k = RandomVector(rows * kv_width, 22);
    const std::vector<float> v = RandomVector(rows * kv_width, 23);
    std::vector<float> out(q.size());
    std::vector<float> probs(shape.batch * shape.heads * shape.seq_len * shape.seq_len, -1.0f);
    CausalAttentionForward(q.data(), k.data(), v.data(), out.data(), probs.data(), shape);
    const int64_t group = shape.heads / shape.kv_heads;
    for (int64_t b = 0; b < shape.batch; ++b) {
      for (int64_t h = 0; h < shape.heads; ++h) {
        const int64_t kv = h / group;
        for (int64_t i = 0; i < shape.seq_len; ++i) {
          const int64_t first =
              shape.sliding_window > 0 ? std::max<int64_t>(0, i - shape.sliding_window + 1) : 0;
          std::vector<double> weights(static_cast<size_t>(shape.seq_len), 0.0);
          double total = 0;
          for (int64_t j = first; j <= i; ++j) {
            double score = 0;
            for (int64_t d = 0; d < shape.head_dim; ++d) {
              score += static_cast<double>(
                           q[(b * shape.seq_len + i) * q_width + h * shape.head_dim + d]) *
                       k[(b * shape.seq_len + j) * kv_width + kv * shape.head_dim + d];
            }
            weights[j] = std::exp(score / std::sqrt(static_cast<double>(shape.head_dim)));
            total += weights[j];
          }
          const float* p = &probs[((b * shape.heads + h) * shape.seq_len + i) * shape.seq_len];
          for (int64_t j = 0; j < shape.seq_len; ++j) {
            ASSERT_NEAR(p[j], weights[j] / total, 1e-5) << "row " << i << " key " << j;
          }
          for (int64_t d = 0; d < shape.head_dim; ++d) {
            double expected = 0;
            for (int64_t j = first; j <= i; ++j) {
              expected += weights[j] / total *
                          v[(b * shape.seq_len + j) * kv_width + kv * shape.head_dim + d];
            }
            ASSERT_NEAR(out[(b * shape.seq_len + i) * q_width + h * shape.head_dim + d], expected,
                        1e-5)
                << "row " << i << " dim " << d;
          }
        }
      }
    }
  }
}

TEST(CpuBackwardTest, RouterTopKWithABalanceGradient) {
  const int64_t rows = 7, experts = 6, top_k = 2;
  std::vector<float> logits = RandomVector(rows * experts, 18, 2.0f);
  const std::vector<float> r_weight = RandomVector(rows * top_k, 19);
  const std::vector<float> r_probs = RandomVector(rows * experts, 20);
  std::vector<float> probs(rows * experts), weight(rows * top_k);
  std::vector<int32_t> index(rows * top_k);
  auto objective = [&] {
    RouterTopKForward(logits.data(), probs.data(), index.data(), weight.data(), rows, experts,
                      top_k);
    return Dot(weight, r_weight) + Dot(probs, r_probs);
  };
  objective();
  std::vector<float> d_logits(logits.size());
  RouterTopKBackward(probs.data(), index.data(), r_weight.data(), r_probs.data(), d_logits.data(),
                     rows, experts, top_k);
  ExpectGradientMatches(logits, d_logits, objective, "d_logits");
}

TEST(CpuBackwardTest, GatherAndCombineByExpert) {
  const int64_t rows = 5, top_k = 2, experts = 3, width = 4;
  const std::vector<int32_t> index = {0, 2, 1, 0, 2, 1, 0, 1, 2, 0};
  ExpertPermutation permutation;
  BuildExpertPermutation(index.data(), rows, top_k, experts, permutation);
  std::vector<float> x = RandomVector(rows * width, 21);
  std::vector<float> weight = RandomVector(rows * top_k, 22);
  const std::vector<float> r = RandomVector(rows * width, 23);
  // J = ⟨R, combine(w, gather(x) ⊙ S)⟩ with a fixed per-slot scale S standing in for experts.
  const std::vector<float> slot_scale = RandomVector(rows * top_k * width, 24);
  std::vector<float> permuted(rows * top_k * width), expert_out(permuted.size());
  auto objective = [&] {
    GatherByExpert(x.data(), permutation, permuted.data(), width);
    for (size_t i = 0; i < permuted.size(); ++i) expert_out[i] = permuted[i] * slot_scale[i];
    std::vector<float> out(rows * width, 0.0f);
    CombineExpertOutputs(expert_out.data(), weight.data(), permutation, out.data(), rows, top_k,
                         width);
    return Dot(out, r);
  };
  objective();
  std::vector<float> d_expert_out(permuted.size()), d_weight(weight.size());
  CombineExpertOutputsBackward(expert_out.data(), weight.data(), permutation, r.data(),
                               d_expert_out.data(), d_weight.data(), rows, top_k, width);
  for (size_t i = 0; i < d_expert_out.size(); ++i) d_expert_out[i] *= slot_scale[i];
  std::vector<float> dx(x.size(), 0.0f);
  GatherByExpertBackward(d_expert_out.data(), permutation, dx.data(), rows, top_k, width);
  ExpectGradientMatches(x, dx, objective, "d_in");
  ExpectGradientMatches(weight, d_weight, objective, "d_expert_weight");
}

TEST(CpuBackwardTest, CrossEntropy) {
  const int64_t rows = 4, vocab = 11;
  std::vector<float> logits = RandomVector(rows * vocab, 25, 2.0f);
  const std::vector<int32_t> targets = {3, -1, 10, 0};
  std::vector<float> losses(rows);
  auto objective = [&] {
    CrossEntropyForward(logits.data(), targets.data(), losses.data(), rows, vocab);
    return std::accumulate(losses.begin(), losses.end(), 0.0) / 3.0;
  };
  std::vector<float> d_logits(logits.size());
  std::vector<float> backward_losses(rows);
  EXPECT_EQ(CrossEntropyBackward(logits.data(), targets.data(), d_logits.data(),
                                 backward_losses.data(), rows, vocab, 1.0f / 3.0f),
            3);
  objective();
  for (int64_t row = 0; row < rows; ++row) {
    EXPECT_NEAR(backward_losses[row], losses[row], 1e-6)
        << "the loss backward reports, row " << row;
  }
  ExpectGradientMatches(logits, d_logits, objective, "d_logits", {.samples = 44});
  for (int64_t v = 0; v < vocab; ++v) EXPECT_EQ(d_logits[vocab + v], 0.0f) << "ignored row";
}

}  // namespace
}  // namespace fedmoe::kernels::cpu
