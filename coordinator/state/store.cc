#include "coordinator/state/store.h"

#include "absl/strings/str_cat.h"

namespace fedmoe::coordinator {
namespace {

using sqlite::Statement;
using sqlite::ToMillis;
using sqlite::Transaction;

// Migration N brings a database from schema N-1 to N. Append only: a released migration never
// changes, so every database reaches the same schema by the same steps.
constexpr const char* kMigrations[] = {
    // 1: the registry, enrollment, rounds, models and the ledger (DESIGN §6).
    R"sql(
CREATE TABLE clients (
  client_id TEXT PRIMARY KEY,
  spiffe_id TEXT NOT NULL,
  client_version TEXT NOT NULL,
  enrolled_at_ms INTEGER NOT NULL,
  last_seen_at_ms INTEGER,
  rounds_participated INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE certificates (
  serial TEXT PRIMARY KEY,
  client_id TEXT NOT NULL REFERENCES clients(client_id),
  issued_at_ms INTEGER NOT NULL,
  not_after_ms INTEGER NOT NULL
);
CREATE INDEX certificates_by_client ON certificates(client_id, issued_at_ms);
CREATE TABLE revocations (
  client_id TEXT PRIMARY KEY REFERENCES clients(client_id),
  revoked_at_ms INTEGER NOT NULL,
  reason TEXT NOT NULL
);
CREATE TABLE enrollment_tokens (
  token_id TEXT PRIMARY KEY,
  secret_sha256 BLOB NOT NULL,
  client_id TEXT NOT NULL,
  created_at_ms INTEGER NOT NULL,
  expires_at_ms INTEGER NOT NULL,
  used_at_ms INTEGER,
  revoked_at_ms INTEGER
);
CREATE TABLE model_versions (
  version INTEGER PRIMARY KEY,
  weights_sha256 BLOB NOT NULL,
  directory TEXT NOT NULL,
  size_bytes INTEGER NOT NULL,
  created_at_ms INTEGER NOT NULL,
  round_id INTEGER
);
CREATE TABLE rounds (
  round_id INTEGER PRIMARY KEY,
  stage TEXT NOT NULL,
  cohort_size INTEGER NOT NULL,
  survivors INTEGER NOT NULL,
  started_at_ms INTEGER NOT NULL,
  finished_at_ms INTEGER,
  base_model_version INTEGER NOT NULL,
  committed_model_version INTEGER,
  epsilon_after REAL,
  abort_reason TEXT NOT NULL DEFAULT ''
);
CREATE TABLE privacy_ledger (
  round_id INTEGER PRIMARY KEY REFERENCES rounds(round_id),
  sampling_rate REAL NOT NULL,
  planned_noise_multiplier REAL NOT NULL,
  effective_noise_multiplier REAL NOT NULL,
  mechanism TEXT NOT NULL,
  mode TEXT NOT NULL,
  orders TEXT NOT NULL,
  rdp TEXT NOT NULL,
  epsilon_after REAL NOT NULL,
  delta REAL NOT NULL,
  best_order REAL NOT NULL,
  committed_at_ms INTEGER NOT NULL
);
)sql",
    // 2: the files of each model version, so a manifest needs no disk scan.
    R"sql(
ALTER TABLE model_versions ADD COLUMN files TEXT NOT NULL DEFAULT '';
)sql",
    // 3: which CA issued each certificate, the trust bundle sent with it, and when the client
    // first presented it, so that a CA rotation can tell which clients have moved.
    R"sql(
ALTER TABLE certificates ADD COLUMN issuer_sha256 TEXT NOT NULL DEFAULT '';
ALTER TABLE certificates ADD COLUMN trust_bundle TEXT NOT NULL DEFAULT '';
ALTER TABLE certificates ADD COLUMN first_used_at_ms INTEGER;
)sql",
    // 4: each round's bound on its samplers' distance from the noise the ledger prices.
    R"sql(
ALTER TABLE privacy_ledger ADD COLUMN sampler_total_variation REAL NOT NULL DEFAULT 0;
)sql",
    // 5: operator identities, so that an admin certificate can be revoked like a client's.
    R"sql(
CREATE TABLE admins (
  name TEXT PRIMARY KEY,
  first_seen_at_ms INTEGER NOT NULL,
  last_seen_at_ms INTEGER,
  last_serial TEXT NOT NULL DEFAULT '',
  added_by TEXT NOT NULL DEFAULT '',
  revoked_at_ms INTEGER,
  revoked_by TEXT NOT NULL DEFAULT '',
  reason TEXT NOT NULL DEFAULT ''
);
)sql",
    // 6: each certificate's public key and, for a renewal, the change from the previous key
    // signed by it, which the client's SecAgg+ peers check against the key they pinned.
    R"sql(
ALTER TABLE certificates ADD COLUMN public_key_der BLOB NOT NULL DEFAULT x'';
ALTER TABLE certificates ADD COLUMN previous_public_key_der BLOB;
ALTER TABLE certificates ADD COLUMN key_change_signature BLOB;
)sql",
    // 7: why clients left a round on their own (a site's privacy policy refusing its spec),
    // one "client: reason" line each.
    R"sql(
ALTER TABLE rounds ADD COLUMN left_reasons TEXT NOT NULL DEFAULT '';
)sql",
    // 8: the federation the store belongs to, so that a coordinator pointed at another
    // federation's store refuses it. Stores from before are claimed by their first open.
    R"sql(
CREATE TABLE federation (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  name TEXT NOT NULL
);
)sql",
};
static_assert(std::size(kMigrations) == Store::kSchemaVersion);

}  // namespace

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const std::filesystem::path& path) {
  return Migrated(sqlite::Database::Open(path));
}

absl::StatusOr<std::unique_ptr<Store>> Store::OpenInMemory() {
  return Migrated(sqlite::Database::OpenInMemory());
}

absl::StatusOr<std::unique_ptr<Store>> Store::Migrated(
    absl::StatusOr<std::unique_ptr<sqlite::Database>> db) {
  if (!db.ok()) return db.status();
  std::unique_ptr<Store> store(new Store(std::move(*db)));
  if (absl::Status status = store->Migrate(); !status.ok()) return status;
  return store;
}

absl::StatusOr<std::unique_ptr<Store>> Store::OpenExisting(const std::filesystem::path& path,
                                                           const std::string& federation) {
  const std::string restore = absl::StrCat(
      "; restore the state directory from a backup (fedmoe-coordinator restore --from BACKUP "
      "--state-dir ",
      path.parent_path().string(), ") rather than start an empty federation");
  std::error_code error;
  if (!std::filesystem::exists(path, error)) {
    return absl::FailedPreconditionError(
        absl::StrCat(path.string(),
                     " is missing: the state directory holds a federation's configuration "
                     "and keys but not its store (clients, revocations, tokens, privacy ledger)",
                     restore));
  }
  if (std::filesystem::file_size(path, error) == 0 && !error) {
    return absl::FailedPreconditionError(
        absl::StrCat(path.string(),
                     " is empty: it holds none of the federation's clients, "
                     "revocations, tokens or privacy ledger",
                     restore));
  }
  absl::StatusOr<std::unique_ptr<sqlite::Database>> db = sqlite::Database::Open(path);
  if (!db.ok()) return db.status();
  {
    absl::StatusOr<Statement> tables = (*db)->Prepare(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'");
    if (!tables.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(path.string(), " is not a readable store (",
                                                        tables.status().message(), ")", restore));
    }
    absl::StatusOr<bool> row = tables->Step();
    if (!row.ok() || tables->ColumnInt(0) == 0) {
      return absl::FailedPreconditionError(
          absl::StrCat(path.string(), " holds no fedmoe store", restore));
    }
  }
  std::unique_ptr<Store> store(new Store(std::move(*db)));
  if (absl::Status status = store->Migrate(); !status.ok()) return status;
  absl::StatusOr<std::string> owner = store->Federation();
  if (!owner.ok()) return owner.status();
  if (owner->empty()) {
    if (absl::Status status = store->RecordFederation(federation); !status.ok()) return status;
  } else if (*owner != federation) {
    return absl::FailedPreconditionError(absl::StrCat(
        path.string(), " is the store of federation '", *owner, "', not of '", federation,
        "' that this state directory's configuration names; point --state-dir at the right "
        "directory, or restore this one from its own backup"));
  }
  return store;
}

absl::StatusOr<std::string> Store::Federation() {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Statement> query = db_->Prepare("SELECT name FROM federation WHERE id = 1");
  if (!query.ok()) return query.status();
  absl::StatusOr<bool> row = query->Step();
  if (!row.ok()) return row.status();
  return *row ? query->ColumnText(0) : std::string();
}

absl::Status Store::RecordFederation(const std::string& federation) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Statement> insert = db_->Prepare(
      "INSERT INTO federation (id, name) VALUES (1, ?) "
      "ON CONFLICT (id) DO UPDATE SET name = excluded.name");
  if (!insert.ok()) return insert.status();
  return insert->Bind(1, federation).Run();
}

absl::Status Store::Migrate() {
  absl::MutexLock lock(&mutex_);
  if (absl::Status status =
          db_->Execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                       "version INTEGER PRIMARY KEY, applied_at_ms INTEGER NOT NULL)");
      !status.ok()) {
    return status;
  }
  absl::StatusOr<Statement> current = db_->Prepare("SELECT MAX(version) FROM schema_migrations");
  if (!current.ok()) return current.status();
  absl::StatusOr<bool> row = current->Step();
  if (!row.ok()) return row.status();
  const int64_t version = current->ColumnOptionalInt(0).value_or(0);
  if (version > kSchemaVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("the store has schema version ", version, " but this fedmoe knows only up to ",
                     kSchemaVersion, "; run the newer fedmoe-coordinator"));
  }
  for (int64_t next = version + 1; next <= kSchemaVersion; ++next) {
    absl::StatusOr<Transaction> transaction = Transaction::Begin(*db_);
    if (!transaction.ok()) return transaction.status();
    if (absl::Status status = db_->Execute(kMigrations[next - 1]); !status.ok()) return status;
    absl::StatusOr<Statement> record =
        db_->Prepare("INSERT INTO schema_migrations (version, applied_at_ms) VALUES (?, ?)");
    if (!record.ok()) return record.status();
    if (absl::Status status = record->Bind(1, next).Bind(2, ToMillis(absl::Now())).Run();
        !status.ok()) {
      return status;
    }
    if (absl::Status status = transaction->Commit(); !status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::StatusOr<int> Store::SchemaVersion() {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Statement> query = db_->QueryRow("SELECT MAX(version) FROM schema_migrations");
  if (!query.ok()) return query.status();
  return static_cast<int>(query->ColumnInt(0));
}

}  // namespace fedmoe::coordinator
