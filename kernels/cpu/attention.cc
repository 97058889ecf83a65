#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu/eigen_maps.h"

namespace fedmoe::kernels::cpu {

using internal::ConstStridedMap;
using internal::RowMatrix;
using internal::StridedMap;
using internal::View;

namespace {

// One head of one sequence inside a [batch·seq_len, heads·head_dim] activation: seq_len rows of
// head_dim values, width apart.
class HeadSlicer {
 public:
  HeadSlicer(const AttentionShape& shape, int64_t heads)
      : shape_(shape), width_(heads * shape.head_dim) {}

  ConstStridedMap operator()(const float* data, int64_t sequence, int64_t head) const {
    return {data + Offset(sequence, head), Rows(), Cols(), Eigen::OuterStride<>(width_)};
  }
  StridedMap operator()(float* data, int64_t sequence, int64_t head) const {
    return {data + Offset(sequence, head), Rows(), Cols(), Eigen::OuterStride<>(width_)};
  }

 private:
  int64_t Offset(int64_t sequence, int64_t head) const {
    return sequence * shape_.seq_len * width_ + head * shape_.head_dim;
  }
  Eigen::Index Rows() const { return static_cast<Eigen::Index>(shape_.seq_len); }
  Eigen::Index Cols() const { return static_cast<Eigen::Index>(shape_.head_dim); }

  const AttentionShape& shape_;
  int64_t width_;
};

// Query rows go in blocks of this many: a block's scores are computed against the keys its
// rows can see and no further, which skips most of the masked upper triangle (at 256 positions,
// 5/8 of the full products).
constexpr int64_t kQueryBlock = 64;

// The keys [first, first + count) that some row of the query block [start, start + rows) sees.
struct VisibleKeys {
  int64_t first;
  int64_t count;
};
VisibleKeys VisibleTo(const AttentionShape& shape, int64_t start, int64_t rows) {
  const int64_t first =
      shape.sliding_window > 0 ? std::max<int64_t>(0, start - shape.sliding_window + 1) : 0;
  return {first, start + rows - first};
}

// What both passes derive from the shape.
struct HeadGeometry {
  explicit HeadGeometry(const AttentionShape& shape)
      : seq_len(shape.seq_len),
        group(shape.heads / shape.kv_heads),
        scale(1.0f / std::sqrt(static_cast<float>(shape.head_dim))),
        query_head(shape, shape.heads),
        key_value_head(shape, shape.kv_heads) {}
  int64_t seq_len;
  // Query heads per KV head.
  int64_t group;
  // 1/√head_dim.
  float scale;
  HeadSlicer query_head;
  HeadSlicer key_value_head;
};

}  // namespace

void CausalAttentionForward(const float* q, const float* k, const float* v, float* out,
                            float* probs, const AttentionShape& shape) {
  const HeadGeometry geometry(shape);

#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t pair = 0; pair < shape.batch * shape.heads; ++pair) {
    const int64_t sequence = pair / shape.heads;
    const int64_t head = pair % shape.heads;
    const ConstStridedMap q_head = geometry.query_head(q, sequence, head);
    const ConstStridedMap k_head = geometry.key_value_head(k, sequence, head / geometry.group);
    const ConstStridedMap v_head = geometry.key_value_head(v, sequence, head / geometry.group);
    StridedMap out_head = geometry.query_head(out, sequence, head);
    auto p = View(probs + pair * geometry.seq_len * geometry.seq_len, geometry.seq_len,
                  geometry.seq_len);

    for (int64_t start = 0; start < geometry.seq_len; start += kQueryBlock) {
      const int64_t rows = std::min(kQueryBlock, geometry.seq_len - start);
      const VisibleKeys keys = VisibleTo(shape, start, rows);
      p.block(start, keys.first, rows, keys.count).noalias() =
          (q_head.middleRows(start, rows) * k_head.middleRows(keys.first, keys.count).transpose()) *
          geometry.scale;
    }
    for (int64_t i = 0; i < geometry.seq_len; ++i) {
      // Visible keys for query i: max(0, i − window + 1) ≤ j ≤ i.
      const int64_t first_visible =
          shape.sliding_window > 0 ? std::max<int64_t>(0, i - shape.sliding_window + 1) : 0;
      auto row = p.row(static_cast<Eigen::Index>(i));
      // Eigen's array exp, so the softmax runs in the vector units.
      auto visible = row.segment(first_visible, i - first_visible + 1).array();
      const float max_score = visible.maxCoeff();
      visible = (visible - max_score).exp();
      visible /= visible.sum();
      // Masked entries, computed or not, are zero: the backward pass reads the whole row.
      row.head(first_visible).setZero();
      row.tail(geometry.seq_len - 1 - i).setZero();
    }
    for (int64_t start = 0; start < geometry.seq_len; start += kQueryBlock) {
      const int64_t rows = std::min(kQueryBlock, geometry.seq_len - start);
      const VisibleKeys keys = VisibleTo(shape, start, rows);
      out_head.middleRows(start, rows).noalias() =
          p.block(start, keys.first, rows, keys.count) * v_head.middleRows(keys.first, keys.count);
    }
  }
}

void CausalAttentionBackward(const float* q, const float* k, const float* v, const float* probs,
                             const float* d_out, float* d_q, float* d_k, float* d_v,
                             const AttentionShape& shape) {
  const HeadGeometry geometry(shape);

#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t pair = 0; pair < shape.batch * shape.kv_heads; ++pair) {
    const int64_t sequence = pair / shape.kv_heads;
    const int64_t kv_head = pair % shape.kv_heads;
    const ConstStridedMap k_head = geometry.key_value_head(k, sequence, kv_head);
    const ConstStridedMap v_head = geometry.key_value_head(v, sequence, kv_head);
    StridedMap d_k_head = geometry.key_value_head(d_k, sequence, kv_head);
    StridedMap d_v_head = geometry.key_value_head(d_v, sequence, kv_head);
    d_k_head.setZero();
    d_v_head.setZero();
    internal::RowMatrix d_scores(kQueryBlock, geometry.seq_len);
    for (int64_t head = kv_head * geometry.group; head < (kv_head + 1) * geometry.group; ++head) {
      const ConstStridedMap q_head = geometry.query_head(q, sequence, head);
      const ConstStridedMap d_out_head = geometry.query_head(d_out, sequence, head);
      StridedMap d_q_head = geometry.query_head(d_q, sequence, head);
      const auto p =
          View(probs + (sequence * shape.heads + head) * geometry.seq_len * geometry.seq_len,
               geometry.seq_len, geometry.seq_len);
      // Block by block over the query rows, each against the keys it sees: P is zero beyond
      // them, so the rest contributes nothing.
      for (int64_t start = 0; start < geometry.seq_len; start += kQueryBlock) {
        const int64_t rows = std::min(kQueryBlock, geometry.seq_len - start);
        const VisibleKeys keys = VisibleTo(shape, start, rows);
        const auto p_block = p.block(start, keys.first, rows, keys.count);
        const auto d_out_block = d_out_head.middleRows(start, rows);
        d_v_head.middleRows(keys.first, keys.count).noalias() += p_block.transpose() * d_out_block;
        // dP = dO·vᵀ, then the softmax backward: dS = P ⊙ (dP − rowsum(P ⊙ dP)). Masked entries
        // have P = 0, so they get no gradient.
        auto d_s = d_scores.block(0, 0, rows, keys.count);
        d_s.noalias() = d_out_block * v_head.middleRows(keys.first, keys.count).transpose();
        for (Eigen::Index i = 0; i < rows; ++i) {
          const float dot = p_block.row(i).dot(d_s.row(i));
          d_s.row(i) =
              (p_block.row(i).array() * (d_s.row(i).array() - dot) * geometry.scale).matrix();
        }
        d_q_head.middleRows(start, rows).noalias() =
            d_s * k_head.middleRows(keys.first, keys.count);
        d_k_head.middleRows(keys.first, keys.count).noalias() +=
            d_s.transpose() * q_head.middleRows(start, rows);
      }
    }
  }
}

void CachedAttentionForward(const float* q, const float* k_cache, const float* v_cache, float* out,
                            int64_t rows, int64_t first_position, const AttentionShape& shape) {
  const int64_t group = shape.heads / shape.kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(shape.head_dim));
  const int64_t q_width = shape.heads * shape.head_dim;
  const int64_t kv_width = shape.kv_heads * shape.head_dim;
  const int64_t last_position = first_position + rows - 1;
  // The keys some new row sees: the first row's window reaches back furthest.
  const int64_t first_key = shape.sliding_window > 0
                                ? std::max<int64_t>(0, first_position - shape.sliding_window + 1)
                                : 0;
  const int64_t keys = last_position - first_key + 1;

#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t head = 0; head < shape.heads; ++head) {
    const Eigen::Index d = static_cast<Eigen::Index>(shape.head_dim);
    const int64_t kv_head = head / group;
    const ConstStridedMap q_head(q + head * shape.head_dim, static_cast<Eigen::Index>(rows), d,
                                 Eigen::OuterStride<>(q_width));
    const ConstStridedMap k_head(k_cache + first_key * kv_width + kv_head * shape.head_dim,
                                 static_cast<Eigen::Index>(keys), d,
                                 Eigen::OuterStride<>(kv_width));
    const ConstStridedMap v_head(v_cache + first_key * kv_width + kv_head * shape.head_dim,
                                 static_cast<Eigen::Index>(keys), d,
                                 Eigen::OuterStride<>(kv_width));
    StridedMap out_head(out + head * shape.head_dim, static_cast<Eigen::Index>(rows), d,
                        Eigen::OuterStride<>(q_width));
    RowMatrix scores = (q_head * k_head.transpose()) * scale;
    for (int64_t r = 0; r < rows; ++r) {
      // Row r is at position first_position + r and sees keys back to its window's start.
      const int64_t position = first_position + r;
      const int64_t first_visible =
          shape.sliding_window > 0 ? std::max<int64_t>(0, position - shape.sliding_window + 1) : 0;
      const auto begin = static_cast<Eigen::Index>(first_visible - first_key);
      const auto count = static_cast<Eigen::Index>(position - first_visible + 1);
      auto row = scores.row(static_cast<Eigen::Index>(r));
      auto visible = row.segment(begin, count).array();
      const float max_score = visible.maxCoeff();
      visible = (visible - max_score).exp();
      visible /= visible.sum();
      row.head(begin).setZero();
      row.tail(static_cast<Eigen::Index>(keys) - begin - count).setZero();
    }
    out_head.noalias() = scores * v_head;
  }
}

}  // namespace fedmoe::kernels::cpu
