// Per-record gradient clipping for DP-SGD, without a gradient per record.
//
// In a pass whose rows belong to records (each record's windows side by side), the gradient of
// a linear layer's weight is Σ_t dY_tᵀ·X_t over its rows, and record r's share is the same sum
// over r's rows. Backward hands each trainable weight's (X, dY) here instead of multiplying
// them; Finish then
//   1. takes each record's squared norm, tensor by tensor, either from Gram matrices,
//      ‖Σ_t dY_tᵀX_t‖² = Σ_{t,s} (dY_t·dY_s)(X_t·X_s)   (T²·(in + out) work for T rows), or from
//      the materialised block dY_rᵀX_r (T·in·out work), whichever costs less for that block
//      ("ghost" norms, Li et al. 2022; the choice per layer is Bu et al.'s mixed ghost clipping);
//   2. scales every record's rows of dY by min(1, C/‖g_r‖), and
//   3. forms the clipped sum Σ_r min(1, C/‖g_r‖)·g_r with one product per weight, dYᵀ·X, from
//      the stored activations and those rescaled output gradients (book-keeping, Bu et al. 2023),
//      rather than a second backward pass.
// Experts see their slots grouped by expert; slots keep token order inside an expert, so each
// record's slots of an expert are again one block.
//
// RMSNorm weights, whose gradient is Σ_t dY_t ⊙ X_t·rstd_t, are materialised per record (a
// vector of the hidden width each). Embeddings are not handled: a token's row gathers from every
// record that uses the token, and a tied output head adds a second term to the same tensor.
#ifndef FEDMOE_MODEL_PER_RECORD_CLIPPING_H_
#define FEDMOE_MODEL_PER_RECORD_CLIPPING_H_

#include <cstdint>
#include <deque>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cpu/aligned.h"

namespace fedmoe::model {

// The records of a pass: record r owns rows [row_begin[r], row_begin[r + 1]).
struct RecordRows {
  std::vector<int64_t> row_begin{0};

  int64_t records() const { return static_cast<int64_t>(row_begin.size()) - 1; }
  int64_t rows() const { return row_begin.back(); }
};

// How a block's squared norm is taken. kCheapest picks per block; the others are for tests.
enum class NormMethod { kCheapest, kGram, kMaterialised };

// ‖dYᵀ·X‖²_F for X [rows, in_features] and dY [rows, out_features], both row-major.
double WeightGradientSquaredNorm(const float* in, const float* d_out, int64_t rows,
                                 int64_t in_features, int64_t out_features, NormMethod method);

class PerRecordClipping {
 public:
  explicit PerRecordClipping(NormMethod method = NormMethod::kCheapest) : method_(method) {}

  // Starts a pass over these records, forgetting the last one's blocks.
  void Begin(const RecordRows& records);
  const RecordRows& records() const { return records_; }
  // The record that owns token row `row`.
  int64_t RecordOf(int64_t row) const { return row_record_[static_cast<size_t>(row)]; }

  // The gradient d_weight += dYᵀ·X of a linear weight [out_features, in_features]. Row i of X and
  // dY is token row i, or with `row_token`, token row row_token[i] (an expert's slots). `in`
  // must stay valid until Finish; `d_out` is copied.
  void AddLinear(float* d_weight, const float* in, const float* d_out, int64_t rows,
                 int64_t in_features, int64_t out_features, const int64_t* row_token = nullptr);

  // The gradient of an RMSNorm weight over token rows: d_weight += Σ_t dY_t ⊙ X_t·rstd_t.
  void AddNormWeight(float* d_weight, const float* in, const float* rstd, const float* d_out,
                     int64_t rows, int64_t width);

  // Clips each record's gradient (all tensors together) to L2 norm clip_norm and adds the sum
  // of the clipped gradients into the destinations given above. Returns each record's norm
  // before clipping. Internal when a record's rows of one weight were not one block.
  absl::StatusOr<std::vector<double>> Finish(double clip_norm);

 private:
  // A run of rows of one record inside a block.
  struct Segment {
    int64_t record;
    int64_t first_row;
    int64_t rows;
  };
  struct LinearBlock {
    float* d_weight;
    const float* in;
    kernels::cpu::AlignedFloats d_out;
    int64_t rows, in_features, out_features;
    std::vector<Segment> segments;
  };
  struct NormBlock {
    float* d_weight;
    int64_t width;
    // [records, width]: each record's own gradient of the weight.
    std::vector<double> per_record;
  };

  NormMethod method_;
  RecordRows records_;
  std::vector<int64_t> row_record_;
  // deques: blocks are never moved once handed out, and grow without copying their buffers.
  std::deque<LinearBlock> linear_;
  std::deque<NormBlock> norm_;
  size_t linear_used_ = 0;
  bool segments_split_ = false;
};

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_PER_RECORD_CLIPPING_H_
