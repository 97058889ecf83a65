#include "tests/model/naive_reference.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "absl/strings/str_cat.h"

namespace fedmoe::testing {
namespace {

using Vector = std::vector<double>;

// A weight matrix [rows, cols] by name, widened to double.
struct Matrix {
  int64_t rows = 0;
  int64_t cols = 0;
  Vector values;
  double at(int64_t r, int64_t c) const { return values[static_cast<size_t>(r * cols + c)]; }
};

Matrix Weight(const model::ModelParameters& parameters, const std::string& name) {
  const model::TensorSpec* spec = parameters.layout().Find(name);
  if (spec == nullptr) std::abort();
  Matrix matrix;
  matrix.rows = spec->shape[0];
  matrix.cols = spec->shape.size() > 1 ? spec->shape[1] : 1;
  const std::span<const float> values = parameters.tensor(*spec);
  matrix.values.assign(values.begin(), values.end());
  return matrix;
}

// y = W·x for W [out, in].
Vector Apply(const Matrix& weight, const Vector& x) {
  Vector y(static_cast<size_t>(weight.rows), 0.0);
  for (int64_t r = 0; r < weight.rows; ++r) {
    for (int64_t c = 0; c < weight.cols; ++c) y[r] += weight.at(r, c) * x[c];
  }
  return y;
}

Vector RmsNorm(const Vector& x, const Matrix& weight, double eps) {
  double mean_square = 0;
  for (const double value : x) mean_square += value * value;
  mean_square /= static_cast<double>(x.size());
  Vector y(x.size());
  for (size_t i = 0; i < x.size(); ++i)
    y[i] = x[i] / std::sqrt(mean_square + eps) * weight.values[i];
  return y;
}

// Rotate-half RoPE on one head vector at `position`.
void Rotate(double* head, int64_t head_dim, int64_t position, double theta) {
  const int64_t half = head_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    const double angle =
        static_cast<double>(position) *
        std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
    const double a = head[i];
    const double b = head[i + half];
    head[i] = a * std::cos(angle) - b * std::sin(angle);
    head[i + half] = b * std::cos(angle) + a * std::sin(angle);
  }
}

Vector Expert(const model::ModelParameters& parameters, const std::string& prefix,
              const Vector& x) {
  const Vector gate = Apply(Weight(parameters, prefix + "w1.weight"), x);
  const Vector up = Apply(Weight(parameters, prefix + "w3.weight"), x);
  Vector hidden(gate.size());
  for (size_t i = 0; i < gate.size(); ++i) {
    hidden[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
  }
  return Apply(Weight(parameters, prefix + "w2.weight"), hidden);
}

}  // namespace

ReferenceOutput NaiveForward(const model::ModelParameters& parameters,
                             const std::vector<int32_t>& tokens, int64_t batch, int64_t seq_len) {
  const model::MoeConfig& c = parameters.config();
  const int64_t rows = batch * seq_len;
  const int64_t hidden = c.hidden_size;
  const int64_t head_dim = c.head_dim;
  const int64_t group = c.num_attention_heads / c.num_key_value_heads;
  ReferenceOutput output;

  const Matrix embed = Weight(parameters, "model.embed_tokens.weight");
  std::vector<Vector> x(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    x[r].resize(static_cast<size_t>(hidden));
    for (int64_t h = 0; h < hidden; ++h) x[r][h] = embed.at(tokens[r], h);
  }

  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    const std::string p = absl::StrCat("model.layers.", layer, ".");
    const Matrix norm1 = Weight(parameters, p + "input_layernorm.weight");
    const Matrix wq = Weight(parameters, p + "self_attn.q_proj.weight");
    const Matrix wk = Weight(parameters, p + "self_attn.k_proj.weight");
    const Matrix wv = Weight(parameters, p + "self_attn.v_proj.weight");
    const Matrix wo = Weight(parameters, p + "self_attn.o_proj.weight");
    std::vector<Vector> q(static_cast<size_t>(rows));
    std::vector<Vector> k(static_cast<size_t>(rows));
    std::vector<Vector> v(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) {
      const Vector n = RmsNorm(x[r], norm1, c.rms_norm_eps);
      q[r] = Apply(wq, n);
      k[r] = Apply(wk, n);
      v[r] = Apply(wv, n);
      const int64_t position = r % seq_len;
      for (int64_t h = 0; h < c.num_attention_heads; ++h) {
        Rotate(&q[r][h * head_dim], head_dim, position, c.rope_theta);
      }
      for (int64_t h = 0; h < c.num_key_value_heads; ++h) {
        Rotate(&k[r][h * head_dim], head_dim, position, c.rope_theta);
      }
    }
    std::vector<Vector> attended(static_cast<size_t>(rows),
                                 Vector(static_cast<size_t>(c.num_attention_heads * head_dim)));
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t i = 0; i < seq_len; ++i) {
        for (int64_t h = 0; h < c.num_attention_heads; ++h) {
          const int64_t kv = h / group;
          const int64_t query_row = b * seq_len + i;
          std::vector<double> scores;
          std::vector<int64_t> keys;
          for (int64_t j = 0; j <= i; ++j) {
            if (c.sliding_window > 0 && i - j >= c.sliding_window) continue;
            const int64_t key_row = b * seq_len + j;
            double dot = 0;
            for (int64_t d = 0; d < head_dim; ++d) {
              dot += q[query_row][h * head_dim + d] * k[key_row][kv * head_dim + d];
            }
            scores.push_back(dot / std::sqrt(static_cast<double>(head_dim)));
            keys.push_back(key_row);
          }
          const double top = *std::max_element(scores.begin(), scores.end());
          double total = 0;
          for (double& s : scores) total += (s = std::exp(s - top));
          for (size_t n = 0; n < keys.size(); ++n) {
            for (int64_t d = 0; d < head_dim; ++d) {
              attended[query_row][h * head_dim + d] +=
                  scores[n] / total * v[keys[n]][kv * head_dim + d];
            }
          }
        }
      }
    }

    const Matrix norm2 = Weight(parameters, p + "post_attention_layernorm.weight");
    const Matrix router = Weight(parameters, p + "block_sparse_moe.gate.weight");
    output.experts.emplace_back();
    output.weights.emplace_back();
    for (int64_t r = 0; r < rows; ++r) {
      const Vector projected = Apply(wo, attended[r]);
      for (int64_t h = 0; h < hidden; ++h) x[r][h] += projected[h];
      const Vector n = RmsNorm(x[r], norm2, c.rms_norm_eps);
      Vector probs = Apply(router, n);
      const double top = *std::max_element(probs.begin(), probs.end());
      double total = 0;
      for (double& value : probs) total += (value = std::exp(value - top));
      for (double& value : probs) value /= total;
      std::vector<int> order(probs.size());
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](int a, int b) { return probs[a] > probs[b]; });
      order.resize(static_cast<size_t>(c.num_experts_per_tok));
      double chosen_total = 0;
      for (const int e : order) chosen_total += probs[e];
      std::vector<double> chosen_weights;
      Vector moe(static_cast<size_t>(hidden), 0.0);
      for (const int e : order) {
        const double weight = probs[e] / chosen_total;
        chosen_weights.push_back(weight);
        const Vector y =
            Expert(parameters, absl::StrCat(p, "block_sparse_moe.experts.", e, "."), n);
        for (int64_t h = 0; h < hidden; ++h) moe[h] += weight * y[h];
      }
      if (c.n_shared_experts > 0) {
        const Vector y = Expert(parameters, p + "block_sparse_moe.shared_experts.", n);
        for (int64_t h = 0; h < hidden; ++h) moe[h] += y[h];
      }
      for (int64_t h = 0; h < hidden; ++h) x[r][h] += moe[h];
      output.experts.back().push_back(order);
      output.weights.back().push_back(chosen_weights);
    }
  }

  const Matrix final_norm = Weight(parameters, "model.norm.weight");
  const Matrix head =
      Weight(parameters, c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
  double loss = 0;
  int64_t predictions = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const Vector logits = Apply(head, RmsNorm(x[r], final_norm, c.rms_norm_eps));
    output.logits.insert(output.logits.end(), logits.begin(), logits.end());
    if (r % seq_len == seq_len - 1) continue;
    const double top = *std::max_element(logits.begin(), logits.end());
    double total = 0;
    for (const double value : logits) total += std::exp(value - top);
    loss += top + std::log(total) - logits[tokens[r + 1]];
    ++predictions;
  }
  output.loss = loss / static_cast<double>(predictions);
  return output;
}

}  // namespace fedmoe::testing
