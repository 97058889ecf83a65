#include "model/per_record_clipping.h"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"

namespace fedmoe::model {
namespace {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMatrixMap = Eigen::Map<const RowMatrix>;
using MatrixMap = Eigen::Map<RowMatrix>;

ConstMatrixMap View(const float* data, int64_t rows, int64_t cols) {
  return {data, static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols)};
}
MatrixMap View(float* data, int64_t rows, int64_t cols) {
  return {data, static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols)};
}

// The multiply-adds of each way to a block's norm.
bool GramIsCheaper(int64_t rows, int64_t in_features, int64_t out_features) {
  const double gram = static_cast<double>(rows) * static_cast<double>(rows) *
                      static_cast<double>(in_features + out_features);
  const double materialised = static_cast<double>(rows) * static_cast<double>(in_features) *
                              static_cast<double>(out_features);
  return gram < materialised;
}

}  // namespace

double WeightGradientSquaredNorm(const float* in, const float* d_out, int64_t rows,
                                 int64_t in_features, int64_t out_features, NormMethod method) {
  if (rows == 0) return 0;
  const bool gram = method == NormMethod::kGram || (method == NormMethod::kCheapest &&
                                                    GramIsCheaper(rows, in_features, out_features));
  const ConstMatrixMap x = View(in, rows, in_features);
  const ConstMatrixMap dy = View(d_out, rows, out_features);
  if (gram) {
    const RowMatrix input_gram = x * x.transpose();
    const RowMatrix output_gram = dy * dy.transpose();
    // The products can cancel between pairs of rows, so they are summed in double.
    return (input_gram.cast<double>().array() * output_gram.cast<double>().array()).sum();
  }
  const RowMatrix gradient = dy.transpose() * x;
  return gradient.cast<double>().squaredNorm();
}

void PerRecordClipping::Begin(const RecordRows& records) {
  records_ = records;
  row_record_.assign(static_cast<size_t>(records.rows()), 0);
  for (int64_t r = 0; r < records.records(); ++r) {
    std::fill(row_record_.begin() + records.row_begin[static_cast<size_t>(r)],
              row_record_.begin() + records.row_begin[static_cast<size_t>(r) + 1], r);
  }
  linear_used_ = 0;
  norm_.clear();
  segments_split_ = false;
}

void PerRecordClipping::AddLinear(float* d_weight, const float* in, const float* d_out,
                                  int64_t rows, int64_t in_features, int64_t out_features,
                                  const int64_t* row_token) {
  if (rows == 0) return;
  if (linear_used_ == linear_.size()) linear_.emplace_back();
  LinearBlock& block = linear_[linear_used_++];
  block.d_weight = d_weight;
  block.in = in;
  block.d_out.assign(d_out, d_out + rows * out_features);
  block.rows = rows;
  block.in_features = in_features;
  block.out_features = out_features;
  block.segments.clear();
  std::vector<bool> seen(static_cast<size_t>(records_.records()), false);
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t record = RecordOf(row_token == nullptr ? row : row_token[row]);
    if (!block.segments.empty() && block.segments.back().record == record) {
      ++block.segments.back().rows;
      continue;
    }
    // A record whose rows come back after another's would have its norm taken in two parts.
    if (seen[static_cast<size_t>(record)]) segments_split_ = true;
    seen[static_cast<size_t>(record)] = true;
    block.segments.push_back({record, row, 1});
  }
}

void PerRecordClipping::AddNormWeight(float* d_weight, const float* in, const float* rstd,
                                      const float* d_out, int64_t rows, int64_t width) {
  NormBlock& block = norm_.emplace_back();
  block.d_weight = d_weight;
  block.width = width;
  block.per_record.assign(static_cast<size_t>(records_.records() * width), 0.0);
  for (int64_t row = 0; row < rows; ++row) {
    double* destination = block.per_record.data() + RecordOf(row) * width;
    for (int64_t h = 0; h < width; ++h) {
      destination[h] += static_cast<double>(d_out[row * width + h]) *
                        static_cast<double>(in[row * width + h]) * static_cast<double>(rstd[row]);
    }
  }
}

absl::StatusOr<std::vector<double>> PerRecordClipping::Finish(double clip_norm) {
  if (segments_split_) {
    return absl::InternalError(
        "a record's rows of one weight were not contiguous, so its norm cannot be taken whole");
  }
  const int64_t records = records_.records();
  // Every (block, segment) norm, in parallel: blocks vary from a router's few columns to an
  // output head's vocabulary, so the schedule is dynamic.
  struct NormTask {
    size_t block;
    size_t segment;
  };
  std::vector<NormTask> tasks;
  for (size_t b = 0; b < linear_used_; ++b) {
    for (size_t s = 0; s < linear_[b].segments.size(); ++s) tasks.push_back({b, s});
  }
  std::vector<double> task_norms(tasks.size(), 0.0);
  const auto task_count = static_cast<int64_t>(tasks.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < task_count; ++i) {
    const LinearBlock& block = linear_[tasks[static_cast<size_t>(i)].block];
    const Segment& segment = block.segments[tasks[static_cast<size_t>(i)].segment];
    task_norms[static_cast<size_t>(i)] =
        WeightGradientSquaredNorm(block.in + segment.first_row * block.in_features,
                                  block.d_out.data() + segment.first_row * block.out_features,
                                  segment.rows, block.in_features, block.out_features, method_);
  }
  std::vector<double> squared(static_cast<size_t>(records), 0.0);
  for (size_t i = 0; i < tasks.size(); ++i) {
    const Segment& segment = linear_[tasks[i].block].segments[tasks[i].segment];
    squared[static_cast<size_t>(segment.record)] += task_norms[i];
  }
  for (const NormBlock& block : norm_) {
    for (int64_t r = 0; r < records; ++r) {
      const double* values = block.per_record.data() + r * block.width;
      for (int64_t h = 0; h < block.width; ++h)
        squared[static_cast<size_t>(r)] += values[h] * values[h];
    }
  }
  std::vector<double> norms(static_cast<size_t>(records));
  std::vector<float> scale(static_cast<size_t>(records));
  for (int64_t r = 0; r < records; ++r) {
    const double norm = std::sqrt(squared[static_cast<size_t>(r)]);
    norms[static_cast<size_t>(r)] = norm;
    scale[static_cast<size_t>(r)] = static_cast<float>(norm > clip_norm ? clip_norm / norm : 1.0);
  }

  // The clipped sum: each block's rows rescaled by their record's factor, then one product per
  // weight. Blocks with one destination are one task, so no two threads add into one tensor.
  std::vector<size_t> order(linear_used_);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [this](size_t a, size_t b) {
    return std::less<float*>()(linear_[a].d_weight, linear_[b].d_weight);
  });
  std::vector<std::pair<size_t, size_t>> groups;  // [first, last) in `order`
  for (size_t i = 0; i < order.size();) {
    size_t j = i + 1;
    while (j < order.size() && linear_[order[j]].d_weight == linear_[order[i]].d_weight) ++j;
    groups.emplace_back(i, j);
    i = j;
  }
  const auto group_count = static_cast<int64_t>(groups.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t g = 0; g < group_count; ++g) {
    for (size_t i = groups[static_cast<size_t>(g)].first; i < groups[static_cast<size_t>(g)].second;
         ++i) {
      LinearBlock& block = linear_[order[i]];
      for (const Segment& segment : block.segments) {
        View(block.d_out.data() + segment.first_row * block.out_features, segment.rows,
             block.out_features) *= scale[static_cast<size_t>(segment.record)];
      }
      View(block.d_weight, block.out_features, block.in_features).noalias() +=
          View(block.d_out.data(), block.rows, block.out_features).transpose() *
          View(block.in, block.rows, block.in_features);
    }
  }
  for (const NormBlock& block : norm_) {
    for (int64_t h = 0; h < block.width; ++h) {
      double sum = 0;
      for (int64_t r = 0; r < records; ++r) {
        sum += scale[static_cast<size_t>(r)] *
               block.per_record[static_cast<size_t>(r * block.width + h)];
      }
      block.d_weight[h] += static_cast<float>(sum);
    }
  }
  return norms;
}

}  // namespace fedmoe::model
