#include "client/privacy_commands.h"

#include <cmath>
#include <cstdio>
#include <limits>

#include "absl/strings/str_cat.h"
#include "client/client_config.h"
#include "client/record_ledger.h"
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
  privacy report (--config FILE | --state-dir DIR) [--json]
      What DP-SGD has spent on each dataset of this site, from its own ledger: the record
      unit, records, rounds and steps, the last round's sampling rate q, noise multiplier σ
      and clip norm C, the record-level ε at δ, and the budget left (privacy_policy).
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

int ReportCommand(const CommandLine& flags) {
  absl::StatusOr<ClientConfig> config = LoadClientConfig(flags);
  if (!config.ok()) return Fail(config.status());
  absl::StatusOr<RecordPrivacyLedger> ledger =
      RecordPrivacyLedger::Load(config->state_dir.record_ledger());
  if (!ledger.ok()) return Fail(ledger.status());
  const double budget = config->privacy_policy.max_record_epsilon;
  if (flags.Has("json")) {
    std::printf("{\"record_unit\":\"%s\",\"datasets\":%s}\n",
                std::string(model::RecordUnitName(config->privacy_policy.record_unit)).c_str(),
                AccountsJson(*ledger, budget).c_str());
    return 0;
  }
  std::printf(
      "Record-level privacy of this site (DP-SGD), from %s.\n"
      "A record is one %s. ε bounds how much one record's presence can change the probability of\n"
      "anything this site sent, by a factor of at most e^ε, except with probability δ; it holds\n"
      "against everyone who sees what leaves the site: the coordinator, the other sites, and\n"
      "anyone who gets the models.\n",
      config->state_dir.record_ledger().c_str(),
      std::string(model::RecordUnitName(config->privacy_policy.record_unit)).c_str());
  if (ledger->accounts().empty()) {
    std::printf("\nNo round has trained with DP-SGD on this site yet.\n");
    return 0;
  }
  for (const DatasetAccount& account : ledger->accounts()) {
    absl::StatusOr<double> epsilon = account.Epsilon();
    std::printf(
        "\ndataset %s\n"
        "  record: %s, %lld records; %lld rounds, %lld steps\n"
        "  last round: q = %s, σ = %s, C = %s\n"
        "  ε = %s at δ = %s",
        account.dataset.c_str(), std::string(model::RecordUnitName(account.unit)).c_str(),
        static_cast<long long>(account.records), static_cast<long long>(account.rounds),
        static_cast<long long>(account.steps), JsonNumber(account.last_sampling_rate).c_str(),
        JsonNumber(account.last_noise_multiplier).c_str(),
        JsonNumber(account.last_clip_norm).c_str(),
        epsilon.ok() ? JsonNumber(*epsilon).c_str() : "unknown", JsonNumber(account.delta).c_str());
    if (budget > 0 && epsilon.ok()) {
      std::printf("; budget %s, %s left%s", JsonNumber(budget).c_str(),
                  JsonNumber(std::max(0.0, budget - *epsilon)).c_str(),
                  account.exhausted ? " (exhausted: no more training on it)" : "");
    }
    std::printf("\n");
  }
  return 0;
}

}  // namespace

int PrivacyCommand(const std::vector<std::string>& args) {
  if (args.empty()) return Fail(absl::InvalidArgumentError("privacy needs plan or report"));
  const std::string& verb = args[0];
  if (verb == "report") {
    auto flags =
        CommandLine::Parse({args.begin() + 1, args.end()}, {"config", "state-dir"}, {"json"});
    if (!flags.ok()) return Fail(flags.status());
    return ReportCommand(*flags);
  }
  auto flags = CommandLine::Parse({args.begin() + 1, args.end()},
                                  {"records", "batch", "steps", "delta", "target-epsilon"}, {});
  if (!flags.ok()) return Fail(flags.status());
  if (verb == "plan") return PlanCommand(*flags);
  return Fail(absl::InvalidArgumentError(
      absl::StrCat("unknown privacy command '", verb, "' (there are: plan, report)")));
}

}  // namespace fedmoe::client
