#include "client/record_ledger.h"

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "privacy/rdp_accountant.h"
#include "storage/atomic_file.h"
#include "storage/read_file.h"

namespace fedmoe::client {
namespace {

using Json = nlohmann::json;

constexpr int kLedgerVersion = 1;

// JSON has no infinity; an RDP value that overflowed is written as null.
Json Number(double value) { return std::isfinite(value) ? Json(value) : Json(nullptr); }
double NumberOf(const Json& value) {
  return value.is_number() ? value.get<double>() : std::numeric_limits<double>::infinity();
}

absl::StatusOr<DatasetAccount> AccountFromJson(const Json& json) {
  const std::vector<double>& orders = privacy::DefaultRdpOrders();
  if (!json.is_object() || !json.contains("dataset") || !json["dataset"].is_string() ||
      !json.contains("unit") || !json["unit"].is_string() || !json.contains("rdp") ||
      !json["rdp"].is_array() || json["rdp"].size() != orders.size() || !json.contains("delta") ||
      !json["delta"].is_number()) {
    return absl::DataLossError("an account lacks its dataset, unit, delta or RDP values");
  }
  DatasetAccount account;
  account.dataset = json["dataset"].get<std::string>();
  absl::StatusOr<model::RecordUnit> unit = model::ParseRecordUnit(json["unit"].get<std::string>());
  if (!unit.ok()) return absl::DataLossError(unit.status().message());
  account.unit = *unit;
  account.delta = json["delta"].get<double>();
  auto integer = [&json](const char* key) {
    return json.contains(key) && json[key].is_number_integer() ? json[key].get<int64_t>() : 0;
  };
  auto real = [&json](const char* key) {
    return json.contains(key) && json[key].is_number() ? json[key].get<double>() : 0.0;
  };
  account.records = integer("records");
  account.rounds = integer("rounds");
  account.steps = integer("steps");
  account.last_round_id = static_cast<uint64_t>(integer("last_round_id"));
  account.last_sampling_rate = real("last_sampling_rate");
  account.last_noise_multiplier = real("last_noise_multiplier");
  account.last_clip_norm = real("last_clip_norm");
  account.sampler_total_variation = real("sampler_total_variation");
  account.exhausted =
      json.contains("exhausted") && json["exhausted"].is_boolean() && json["exhausted"].get<bool>();
  for (const Json& value : json["rdp"]) account.rdp.push_back(NumberOf(value));
  return account;
}

Json AccountToJson(const DatasetAccount& account) {
  Json rdp = Json::array();
  for (const double value : account.rdp) rdp.push_back(Number(value));
  return {{"dataset", account.dataset},
          {"unit", model::RecordUnitName(account.unit)},
          {"records", account.records},
          {"delta", account.delta},
          {"rounds", account.rounds},
          {"steps", account.steps},
          {"last_round_id", account.last_round_id},
          {"last_sampling_rate", account.last_sampling_rate},
          {"last_noise_multiplier", account.last_noise_multiplier},
          {"last_clip_norm", account.last_clip_norm},
          {"sampler_total_variation", account.sampler_total_variation},
          {"exhausted", account.exhausted},
          {"rdp", std::move(rdp)}};
}

}  // namespace

double DefaultRecordDelta(int64_t records) {
  return 0.1 / static_cast<double>(std::max<int64_t>(records, 1));
}

absl::StatusOr<double> DatasetAccount::Epsilon() const {
  if (steps == 0) return 0.0;
  absl::StatusOr<privacy::PrivacyLoss> loss =
      privacy::RdpToEpsilon(privacy::DefaultRdpOrders(), rdp, delta, sampler_total_variation);
  if (!loss.ok()) return loss.status();
  return loss->epsilon;
}

absl::StatusOr<DatasetAccount> DatasetAccount::With(const model::RecordPrivacySpend& spend,
                                                    uint64_t round_id) const {
  privacy::RdpAccountant accountant;
  if (!rdp.empty()) {
    if (absl::Status status = accountant.AddRdp(rdp); !status.ok()) return status;
  }
  if (absl::Status status = accountant.AddSubsampledGaussian(spend.sampling_rate,
                                                             spend.noise_multiplier, spend.steps);
      !status.ok()) {
    return status;
  }
  DatasetAccount next = *this;
  next.rdp = accountant.rdp();
  next.sampler_total_variation += spend.sampler_total_variation;
  next.records = spend.records;
  next.rounds += 1;
  next.steps += spend.steps;
  next.last_sampling_rate = spend.sampling_rate;
  next.last_noise_multiplier = spend.noise_multiplier;
  next.last_clip_norm = spend.clip_norm;
  next.last_round_id = round_id;
  return next;
}

absl::StatusOr<RecordPrivacyLedger> RecordPrivacyLedger::Load(const std::filesystem::path& path) {
  RecordPrivacyLedger ledger(path);
  absl::StatusOr<std::string> text = storage::ReadSmallFile(path);
  if (absl::IsNotFound(text.status())) return ledger;
  if (!text.ok()) return text.status();
  const Json json = Json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object() || !json.contains("version") ||
      json["version"] != kLedgerVersion || !json.contains("datasets") ||
      !json["datasets"].is_array()) {
    return absl::DataLossError(absl::StrCat(
        path.string(), " is not a record-privacy ledger (version ", kLedgerVersion,
        "); it is kept as it is, and no round trains until it is restored from a backup"));
  }
  for (const Json& entry : json["datasets"]) {
    absl::StatusOr<DatasetAccount> account = AccountFromJson(entry);
    if (!account.ok()) {
      return absl::DataLossError(absl::StrCat(path.string(), ": ", account.status().message()));
    }
    ledger.accounts_.push_back(std::move(*account));
  }
  return ledger;
}

DatasetAccount RecordPrivacyLedger::Account(const std::string& dataset, model::RecordUnit unit,
                                            double delta) const {
  for (const DatasetAccount& account : accounts_) {
    if (account.dataset == dataset && account.unit == unit) return account;
  }
  DatasetAccount account;
  account.dataset = dataset;
  account.unit = unit;
  account.delta = delta;
  return account;
}

absl::Status RecordPrivacyLedger::Record(const DatasetAccount& account) {
  std::vector<DatasetAccount> next = accounts_;
  bool replaced = false;
  for (DatasetAccount& existing : next) {
    if (existing.dataset == account.dataset && existing.unit == account.unit) {
      existing = account;
      replaced = true;
    }
  }
  if (!replaced) next.push_back(account);
  Json datasets = Json::array();
  for (const DatasetAccount& entry : next) datasets.push_back(AccountToJson(entry));
  const Json json = {{"version", kLedgerVersion}, {"datasets", std::move(datasets)}};
  using std::filesystem::perms;
  if (absl::Status status = storage::WriteFileAtomically(path_, json.dump(2) + "\n",
                                                         perms::owner_read | perms::owner_write);
      !status.ok()) {
    return status;
  }
  accounts_ = std::move(next);
  return absl::OkStatus();
}

std::string AccountsJson(const RecordPrivacyLedger& ledger, double max_record_epsilon) {
  Json accounts = Json::array();
  for (const DatasetAccount& account : ledger.accounts()) {
    absl::StatusOr<double> epsilon = account.Epsilon();
    const double value = epsilon.ok() ? *epsilon : std::numeric_limits<double>::infinity();
    accounts.push_back(
        {{"dataset", account.dataset},
         {"unit", model::RecordUnitName(account.unit)},
         {"records", account.records},
         {"rounds", account.rounds},
         {"steps", account.steps},
         {"sampling_rate", account.last_sampling_rate},
         {"noise_multiplier", account.last_noise_multiplier},
         {"clip_norm", account.last_clip_norm},
         {"epsilon", Number(value)},
         {"delta", account.delta},
         {"budget", max_record_epsilon > 0 ? Json(max_record_epsilon) : Json(nullptr)},
         {"budget_left", max_record_epsilon > 0 ? Number(std::max(0.0, max_record_epsilon - value))
                                                : Json(nullptr)},
         {"exhausted", account.exhausted}});
  }
  return accounts.dump();
}

}  // namespace fedmoe::client
