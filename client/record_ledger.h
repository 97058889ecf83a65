// The site's own record-level privacy ledger: what DP-SGD has spent on each dataset of this
// site, kept in the client's state directory (record-privacy.json) and never taken from the
// coordinator.
//
// Every local step of every round is a Poisson-subsampled Gaussian step on the dataset; the
// ledger adds their Rényi DP order by order (privacy/rdp_accountant.h) and converts the total to
// ε at the dataset's δ. A round is charged after it trains and *before* anything derived from
// it leaves the site: a crash between the charge and the upload leaves the round charged and
// unsent, never sent and uncharged. The file is replaced atomically (storage/atomic_file.h), so
// it is always a whole ledger; one that cannot be read is an error, never an empty ledger,
// since starting over would forget privacy already spent.
#ifndef FEDMOE_CLIENT_RECORD_LEDGER_H_
#define FEDMOE_CLIENT_RECORD_LEDGER_H_

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/data.h"
#include "model/trainer.h"

namespace fedmoe::client {

// δ for a dataset of `records` records unless the site sets one: a tenth of 1/records, so that
// the guarantee never permits releasing one record whole.
double DefaultRecordDelta(int64_t records);

// One dataset's account: a data directory read with one record unit.
struct DatasetAccount {
  std::string dataset;
  model::RecordUnit unit = model::RecordUnit::kParagraph;
  // At the latest charge.
  int64_t records = 0;
  double delta = 0;
  int64_t rounds = 0;
  int64_t steps = 0;
  double last_sampling_rate = 0;
  double last_noise_multiplier = 0;
  double last_clip_norm = 0;
  uint64_t last_round_id = 0;
  // Summed RDP at privacy::DefaultRdpOrders(), and the noise sampler's total variation.
  std::vector<double> rdp;
  double sampler_total_variation = 0;
  // Set when a round was refused for passing the site's budget: the dataset trains no more.
  bool exhausted = false;

  // ε at `delta`; +∞ when no order gives a finite one.
  absl::StatusOr<double> Epsilon() const;
  // This account with `spend` added (records, rates and the last round updated).
  absl::StatusOr<DatasetAccount> With(const model::RecordPrivacySpend& spend,
                                      uint64_t round_id) const;
};

class RecordPrivacyLedger {
 public:
  // A missing file is an empty ledger; an unreadable or malformed one is an error naming it.
  static absl::StatusOr<RecordPrivacyLedger> Load(const std::filesystem::path& path);

  // The account of `dataset` read as `unit`: the stored one, or a new one at `delta`.
  DatasetAccount Account(const std::string& dataset, model::RecordUnit unit, double delta) const;

  // Adds `account` (from Account(...).With(...)) in place of its dataset's, and writes the
  // ledger durably before returning.
  absl::Status Record(const DatasetAccount& account);

  const std::vector<DatasetAccount>& accounts() const { return accounts_; }

 private:
  explicit RecordPrivacyLedger(std::filesystem::path path) : path_(std::move(path)) {}
  std::filesystem::path path_;
  std::vector<DatasetAccount> accounts_;
};

// The accounts as a JSON array, for status.json and `privacy report --json`: per dataset its
// unit, records, rounds, steps, the last round's q, σ and C, ε at δ (null when infinite),
// `budget` (null without one), `budget_left` and `exhausted`.
std::string AccountsJson(const RecordPrivacyLedger& ledger, double max_record_epsilon);

}  // namespace fedmoe::client

#endif  // FEDMOE_CLIENT_RECORD_LEDGER_H_
