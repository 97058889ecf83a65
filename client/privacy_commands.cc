#include "client/privacy_commands.h"

#include <cmath>
#include <cstdio>
#include <limits>

#include "absl/strings/str_cat.h"
#include "config/command_line.h"
#include "logging/log.h"
#include "privacy/rdp_accountant.h"

namespace fedmoe::client {

const char kPrivacyUsage[] =
    R"(  privacy plan --records N --batch B --steps S --delta D --target-epsilon E
      Record-level DP-SGD on a dataset of N records: the smallest noise multiplier σ that keeps
      it within (E, D) after S local steps, each taking every record with probability
      q = B/N (Poisson sampling, B records expected) and adding noise σ·C to the clipped sum.
      D must be at most 1/N. Prints {"noise_multiplier", "epsilon", "order", "sampling_rate",
      "records", "batch", "steps", "delta"}: epsilon is what that σ achieves (≤ E).
)";

namespace {

using config::CommandLine;

int Fail(const absl::Status& status) { return config::ReportFailure("fedmoe-client", status); }

int PlanCommand(const CommandLine& flags) {
  constexpr int64_t kMost = std::numeric_limits<int64_t>::max();
  absl::StatusOr<int64_t> records = flags.RequireInt("records", 1, kMost);
  if (!records.ok()) return Fail(records.status());
  absl::StatusOr<int64_t> batch = flags.RequireInt("batch", 1, *records);
  if (!batch.ok()) return Fail(batch.status());
  absl::StatusOr<int64_t> steps = flags.RequireInt("steps", 1, kMost);
  if (!steps.ok()) return Fail(steps.status());
  absl::StatusOr<double> delta = flags.RequireDouble("delta");
  if (!delta.ok()) return Fail(delta.status());
  absl::StatusOr<double> target = flags.RequireDouble("target-epsilon");
  if (!target.ok()) return Fail(target.status());
  const double per_record = 1.0 / static_cast<double>(*records);
  // (ε, δ) with δ ≥ 1/N is met by publishing a random record whole: no guarantee at all.
  if (!(*delta > 0 && *delta <= per_record)) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--delta must be above 0 and at most 1/records (", JsonNumber(per_record),
                     " for ", *records, " records), not ", JsonNumber(*delta),
                     ": a larger delta is met by releasing one record whole")));
  }
  if (!(*target > 0 && std::isfinite(*target))) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--target-epsilon must be a positive number, not ", *target)));
  }
  const double q = static_cast<double>(*batch) * per_record;
  absl::StatusOr<double> sigma = privacy::NoiseMultiplierForEpsilon(*target, q, *steps, *delta);
  if (!sigma.ok()) return Fail(sigma.status());
  privacy::RdpAccountant accountant;
  if (absl::Status status = accountant.AddSubsampledGaussian(q, *sigma, *steps); !status.ok()) {
    return Fail(status);
  }
  absl::StatusOr<privacy::PrivacyLoss> loss = accountant.Epsilon(*delta);
  if (!loss.ok()) return Fail(loss.status());
  std::printf(
      "{\"noise_multiplier\":%s,\"epsilon\":%s,\"order\":%s,\"sampling_rate\":%s,"
      "\"records\":%lld,\"batch\":%lld,\"steps\":%lld,\"delta\":%s}\n",
      JsonNumber(*sigma).c_str(), JsonNumber(loss->epsilon).c_str(),
      JsonNumber(loss->order).c_str(), JsonNumber(q).c_str(), static_cast<long long>(*records),
      static_cast<long long>(*batch), static_cast<long long>(*steps), JsonNumber(*delta).c_str());
  return 0;
}

}  // namespace

int PrivacyCommand(const std::vector<std::string>& args) {
  if (args.empty()) return Fail(absl::InvalidArgumentError("privacy needs plan"));
  const std::string& verb = args[0];
  auto flags = CommandLine::Parse({args.begin() + 1, args.end()},
                                  {"records", "batch", "steps", "delta", "target-epsilon"}, {});
  if (!flags.ok()) return Fail(flags.status());
  if (verb == "plan") return PlanCommand(*flags);
  return Fail(absl::InvalidArgumentError(
      absl::StrCat("unknown privacy command '", verb, "' (there is: plan)")));
}

}  // namespace fedmoe::client
