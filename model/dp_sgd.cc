#include "model/dp_sgd.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace fedmoe::model {

RecordSampler::RecordSampler(int64_t records, double rate, privacy::SecureRandom random)
    : records_(records),
      rate_(rate),
      log_keep_(std::log1p(-std::min(rate, 1.0))),
      random_(std::move(random)) {}

absl::StatusOr<std::vector<int64_t>> RecordSampler::Draw() {
  std::vector<int64_t> taken;
  if (rate_ >= 1.0) {
    for (int64_t i = 0; i < records_; ++i) taken.push_back(i);
  } else if (rate_ > 0.0) {
    // The gap before the next record taken is geometric: P(gap = g) = (1 − q)^g·q, which is
    // ⌊log(U)/log(1 − q)⌋ for U uniform in (0, 1].
    for (int64_t next = 0;;) {
      const double uniform = 1.0 - random_.UniformDouble();
      const double gap = std::floor(std::log(uniform) / log_keep_);
      if (gap >= static_cast<double>(records_ - next)) break;
      next += static_cast<int64_t>(gap);
      taken.push_back(next);
      ++next;
    }
  }
  if (absl::Status status = random_.status(); !status.ok()) return status;
  return taken;
}

int64_t AppendRecordWindows(const Record& record, int64_t seq_len, int64_t max_windows, int32_t pad,
                            Batch& batch, RecordRows& rows) {
  const int64_t windows = std::min(record.windows(seq_len), max_windows);
  const auto inputs = static_cast<int64_t>(record.tokens.size()) - 1;
  for (int64_t w = 0; w < windows; ++w) {
    for (int64_t i = 0; i < seq_len; ++i) {
      const int64_t position = w * seq_len + i;
      if (position < inputs) {
        const auto next = static_cast<size_t>(position + 1);
        batch.tokens.push_back(record.tokens[static_cast<size_t>(position)]);
        const bool counted = record.loss[next] != 0;
        batch.targets.push_back(counted ? record.tokens[next] : -1);
        batch.predictions += counted ? 1 : 0;
      } else {
        batch.tokens.push_back(pad);
        batch.targets.push_back(-1);
      }
    }
  }
  batch.batch += windows;
  batch.seq_len = seq_len;
  rows.row_begin.push_back(rows.row_begin.back() + windows * seq_len);
  return windows;
}

namespace {

// k of the grid Δ = C·2^-k, the coarsest with Δ·√d/2 ≤ C·2^-11.
int GridBits(int64_t values) {
  return 11 + static_cast<int>(std::ceil(0.5 * std::log2(static_cast<double>(values))));
}

}  // namespace

absl::StatusOr<GradientNoise> GradientNoise::Create(double noise_multiplier, double clip_norm,
                                                    int64_t values) {
  if (!(noise_multiplier > 0) || !std::isfinite(noise_multiplier)) {
    return absl::InvalidArgumentError(
        absl::StrCat("the record noise multiplier must be positive, not ", noise_multiplier));
  }
  if (!(clip_norm > 0) || !std::isfinite(clip_norm)) {
    return absl::InvalidArgumentError(
        absl::StrCat("the record clip norm must be positive, not ", clip_norm));
  }
  if (values < 1) return absl::InvalidArgumentError("nothing is trained, so nothing is noised");
  const int bits = GridBits(values);
  const double sigma_in_steps = std::ldexp(noise_multiplier, bits);
  return GradientNoise(std::ldexp(clip_norm, -bits),
                       EffectiveNoiseMultiplier(noise_multiplier, clip_norm, values),
                       privacy::TabulatedNoise::DiscreteGaussian(sigma_in_steps * sigma_in_steps));
}

double GradientNoise::EffectiveNoiseMultiplier(double noise_multiplier, double clip_norm,
                                               int64_t values) {
  const double grid = std::ldexp(clip_norm, -GridBits(values));
  const double sensitivity = clip_norm + grid * std::sqrt(static_cast<double>(values)) / 2;
  return noise_multiplier * clip_norm / sensitivity;
}

absl::Status GradientNoise::AddTo(std::span<float> values, privacy::SecureRandom& random) {
  draws_.resize(values.size());
  noise_.Fill(draws_, random);
  if (absl::Status status = random.status(); !status.ok()) return status;
  for (size_t i = 0; i < values.size(); ++i) {
    const double steps = std::nearbyint(static_cast<double>(values[i]) / grid_);
    values[i] = static_cast<float>((steps + static_cast<double>(draws_[i])) * grid_);
  }
  return absl::OkStatus();
}

}  // namespace fedmoe::model
