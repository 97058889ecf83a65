// The Store's round tables: model versions, rounds and the privacy ledger.

#include <limits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "coordinator/state/store.h"

namespace fedmoe::coordinator {
namespace {

using sqlite::FromMillis;
using sqlite::FromOptionalMillis;
using sqlite::Statement;
using sqlite::ToMillis;
using sqlite::Transaction;

constexpr const char* kModelColumns =
    "version, weights_sha256, directory, size_bytes, created_at_ms, round_id, files";

ModelVersionRecord ReadModel(const Statement& row) {
  ModelVersionRecord model;
  model.version = row.ColumnInt(0);
  model.weights_sha256 = row.ColumnBlob(1);
  model.directory = row.ColumnText(2);
  model.size_bytes = row.ColumnInt(3);
  model.created_at = FromMillis(row.ColumnInt(4));
  model.round_id = row.ColumnOptionalInt(5);
  model.files = row.ColumnText(6);
  return model;
}

// An aborted round leaves the ledger as it was: its ε after is the newest entry's.
constexpr const char* kUnchangedEpsilon =
    "epsilon_after = COALESCE((SELECT epsilon_after FROM privacy_ledger ORDER BY round_id DESC "
    "LIMIT 1), 0)";

constexpr const char* kRoundColumns =
    "round_id, stage, cohort_size, survivors, started_at_ms, finished_at_ms, base_model_version, "
    "committed_model_version, epsilon_after, abort_reason, left_reasons";

RoundRecord ReadRound(const Statement& row) {
  RoundRecord round;
  round.round_id = row.ColumnInt(0);
  round.stage = row.ColumnText(1);
  round.cohort_size = row.ColumnInt(2);
  round.survivors = row.ColumnInt(3);
  round.started_at = FromMillis(row.ColumnInt(4));
  round.finished_at = FromOptionalMillis(row.ColumnOptionalInt(5));
  round.base_model_version = row.ColumnInt(6);
  round.committed_model_version = row.ColumnOptionalInt(7);
  if (!row.ColumnIsNull(8)) round.epsilon_after = row.ColumnDouble(8);
  round.abort_reason = row.ColumnText(9);
  for (const absl::string_view line : absl::StrSplit(row.ColumnText(10), '\n', absl::SkipEmpty())) {
    round.left_reasons.emplace_back(line);
  }
  return round;
}

std::string JoinDoubles(const std::vector<double>& values) {
  std::string text;
  for (double value : values) {
    if (!text.empty()) text += ',';
    text += absl::StrFormat("%.17g", value);
  }
  return text;
}

std::vector<double> SplitDoubles(const std::string& text) {
  std::vector<double> values;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    double value = 0;
    if (absl::SimpleAtod(part, &value)) values.push_back(value);
  }
  return values;
}

absl::Status InsertModel(sqlite::Database& db, const ModelVersionRecord& model) {
  absl::StatusOr<Statement> insert = db.Prepare(
      "INSERT INTO model_versions (version, weights_sha256, directory, size_bytes, "
      "created_at_ms, round_id, files) VALUES (?, ?, ?, ?, ?, ?, ?)");
  if (!insert.ok()) return insert.status();
  return insert->Bind(1, model.version)
      .BindBlob(2, model.weights_sha256)
      .Bind(3, model.directory)
      .Bind(4, model.size_bytes)
      .Bind(5, ToMillis(model.created_at))
      .Bind(6, model.round_id)
      .Bind(7, model.files)
      .Run();
}

}  // namespace

absl::StatusOr<std::optional<ModelVersionRecord>> Store::GetModel(int64_t version) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Statement> query =
      version == 0
          ? db_->Prepare(absl::StrCat("SELECT ", kModelColumns,
                                      " FROM model_versions ORDER BY version DESC LIMIT 1"))
          : db_->Prepare(
                absl::StrCat("SELECT ", kModelColumns, " FROM model_versions WHERE version = ?"));
  if (!query.ok()) return query.status();
  if (version != 0) query->Bind(1, version);
  absl::StatusOr<bool> row = query->Step();
  if (!row.ok()) return row.status();
  if (!*row) return std::optional<ModelVersionRecord>();
  return std::optional<ModelVersionRecord>(ReadModel(*query));
}

absl::Status Store::AddInitialModel(const ModelVersionRecord& model) {
  absl::MutexLock lock(&mutex_);
  return InsertModel(*db_, model);
}

absl::StatusOr<int64_t> Store::AbortUnfinishedRounds(const std::string& reason, absl::Time now) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Statement> update = db_->Prepare(
      absl::StrCat("UPDATE rounds SET stage = 'ABORTED', finished_at_ms = ?, abort_reason = ?, ",
                   kUnchangedEpsilon, " WHERE stage NOT IN ('COMMITTED', 'ABORTED')"));
  if (!update.ok()) return update.status();
  if (absl::Status status = update->Bind(1, ToMillis(now)).Bind(2, reason).Run(); !status.ok()) {
    return status;
  }
  return db_->Changes();
}

absl::StatusOr<int64_t> Store::LastRoundId() {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Statement> query = db_->QueryRow("SELECT MAX(round_id) FROM rounds");
  if (!query.ok()) return query.status();
  return query->ColumnOptionalInt(0).value_or(0);
}

absl::Status Store::StartRound(const RoundRecord& round) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Statement> insert = db_->Prepare(
      "INSERT INTO rounds (round_id, stage, cohort_size, survivors, started_at_ms, "
      "base_model_version) VALUES (?, ?, ?, ?, ?, ?)");
  if (!insert.ok()) return insert.status();
  return insert->Bind(1, round.round_id)
      .Bind(2, round.stage)
      .Bind(3, round.cohort_size)
      .Bind(4, round.survivors)
      .Bind(5, ToMillis(round.started_at))
      .Bind(6, round.base_model_version)
      .Run();
}

absl::Status Store::UpdateRoundStage(int64_t round_id, const std::string& stage,
                                     int64_t survivors) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Statement> update = db_->Prepare(
      "UPDATE rounds SET stage = ?, survivors = ? WHERE round_id = ? AND "
      "stage NOT IN ('COMMITTED', 'ABORTED')");
  if (!update.ok()) return update.status();
  return update->Bind(1, stage).Bind(2, survivors).Bind(3, round_id).Run();
}

absl::Status Store::AddLeftReason(int64_t round_id, const std::string& line) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Statement> update = db_->Prepare(
      "UPDATE rounds SET left_reasons = left_reasons || ? || char(10) WHERE round_id = ?");
  if (!update.ok()) return update.status();
  return update->Bind(1, line).Bind(2, round_id).Run();
}

absl::Status Store::AbortRound(int64_t round_id, const std::string& reason, int64_t survivors,
                               absl::Time now) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Statement> update = db_->Prepare(
      absl::StrCat("UPDATE rounds SET stage = 'ABORTED', finished_at_ms = ?, abort_reason = ?, ",
                   "survivors = ?, ", kUnchangedEpsilon,
                   " WHERE round_id = ? AND stage NOT IN ('COMMITTED', 'ABORTED')"));
  if (!update.ok()) return update.status();
  return update->Bind(1, ToMillis(now)).Bind(2, reason).Bind(3, survivors).Bind(4, round_id).Run();
}

absl::Status Store::CommitRound(int64_t round_id, const std::vector<std::string>& survivors,
                                const ModelVersionRecord& model, const LedgerEntry& ledger) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Transaction> transaction = Transaction::Begin(*db_);
  if (!transaction.ok()) return transaction.status();
  if (absl::Status status = InsertModel(*db_, model); !status.ok()) return status;
  absl::StatusOr<Statement> round = db_->Prepare(
      "UPDATE rounds SET stage = 'COMMITTED', finished_at_ms = ?, survivors = ?, "
      "committed_model_version = ?, epsilon_after = ? WHERE round_id = ? AND stage NOT IN "
      "('COMMITTED', 'ABORTED')");
  if (!round.ok()) return round.status();
  if (absl::Status status = round->Bind(1, ToMillis(ledger.committed_at))
                                .Bind(2, static_cast<int64_t>(survivors.size()))
                                .Bind(3, model.version)
                                .Bind(4, ledger.epsilon_after)
                                .Bind(5, round_id)
                                .Run();
      !status.ok()) {
    return status;
  }
  if (db_->Changes() != 1) {
    return absl::FailedPreconditionError(
        absl::StrCat("round ", round_id, " is not open, so it cannot commit"));
  }
  absl::StatusOr<Statement> entry = db_->Prepare(
      "INSERT INTO privacy_ledger (round_id, sampling_rate, planned_noise_multiplier, "
      "effective_noise_multiplier, mechanism, mode, orders, rdp, epsilon_after, delta, "
      "best_order, committed_at_ms, sampler_total_variation) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
      "?, ?, ?)");
  if (!entry.ok()) return entry.status();
  if (absl::Status status = entry->Bind(1, round_id)
                                .Bind(2, ledger.sampling_rate)
                                .Bind(3, ledger.planned_noise_multiplier)
                                .Bind(4, ledger.effective_noise_multiplier)
                                .Bind(5, ledger.mechanism)
                                .Bind(6, ledger.mode)
                                .Bind(7, JoinDoubles(ledger.orders))
                                .Bind(8, JoinDoubles(ledger.rdp))
                                .Bind(9, ledger.epsilon_after)
                                .Bind(10, ledger.delta)
                                .Bind(11, ledger.best_order)
                                .Bind(12, ToMillis(ledger.committed_at))
                                .Bind(13, ledger.sampler_total_variation)
                                .Run();
      !status.ok()) {
    return status;
  }
  for (const std::string& client_id : survivors) {
    absl::StatusOr<Statement> count = db_->Prepare(
        "UPDATE clients SET rounds_participated = rounds_participated + 1 WHERE client_id = ?");
    if (!count.ok()) return count.status();
    if (absl::Status status = count->Bind(1, client_id).Run(); !status.ok()) return status;
  }
  return transaction->Commit();
}

absl::StatusOr<std::vector<RoundRecord>> Store::ListRounds(int64_t before_round_id, int limit) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Statement> query = db_->Prepare(absl::StrCat(
      "SELECT ", kRoundColumns, " FROM rounds WHERE round_id < ? ORDER BY round_id DESC LIMIT ?"));
  if (!query.ok()) return query.status();
  query->Bind(1, before_round_id <= 0 ? std::numeric_limits<int64_t>::max() : before_round_id)
      .Bind(2, static_cast<int64_t>(limit));
  std::vector<RoundRecord> rounds;
  while (true) {
    absl::StatusOr<bool> row = query->Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    rounds.push_back(ReadRound(*query));
  }
  return rounds;
}

absl::StatusOr<std::vector<LedgerEntry>> Store::Ledger() {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Statement> query = db_->Prepare(
      "SELECT round_id, sampling_rate, planned_noise_multiplier, effective_noise_multiplier, "
      "mechanism, mode, orders, rdp, epsilon_after, delta, best_order, committed_at_ms, "
      "sampler_total_variation FROM privacy_ledger ORDER BY round_id");
  if (!query.ok()) return query.status();
  std::vector<LedgerEntry> entries;
  while (true) {
    absl::StatusOr<bool> row = query->Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    LedgerEntry entry;
    entry.round_id = query->ColumnInt(0);
    entry.sampling_rate = query->ColumnDouble(1);
    entry.planned_noise_multiplier = query->ColumnDouble(2);
    entry.effective_noise_multiplier = query->ColumnDouble(3);
    entry.mechanism = query->ColumnText(4);
    entry.mode = query->ColumnText(5);
    entry.orders = SplitDoubles(query->ColumnText(6));
    entry.rdp = SplitDoubles(query->ColumnText(7));
    entry.epsilon_after = query->ColumnDouble(8);
    entry.delta = query->ColumnDouble(9);
    entry.best_order = query->ColumnDouble(10);
    entry.committed_at = FromMillis(query->ColumnInt(11));
    entry.sampler_total_variation = query->ColumnDouble(12);
    entries.push_back(std::move(entry));
  }
  return entries;
}

absl::StatusOr<Store::RoundCounts> Store::CountRounds() {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Statement> query = db_->QueryRow(
      "SELECT COALESCE(SUM(stage = 'COMMITTED'), 0), COALESCE(SUM(stage = 'ABORTED'), 0) "
      "FROM rounds");
  if (!query.ok()) return query.status();
  return RoundCounts{query->ColumnInt(0), query->ColumnInt(1)};
}

}  // namespace fedmoe::coordinator
