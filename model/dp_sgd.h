// DP-SGD's randomness and batching (Abadi et al. 2016, as Opacus runs it): Poisson sampling of
// records, a record's windows laid out side by side, and the Gaussian noise on the clipped sum.
// The clipping itself is per_record_clipping.h; the loop is trainer.cc's.
//
// Both draws come from privacy::SecureRandom keyed by OpenSSL: the guarantee assumes that
// nobody can predict which records a step took or what noise it added.
//
// The noise is not a floating-point Gaussian. A float sampler's output reveals through its low
// bits which value it was added to (Mironov 2012 for the Laplace; Jin et al. 2022 for
// Gaussians), so the clipped sum is rounded to a grid of step Δ (a power of two times C) and the
// noise is Δ times an integer drawn from the exact discrete Gaussian N_Z(0, (σC/Δ)²)
// (privacy/noise.h). Their sum is a multiple of Δ, exact in double; converting it to float is
// post-processing. Rounding moves each value by at most Δ/2, so one record changes the rounded
// sum by at most C' = C + Δ·√d/2 in L2 over d values; the ledger prices noise σC against that
// sensitivity, a multiplier σ·C/C', which Δ keeps within 2^-10 of σ.
#ifndef FEDMOE_MODEL_DP_SGD_H_
#define FEDMOE_MODEL_DP_SGD_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "model/data.h"
#include "model/per_record_clipping.h"
#include "privacy/noise.h"
#include "privacy/secure_random.h"

namespace fedmoe::model {

// Each record independently with probability `rate`, by geometric gaps between the records
// taken, so a step costs O(rate·records) uniforms.
class RecordSampler {
 public:
  RecordSampler(int64_t records, double rate, privacy::SecureRandom random);
  // The indices taken this step, ascending. Internal if the keystream failed.
  absl::StatusOr<std::vector<int64_t>> Draw();

 private:
  int64_t records_;
  double rate_;
  double log_keep_;  // log(1 − rate)
  privacy::SecureRandom random_;
};

// Appends a record's windows to `batch` (seq_len inputs each, padded with `pad` and target −1),
// at most max_windows of them, and its rows to `rows`. Returns the windows appended.
int64_t AppendRecordWindows(const Record& record, int64_t seq_len, int64_t max_windows, int32_t pad,
                            Batch& batch, RecordRows& rows);

// The noise of one step, for d values clipped to C with multiplier σ.
class GradientNoise {
 public:
  // σ > 0, C > 0, d ≥ 1.
  static absl::StatusOr<GradientNoise> Create(double noise_multiplier, double clip_norm,
                                              int64_t values);

  // Rounds each value to the grid and adds Δ·N_Z(0, (σC/Δ)²).
  absl::Status AddTo(std::span<float> values, privacy::SecureRandom& random);

  // What Create(...).effective_noise_multiplier() will be, without building the sampler.
  static double EffectiveNoiseMultiplier(double noise_multiplier, double clip_norm, int64_t values);

  double grid() const { return grid_; }
  // σ·C/C': what the ledger charges.
  double effective_noise_multiplier() const { return effective_noise_multiplier_; }

 private:
  GradientNoise(double grid, double effective, privacy::TabulatedNoise noise)
      : grid_(grid), effective_noise_multiplier_(effective), noise_(std::move(noise)) {}
  double grid_;
  double effective_noise_multiplier_;
  privacy::TabulatedNoise noise_;
  std::vector<int64_t> draws_;
};

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_DP_SGD_H_
