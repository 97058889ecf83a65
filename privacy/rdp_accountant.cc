#include "privacy/rdp_accountant.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "privacy/log_space.h"

namespace fedmoe::privacy {
namespace {

constexpr double kInfinity = std::numeric_limits<double>::infinity();
// A series term below e^-40 of A_α (which is at least 1) no longer changes it in double.
constexpr double kNegligibleLogTerm = -40.0;
constexpr int kMaxSeriesTerms = 100000;

// log(erfc(x)), accurate where erfc underflows: the asymptotic expansion takes over at x = 25.
double LogErfc(double x) {
  if (x < 25.0) return std::log(std::erfc(x));
  const double inverse_square = 1.0 / (x * x);
  const double series = 1.0 - 0.5 * inverse_square + 0.75 * inverse_square * inverse_square -
                        1.875 * inverse_square * inverse_square * inverse_square;
  return -x * x - std::log(x) - 0.5 * std::log(M_PI) + std::log(series);
}

// log A_α for integer α (Mironov, Talwar, Zhang 2019, §3.3):
//   A_α = Σ_{k=0}^{α} C(α,k) (1-q)^{α-k} q^k exp((k² - k) / (2σ²)).
double LogAInteger(double q, double sigma, int alpha) {
  double log_a = -kInfinity;
  const double log_q = std::log(q);
  const double log_1mq = std::log1p(-q);
  for (int k = 0; k <= alpha; ++k) {
    const double log_binomial = LogBinomial(alpha, k);
    const double kd = k;
    const double term =
        log_binomial + (alpha - kd) * log_1mq + kd * log_q + (kd * kd - kd) / (2.0 * sigma * sigma);
    log_a = LogAdd(log_a, term);
  }
  return log_a;
}

// log A_α for fractional α (same paper): A_α = A₀ + A₁ with
//   A₀ = Σ_i C(α,i) q^i (1-q)^{α-i} exp((i²-i)/(2σ²)) · ½ erfc((i - z₀)/(√2 σ))
//   A₁ = Σ_i C(α,i) q^{α-i} (1-q)^i exp((j²-j)/(2σ²)) · ½ erfc((z₀ - j)/(√2 σ)), j = α - i
// where z₀ = σ² log(1/q - 1) + ½. Binomial coefficients of a real α change sign, so positive
// and negative terms are summed apart and subtracted once at the end.
absl::StatusOr<double> LogAFractional(double q, double sigma, double alpha) {
  const double z0 = sigma * sigma * std::log(1.0 / q - 1.0) + 0.5;
  const double log_q = std::log(q);
  const double log_1mq = std::log1p(-q);
  const double sqrt2_sigma = std::sqrt(2.0) * sigma;
  double positive = -kInfinity;
  double negative = -kInfinity;
  double binomial = 1.0;  // C(α, i), built up as C(α, i+1) = C(α, i)·(α - i)/(i + 1).
  for (int i = 0; i < kMaxSeriesTerms; ++i) {
    const double id = i;
    const double j = alpha - id;
    const double log_binomial = std::log(std::abs(binomial));
    const double log_s0 = log_binomial + id * log_q + j * log_1mq +
                          (id * id - id) / (2.0 * sigma * sigma) + std::log(0.5) +
                          LogErfc((id - z0) / sqrt2_sigma);
    const double log_s1 = log_binomial + j * log_q + id * log_1mq +
                          (j * j - j) / (2.0 * sigma * sigma) + std::log(0.5) +
                          LogErfc((z0 - j) / sqrt2_sigma);
    const double log_s = LogAdd(log_s0, log_s1);
    if (binomial > 0) {
      positive = LogAdd(positive, log_s);
    } else {
      negative = LogAdd(negative, log_s);
    }
    if (id > alpha && log_s < kNegligibleLogTerm) return LogSub(positive, negative);
    binomial *= (alpha - id) / (id + 1.0);
  }
  return absl::InternalError(absl::StrCat("RDP series did not converge at order ", alpha, " (q=", q,
                                          ", sigma=", sigma, ")"));
}

}  // namespace

const std::vector<double>& DefaultRdpOrders() {
  static const auto* const orders = [] {
    auto* grid = new std::vector<double>{1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0, 3.5, 4.0, 4.5};
    for (int order = 5; order <= 64; ++order) grid->push_back(order);
    for (double order : {80.0, 96.0, 128.0, 256.0, 512.0}) grid->push_back(order);
    return grid;
  }();
  return *orders;
}

absl::Status ValidatePrivacyArguments(double sampling_rate, int64_t rounds, double delta) {
  if (!(sampling_rate > 0.0 && sampling_rate <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling rate q must be in (0, 1], not ", sampling_rate));
  }
  if (rounds < 1) {
    return absl::InvalidArgumentError(absl::StrCat("rounds must be at least 1, not ", rounds));
  }
  if (!(delta > 0.0 && delta < 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("delta must be in (0, 1), not ", delta));
  }
  return absl::OkStatus();
}

absl::StatusOr<double> SubsampledGaussianRdp(double sampling_rate, double noise_multiplier,
                                             double order) {
  if (!(sampling_rate >= 0.0 && sampling_rate <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling rate q must be in [0, 1], not ", sampling_rate));
  }
  if (!(noise_multiplier >= 0.0) || std::isinf(noise_multiplier)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "noise multiplier must be a finite number at least 0, not ", noise_multiplier));
  }
  if (!(order > 1.0) || std::isinf(order)) {
    return absl::InvalidArgumentError(absl::StrCat("RDP order must be above 1, not ", order));
  }
  if (sampling_rate == 0.0) return 0.0;
  if (noise_multiplier == 0.0) return kInfinity;
  if (sampling_rate == 1.0) return order / (2.0 * noise_multiplier * noise_multiplier);
  double log_a = 0;
  if (order == std::floor(order) && order <= 1e6) {
    log_a = LogAInteger(sampling_rate, noise_multiplier, static_cast<int>(order));
  } else {
    absl::StatusOr<double> fractional = LogAFractional(sampling_rate, noise_multiplier, order);
    if (!fractional.ok()) return fractional.status();
    log_a = *fractional;
  }
  return log_a / (order - 1.0);
}

absl::StatusOr<PrivacyLoss> RdpToEpsilon(std::span<const double> orders,
                                         std::span<const double> rdp, double delta,
                                         double sampler_total_variation) {
  if (orders.size() != rdp.size() || orders.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("got ", orders.size(), " orders but ", rdp.size(), " RDP values"));
  }
  if (!(delta > 0.0 && delta < 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("delta must be in (0, 1), not ", delta));
  }
  if (!(sampler_total_variation >= 0.0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the samplers' total variation must not be negative, not ", sampler_total_variation));
  }
  const double eta = sampler_total_variation;
  PrivacyLoss best{kInfinity, std::numeric_limits<double>::quiet_NaN()};
  for (size_t i = 0; i < orders.size(); ++i) {
    const double alpha = orders[i];
    if (!(alpha > 1.0) || rdp[i] < 0.0 || std::isnan(rdp[i])) {
      return absl::InvalidArgumentError(absl::StrCat("invalid RDP ", rdp[i], " at order ", alpha));
    }
    if (std::isinf(rdp[i])) continue;
    // Canonne, Kamath, Steinke (2020), Prop. 12; Balle et al. (2020), Thm. 21: the ε of this
    // order at δ₀.
    auto epsilon_at = [&](double rdp_delta) {
      return std::max(0.0, rdp[i] + std::log1p(-1.0 / alpha) -
                               (std::log(rdp_delta) + std::log(alpha)) / (alpha - 1.0));
    };
    double epsilon = epsilon_at(delta);
    if (eta > 0.0) {
      // The sampler's share (1 + e^ε)·η of δ grows with ε, and the ε of δ₀ = δ - (1 + e^ε)·η
      // grows as δ₀ shrinks. Iterating from the ε of δ alone climbs to the least ε that
      // satisfies both, or leaves no δ₀ at all.
      auto rdp_delta_at = [&](double e) { return delta - (1.0 + std::exp(e)) * eta; };
      for (int step = 0; step < 200 && rdp_delta_at(epsilon) > 0.0; ++step) {
        const double next = epsilon_at(rdp_delta_at(epsilon));
        const bool converged = next - epsilon <= 1e-13 * std::max(1.0, epsilon);
        epsilon = std::max(epsilon, next);
        if (converged) break;
      }
      // Just above the limit the inequality holds strictly; it is checked, not assumed.
      epsilon += 1e-9 * std::max(1.0, epsilon);
      if (!(rdp_delta_at(epsilon) > 0.0 && epsilon_at(rdp_delta_at(epsilon)) <= epsilon)) continue;
    }
    if (epsilon < best.epsilon) best = {epsilon, alpha};
  }
  return best;
}

RdpAccountant::RdpAccountant(std::vector<double> orders)
    : orders_(std::move(orders)), rdp_(orders_.size(), 0.0) {}

absl::Status RdpAccountant::AddSubsampledGaussian(double sampling_rate, double noise_multiplier,
                                                  int64_t rounds) {
  if (rounds < 0) return absl::InvalidArgumentError("rounds must not be negative");
  std::vector<double> step(orders_.size());
  for (size_t i = 0; i < orders_.size(); ++i) {
    absl::StatusOr<double> rdp = SubsampledGaussianRdp(sampling_rate, noise_multiplier, orders_[i]);
    if (!rdp.ok()) return rdp.status();
    step[i] = *rdp * static_cast<double>(rounds);
  }
  return AddRdp(step);
}

absl::Status RdpAccountant::AddRdp(std::span<const double> rdp) {
  if (rdp.size() != rdp_.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("got ", rdp.size(), " RDP values for ", rdp_.size(), " orders"));
  }
  for (size_t i = 0; i < rdp.size(); ++i) {
    if (!(rdp[i] >= 0.0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("RDP must be non-negative, got ", rdp[i], " at order ", orders_[i]));
    }
  }
  for (size_t i = 0; i < rdp.size(); ++i) rdp_[i] += rdp[i];
  return absl::OkStatus();
}

absl::Status RdpAccountant::AddSamplerTotalVariation(double total_variation) {
  if (!(total_variation >= 0.0 && total_variation <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("a total variation must be in [0, 1], not ", total_variation));
  }
  sampler_total_variation_ = std::min(1.0, sampler_total_variation_ + total_variation);
  return absl::OkStatus();
}

absl::StatusOr<PrivacyLoss> RdpAccountant::Epsilon(double delta) const {
  return RdpToEpsilon(orders_, rdp_, delta, sampler_total_variation_);
}

namespace {

// log P[Bin(n, q) ∈ [low, high]], for 0 < q < 1.
double LogBinomialRange(int64_t n, double q, int64_t low, int64_t high) {
  double log_mass = -kInfinity;
  const double log_q = std::log(q);
  const double log_1mq = std::log1p(-q);
  for (int64_t k = std::max<int64_t>(low, 0); k <= std::min(high, n); ++k) {
    const auto kd = static_cast<double>(k);
    log_mass = LogAdd(log_mass, LogBinomial(static_cast<double>(n), kd) + kd * log_q +
                                    static_cast<double>(n - k) * log_1mq);
  }
  return log_mass;
}

}  // namespace

std::string ExplainInfiniteEpsilon(std::span<const double> orders, std::span<const double> rdp,
                                   double delta, double sampler_total_variation) {
  absl::StatusOr<PrivacyLoss> with_charge =
      RdpToEpsilon(orders, rdp, delta, sampler_total_variation);
  if (!with_charge.ok() || std::isfinite(with_charge->epsilon)) return "";
  if (std::all_of(rdp.begin(), rdp.end(), [](double value) { return std::isinf(value); })) {
    return "no noise bounds one participant's influence (a round ran without noise): every "
           "order's Rényi divergence is infinite";
  }
  // Some order is finite, so the noise alone converts to a finite ε: the charge is what failed.
  absl::StatusOr<PrivacyLoss> noise_alone = RdpToEpsilon(orders, rdp, delta);
  if (!noise_alone.ok()) return std::string(noise_alone.status().message());
  const double charge_at = (1 + std::exp(noise_alone->epsilon)) * sampler_total_variation;
  return absl::StrCat("the samplers' term took delta: the noise alone gives epsilon ",
                      noise_alone->epsilon, " at delta ", delta, ", but their total variation ",
                      sampler_total_variation, " is charged as (1 + e^epsilon) times itself, ",
                      charge_at, " there, and no epsilon above ln(delta / total variation - 1) = ",
                      std::log(delta / sampler_total_variation - 1),
                      " can be certified; more noise per round brings epsilon below that");
}

absl::StatusOr<double> ConditionedSamplingRate(int64_t population, double sampling_rate,
                                               int64_t min_size, int64_t max_size) {
  if (population < 1 || !(sampling_rate > 0 && sampling_rate <= 1) || min_size < 1 ||
      max_size < min_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("a conditioned draw needs a population of at least 1, a rate in (0, 1] and "
                     "1 ≤ min ≤ max; got ",
                     population, ", ", sampling_rate, ", [", min_size, ", ", max_size, "]"));
  }
  if (population < min_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("no cohort of ", min_size, " can be drawn from ", population, " clients"));
  }
  // Everyone, every time: the kept cohort is the population, when it fits.
  if (sampling_rate == 1) {
    if (population > max_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("a cohort of all ", population, " clients is never at most ", max_size));
    }
    return 1.0;
  }
  const double log_kept = LogBinomialRange(population, sampling_rate, min_size, max_size);
  const double log_kept_with_member =
      LogBinomialRange(population - 1, sampling_rate, min_size - 1, max_size - 1);
  if (log_kept == -kInfinity) {
    return absl::InvalidArgumentError("no cohort size in the range has any probability");
  }
  return std::min(1.0, sampling_rate * std::exp(log_kept_with_member - log_kept));
}

absl::StatusOr<double> NoiseMultiplierForEpsilon(double target_epsilon, double sampling_rate,
                                                 int64_t rounds, double delta) {
  if (absl::Status status = ValidatePrivacyArguments(sampling_rate, rounds, delta); !status.ok()) {
    return status;
  }
  return SmallestNoiseMultiplier(target_epsilon, [&](double z) -> absl::StatusOr<double> {
    RdpAccountant accountant;
    if (absl::Status status = accountant.AddSubsampledGaussian(sampling_rate, z, rounds);
        !status.ok()) {
      return status;
    }
    absl::StatusOr<PrivacyLoss> loss = accountant.Epsilon(delta);
    if (!loss.ok()) return loss.status();
    return loss->epsilon;
  });
}

absl::StatusOr<double> SmallestNoiseMultiplier(
    double target_epsilon, const std::function<absl::StatusOr<double>(double)>& epsilon_at) {
  if (!(target_epsilon > 0.0) || std::isinf(target_epsilon)) {
    return absl::InvalidArgumentError(
        absl::StrCat("target epsilon must be a finite number above 0, not ", target_epsilon));
  }
  // ε falls as z grows: find a z that meets the target, then bisect down to the smallest.
  double low = 0.0;
  double high = 1.0;
  for (absl::StatusOr<double> eps = epsilon_at(high); true; eps = epsilon_at(high)) {
    if (!eps.ok()) return eps.status();
    if (*eps <= target_epsilon) break;
    low = high;
    high *= 2.0;
    if (high > 1e6) {
      return absl::InvalidArgumentError(
          absl::StrCat("no noise multiplier up to 1e6 reaches epsilon ", target_epsilon));
    }
  }
  while (high - low > 1e-6 * high) {
    const double middle = 0.5 * (low + high);
    absl::StatusOr<double> eps = epsilon_at(middle);
    if (!eps.ok()) return eps.status();
    (*eps <= target_epsilon ? high : low) = middle;
  }
  return high;
}

}  // namespace fedmoe::privacy
