// fedmoe-coordinator status, rounds and privacy: what the federation is doing and has spent.
#include <google/protobuf/util/time_util.h>
#include <grpcpp/grpcpp.h>
#include <malloc.h>

#include <bit>
#include <cstdio>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "config/command_line.h"
#include "coordinator/cli/commands.h"
#include "coordinator/config.h"
#include "coordinator/round/global_model.h"
#include "coordinator/round/privacy_plan.h"
#include "coordinator/round/round_engine.h"
#include "fedmoe/v1/admin.grpc.pb.h"
#include "logging/log.h"
#include "model/config.h"
#include "privacy/hadamard.h"
#include "privacy/rdp_accountant.h"

namespace fedmoe::coordinator::cli {
namespace {

// The values of one round's update (before the encoder pads them to a power of two).
absl::StatusOr<int64_t> UpdateValuesOf(const RoundPolicy& policy) {
  absl::StatusOr<int64_t> values = PlannedUpdateValues(policy);
  if (!values.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--values is needed: the config's initial model cannot be read (",
                     values.status().message(), ")"));
  }
  return values;
}

// `privacy epsilon|noise --mode distributed|central`: a federation's rounds, priced as the ledger
// will price them (coordinator/round/privacy_plan.h), from the flags and the config's defaults.
int PlanFederation(const std::string& verb, RoundPolicy policy, const std::string& mode,
                   const CommandLine& flags) {
  if (mode == "distributed") {
    policy.privacy_mode = v1::PrivacySpec::MODE_DISTRIBUTED;
  } else if (mode == "central") {
    policy.privacy_mode = v1::PrivacySpec::MODE_CENTRAL;
  } else {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--mode must be gaussian, distributed or central, not '", mode, "'")));
  }
  const std::string mechanism = flags.GetOr("mechanism", MechanismName(policy.mechanism));
  if (mechanism == "skellam" && mode == "distributed") {
    policy.mechanism = v1::PrivacySpec::MECHANISM_SKELLAM;
  } else if (mechanism == "discrete_gaussian") {
    policy.mechanism = v1::PrivacySpec::MECHANISM_DISCRETE_GAUSSIAN;
  } else {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "--mechanism must be discrete_gaussian", mode == "distributed" ? " or skellam" : "", " in ",
        mode, " mode, not '", mechanism, "'")));
  }
  // With --config the federation's own settings are the defaults, so the plan is what its
  // ledger will say; a flag still overrides.
  const bool configured = flags.Has("config");
  for (const auto& [flag, field] :
       {std::pair{"sampling-rate", &policy.sampling_rate}, std::pair{"delta", &policy.delta}}) {
    if (configured && !flags.Has(flag)) continue;
    absl::StatusOr<double> value = flags.RequireDouble(flag);
    if (!value.ok()) return Fail(value.status());
    *field = *value;
  }
  constexpr int64_t kMost = std::numeric_limits<int64_t>::max();
  absl::StatusOr<int64_t> rounds = flags.RequireInt("rounds", 1, kMost);
  if (!rounds.ok()) return Fail(rounds.status());
  absl::StatusOr<int64_t> clients = flags.RequireInt("clients", 2, kMost);
  if (!clients.ok()) return Fail(clients.status());
  absl::StatusOr<int64_t> values = configured && !flags.Has("values")
                                       ? UpdateValuesOf(policy)
                                       : flags.RequireInt("values", 1, int64_t{1} << 40);
  if (!values.ok()) return Fail(values.status());
  if (flags.Has("ring-bits")) {
    absl::StatusOr<int64_t> bits = flags.RequireInt("ring-bits", 16, 62);
    if (!bits.ok()) return Fail(bits.status());
    policy.ring_bits = *bits;
  }
  for (const auto& [flag, field] : {std::pair{"clip-norm", &policy.clip_norm},
                                    std::pair{"rounding-beta", &policy.rounding_beta}}) {
    if (!flags.Has(flag)) continue;
    absl::StatusOr<double> value = flags.RequireDouble(flag);
    if (!value.ok()) return Fail(value.status());
    *field = *value;
  }
  if (!(policy.clip_norm > 0) || !(policy.rounding_beta >= 0 && policy.rounding_beta < 1)) {
    return Fail(
        absl::InvalidArgumentError("--clip-norm must be above 0 and --rounding-beta in [0, 1)"));
  }
  // Updates are padded for their rotation (a power of two, or a multiple of a large block).
  const auto encoded = static_cast<int64_t>(privacy::EncodedLength(static_cast<size_t>(*values)));
  if (verb == "epsilon") {
    absl::StatusOr<double> z = configured && !flags.Has("noise-multiplier")
                                   ? absl::StatusOr<double>(policy.noise_multiplier)
                                   : flags.RequireDouble("noise-multiplier");
    if (!z.ok()) return Fail(z.status());
    policy.noise_multiplier = *z;
    if (!(*z > 0)) {
      return Fail(absl::InvalidArgumentError(absl::StrCat(
          "--noise-multiplier must be above 0 (no noise: epsilon is infinite), not ", *z)));
    }
    absl::StatusOr<privacy::PrivacyLoss> loss = PlannedEpsilon(policy, *clients, encoded, *rounds);
    if (!loss.ok()) return Fail(loss.status());
    std::printf("{\"epsilon\":%s,\"order\":%s}\n", JsonNumber(loss->epsilon).c_str(),
                JsonNumber(loss->order).c_str());
    return 0;
  }
  if (verb == "noise") {
    absl::StatusOr<double> target = flags.RequireDouble("target-epsilon");
    if (!target.ok()) return Fail(target.status());
    absl::StatusOr<double> z = PlannedNoiseMultiplier(policy, *target, *clients, encoded, *rounds);
    if (!z.ok()) return Fail(z.status());
    std::printf("{\"noise_multiplier\":%s}\n", JsonNumber(*z).c_str());
    return 0;
  }
  return Fail(absl::InvalidArgumentError(absl::StrCat("unknown privacy command '", verb, "'")));
}

}  // namespace

int Status(const std::vector<std::string>& args) {
  auto flags =
      CommandLine::Parse(args, {"state-dir", "config", "admin-dir", "coordinator"}, {"json"});
  if (!flags.ok()) return Fail(flags.status());
  auto stub = DialAdmin(*flags);
  if (!stub.ok()) return Fail(stub.status());
  v1::GetStatusResponse response;
  auto context = AdminContext();
  if (grpc::Status status = (*stub)->GetStatus(context.get(), {}, &response); !status.ok()) {
    return Fail(status);
  }
  if (flags->Has("json")) {
    std::printf("%s\n", Json(response).c_str());
    return 0;
  }
  std::printf(
      "federation:      %s\n"
      "version:         %s\n"
      "started:         %s\n"
      "clients:         %u enrolled, %u online (%u polls held), %u revoked\n"
      "model version:   %llu%s\n"
      "rounds:          %llu committed, %llu aborted (round %llu: %s)\n"
      "privacy:         epsilon %.4g spent at delta %.3g%s\n"
      "%s",
      response.federation().c_str(), response.version().c_str(),
      Time(response.started_at()).c_str(), response.clients_enrolled(), response.clients_online(),
      response.polls_parked(), response.clients_revoked(),
      static_cast<unsigned long long>(response.model_version()),
      response.adapter_base_sha256().empty()
          ? ""
          : absl::StrCat(" (adapters over base ", response.adapter_base_sha256(), ", held as ",
                         response.adapter_base_format(), ")")
                .c_str(),
      static_cast<unsigned long long>(response.rounds_committed()),
      static_cast<unsigned long long>(response.rounds_aborted()),
      static_cast<unsigned long long>(response.current_round_id()),
      absl::AsciiStrToLower(StageName(response.current_round_stage())).c_str(),
      response.epsilon_spent(), response.privacy_delta(),
      response.target_epsilon() > 0
          ? absl::StrFormat(" (target %.4g)", response.target_epsilon()).c_str()
          : "",
      response.rounds_paused_reason().empty()
          ? ""
          : absl::StrCat("rounds paused:   ", response.rounds_paused_reason(), "\n").c_str());
  return 0;
}

int RoundsCommand(const std::vector<std::string>& args) {
  if (args.empty() || args[0] != "list") {
    return Fail(absl::InvalidArgumentError("rounds needs a command: list"));
  }
  auto flags =
      CommandLine::Parse(std::vector<std::string>(args.begin() + 1, args.end()),
                         {"state-dir", "config", "admin-dir", "coordinator", "limit"}, {"json"});
  if (!flags.ok()) return Fail(flags.status());
  absl::StatusOr<int64_t> limit = flags->IntOr("limit", 20, 1, 1000);
  if (!limit.ok()) return Fail(limit.status());
  auto stub = DialAdmin(*flags);
  if (!stub.ok()) return Fail(stub.status());
  v1::ListRoundsRequest request;
  request.mutable_page()->set_page_size(static_cast<uint32_t>(*limit));
  v1::ListRoundsResponse response;
  auto context = AdminContext();
  if (grpc::Status status = (*stub)->ListRounds(context.get(), request, &response); !status.ok()) {
    return Fail(status);
  }
  if (flags->Has("json")) {
    std::printf("%s\n", Json(response).c_str());
    return 0;
  }
  std::printf("%-6s %-17s %-6s %-9s %-9s %-8s %-10s %s\n", "ROUND", "STAGE", "COHORT", "SURVIVORS",
              "DURATION", "MODEL", "EPSILON", "NOTE");
  for (const v1::RoundInfo& round : response.rounds()) {
    std::string duration = "-";
    if (round.has_finished_at()) {
      duration = absl::StrFormat(
          "%.1fs", static_cast<double>(TimeUtil::TimestampToMilliseconds(round.finished_at()) -
                                       TimeUtil::TimestampToMilliseconds(round.started_at())) /
                       1000.0);
    }
    const std::string stage = absl::AsciiStrToLower(StageName(round.stage()));
    const std::string model =
        round.committed_model_version() > 0
            ? absl::StrCat(round.base_model_version(), "->", round.committed_model_version())
            : absl::StrCat(round.base_model_version());
    std::printf("%-6llu %-17s %-6u %-9u %-9s %-8s %-10.4g %s\n",
                static_cast<unsigned long long>(round.round_id()), stage.c_str(),
                round.cohort_size(), round.survivors(), duration.c_str(), model.c_str(),
                round.epsilon_after(), round.abort_reason().c_str());
    for (const std::string& left : round.left_reasons()) {
      std::printf("%-6s left: %s\n", "", left.c_str());
    }
  }
  return 0;
}

int PrivacyReport(const std::vector<std::string>& args) {
  auto flags =
      CommandLine::Parse(args, {"state-dir", "config", "admin-dir", "coordinator"}, {"json"});
  if (!flags.ok()) return Fail(flags.status());
  auto stub = DialAdmin(*flags);
  if (!stub.ok()) return Fail(stub.status());
  v1::GetPrivacyLedgerResponse response;
  auto context = AdminContext();
  if (grpc::Status status = (*stub)->GetPrivacyLedger(context.get(), {}, &response); !status.ok()) {
    return Fail(status);
  }
  if (flags->Has("json")) {
    std::printf("%s\n", Json(response).c_str());
    return 0;
  }
  std::printf("%-6s %-12s %-18s %-8s %-9s %-9s %-10s %s\n", "ROUND", "MODE", "MECHANISM", "Q",
              "Z_PLAN", "Z_EFF", "EPSILON", "ORDER");
  for (const v1::PrivacyLedgerEntry& entry : response.entries()) {
    std::printf("%-6llu %-12s %-18s %-8.4g %-9.4g %-9.4g %-10.4g %g\n",
                static_cast<unsigned long long>(entry.round_id()), entry.mode().c_str(),
                entry.mechanism().c_str(), entry.sampling_rate(), entry.planned_noise_multiplier(),
                entry.effective_noise_multiplier(), entry.epsilon_after(), entry.best_order());
  }
  std::printf("total: epsilon %.4g at delta %.3g over %d committed rounds%s%s\n",
              response.epsilon_spent(), response.delta(), response.entries_size(),
              response.target_epsilon() > 0
                  ? absl::StrFormat("; target %.4g", response.target_epsilon()).c_str()
                  : "",
              response.sampler_total_variation() > 0
                  ? absl::StrFormat("; the samplers' total variation %.3g is charged to delta",
                                    response.sampler_total_variation())
                        .c_str()
                  : "");
  if (!response.epsilon_note().empty()) {
    std::printf("epsilon is infinite: %s\n", response.epsilon_note().c_str());
  }
  return 0;
}

int PrivacyCommand(const std::vector<std::string>& args) {
  if (args.empty()) {
    return Fail(absl::InvalidArgumentError("privacy needs epsilon, noise or report"));
  }
  const std::string& verb = args[0];
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (verb == "report") return PrivacyReport(rest);
  auto flags = CommandLine::Parse(
      rest,
      {"noise-multiplier", "target-epsilon", "sampling-rate", "rounds", "delta", "mode", "clients",
       "values", "mechanism", "ring-bits", "clip-norm", "rounding-beta", "config"},
      {});
  if (!flags.ok()) return Fail(flags.status());
  if (auto path = flags->Get("config")) {
    absl::StatusOr<CoordinatorConfig> config = CoordinatorConfig::Load(*path);
    if (!config.ok()) return Fail(config.status());
    return PlanFederation(verb, config->rounds,
                          flags->GetOr("mode", PrivacyModeName(config->rounds.privacy_mode)),
                          *flags);
  }
  const std::string mode = flags->GetOr("mode", "gaussian");
  if (mode != "gaussian") return PlanFederation(verb, RoundPolicy(), mode, *flags);
  for (const char* federation_only :
       {"clients", "values", "mechanism", "ring-bits", "clip-norm", "rounding-beta"}) {
    if (flags->Has(federation_only)) {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("--", federation_only,
                       " prices a federation's rounds: add --mode distributed or "
                       "central")));
    }
  }
  absl::StatusOr<double> q = flags->RequireDouble("sampling-rate");
  if (!q.ok()) return Fail(q.status());
  absl::StatusOr<double> delta = flags->RequireDouble("delta");
  if (!delta.ok()) return Fail(delta.status());
  absl::StatusOr<int64_t> rounds_flag = flags->RequireInt(
      "rounds", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max());
  if (!rounds_flag.ok()) return Fail(rounds_flag.status());
  const int64_t rounds = *rounds_flag;
  if (absl::Status status = privacy::ValidatePrivacyArguments(*q, rounds, *delta); !status.ok()) {
    return Fail(status);
  }
  if (verb == "epsilon") {
    absl::StatusOr<double> z = flags->RequireDouble("noise-multiplier");
    if (!z.ok()) return Fail(z.status());
    if (*z < 0) {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("--noise-multiplier must not be negative, not ", *z)));
    }
    if (*z == 0) {
      return Fail(
          absl::InvalidArgumentError("--noise-multiplier 0 adds no noise: epsilon is infinite"));
    }
    privacy::RdpAccountant accountant;
    if (absl::Status status = accountant.AddSubsampledGaussian(*q, *z, rounds); !status.ok()) {
      return Fail(status);
    }
    absl::StatusOr<privacy::PrivacyLoss> loss = accountant.Epsilon(*delta);
    if (!loss.ok()) return Fail(loss.status());
    std::printf("{\"epsilon\":%s,\"order\":%s}\n", JsonNumber(loss->epsilon).c_str(),
                JsonNumber(loss->order).c_str());
    return 0;
  }
  if (verb == "noise") {
    absl::StatusOr<double> target = flags->RequireDouble("target-epsilon");
    if (!target.ok()) return Fail(target.status());
    absl::StatusOr<double> z = privacy::NoiseMultiplierForEpsilon(*target, *q, rounds, *delta);
    if (!z.ok()) return Fail(z.status());
    std::printf("{\"noise_multiplier\":%s}\n", JsonNumber(*z).c_str());
    return 0;
  }
  return Fail(absl::InvalidArgumentError(absl::StrCat("unknown privacy command '", verb, "'")));
}

}  // namespace fedmoe::coordinator::cli
