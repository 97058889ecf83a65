#include "coordinator/store.h"

#include <openssl/crypto.h>

#include "absl/strings/str_cat.h"

namespace fedmoe::coordinator {
namespace {

using sqlite::Statement;
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
};
static_assert(std::size(kMigrations) == Store::kSchemaVersion);

int64_t ToMillis(absl::Time time) { return absl::ToUnixMillis(time); }
absl::Time FromMillis(int64_t millis) { return absl::FromUnixMillis(millis); }
std::optional<absl::Time> FromOptionalMillis(const std::optional<int64_t>& millis) {
  if (!millis.has_value()) return std::nullopt;
  return FromMillis(*millis);
}

constexpr char kClientColumns[] = R"sql(
  c.client_id, c.spiffe_id, c.client_version, c.enrolled_at_ms, c.last_seen_at_ms,
  c.rounds_participated, r.revoked_at_ms, COALESCE(r.reason, ''),
  (SELECT serial FROM certificates WHERE client_id = c.client_id
     ORDER BY issued_at_ms DESC, rowid DESC LIMIT 1),
  (SELECT not_after_ms FROM certificates WHERE client_id = c.client_id
     ORDER BY issued_at_ms DESC, rowid DESC LIMIT 1)
  FROM clients c LEFT JOIN revocations r ON r.client_id = c.client_id)sql";

ClientRecord ReadClient(const Statement& row) {
  ClientRecord client;
  client.client_id = row.ColumnText(0);
  client.spiffe_id = row.ColumnText(1);
  client.client_version = row.ColumnText(2);
  client.enrolled_at = FromMillis(row.ColumnInt(3));
  client.last_seen_at = FromOptionalMillis(row.ColumnOptionalInt(4));
  client.rounds_participated = row.ColumnInt(5);
  client.revoked_at = FromOptionalMillis(row.ColumnOptionalInt(6));
  client.revocation_reason = row.ColumnText(7);
  client.certificate_serial = row.ColumnText(8);
  client.certificate_not_after = FromMillis(row.ColumnInt(9));
  return client;
}

constexpr char kTokenColumns[] =
    "token_id, client_id, created_at_ms, expires_at_ms, used_at_ms, revoked_at_ms";

TokenRecord ReadToken(const Statement& row) {
  TokenRecord token;
  token.token_id = row.ColumnText(0);
  token.client_id = row.ColumnText(1);
  token.created_at = FromMillis(row.ColumnInt(2));
  token.expires_at = FromMillis(row.ColumnInt(3));
  token.used_at = FromOptionalMillis(row.ColumnOptionalInt(4));
  token.revoked_at = FromOptionalMillis(row.ColumnOptionalInt(5));
  return token;
}

absl::Status InsertCertificate(sqlite::Database& db, const std::string& client_id,
                               const IssuedCertificate& certificate, absl::Time now) {
  absl::StatusOr<Statement> insert = db.Prepare(
      "INSERT INTO certificates (serial, client_id, issued_at_ms, not_after_ms) "
      "VALUES (?, ?, ?, ?)");
  if (!insert.ok()) return insert.status();
  return insert->Bind(1, certificate.serial)
      .Bind(2, client_id)
      .Bind(3, ToMillis(now))
      .Bind(4, ToMillis(certificate.not_after))
      .Run();
}

}  // namespace

TokenState TokenRecord::StateAt(absl::Time now) const {
  if (used_at.has_value()) return TokenState::kUsed;
  if (revoked_at.has_value()) return TokenState::kRevoked;
  if (now >= expires_at) return TokenState::kExpired;
  return TokenState::kUnused;
}

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const std::filesystem::path& path) {
  absl::StatusOr<std::unique_ptr<sqlite::Database>> db = sqlite::Database::Open(path);
  if (!db.ok()) return db.status();
  std::unique_ptr<Store> store(new Store(std::move(*db)));
  if (absl::Status status = store->Migrate(); !status.ok()) return status;
  return store;
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
  absl::StatusOr<Statement> query = db_->Prepare("SELECT MAX(version) FROM schema_migrations");
  if (!query.ok()) return query.status();
  if (absl::StatusOr<bool> row = query->Step(); !row.ok()) return row.status();
  return static_cast<int>(query->ColumnInt(0));
}

absl::Status Store::AddToken(const TokenRecord& token, const std::string& secret_hash) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Statement> insert = db_->Prepare(
      "INSERT INTO enrollment_tokens (token_id, secret_sha256, client_id, created_at_ms, "
      "expires_at_ms) VALUES (?, ?, ?, ?, ?)");
  if (!insert.ok()) return insert.status();
  return insert->Bind(1, token.token_id)
      .BindBlob(2, secret_hash)
      .Bind(3, token.client_id)
      .Bind(4, ToMillis(token.created_at))
      .Bind(5, ToMillis(token.expires_at))
      .Run();
}

absl::StatusOr<ClientRecord> Store::Enroll(
    const std::string& token_id, const std::string& secret_hash, const std::string& version,
    absl::Time now,
    const std::function<absl::StatusOr<IssuedCertificate>(const std::string& client_id)>& issue) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Transaction> transaction = Transaction::Begin(*db_);
  if (!transaction.ok()) return transaction.status();

  absl::StatusOr<Statement> find = db_->Prepare(absl::StrCat(
      "SELECT ", kTokenColumns, ", secret_sha256 FROM enrollment_tokens ", "WHERE token_id = ?"));
  if (!find.ok()) return find.status();
  find->Bind(1, token_id);
  absl::StatusOr<bool> found = find->Step();
  if (!found.ok()) return found.status();
  if (!*found)
    return absl::UnauthenticatedError("enrollment token is not known to this coordinator");
  const TokenRecord token = ReadToken(*find);
  const std::string stored_hash = find->ColumnBlob(6);
  if (stored_hash.size() != secret_hash.size() ||
      CRYPTO_memcmp(stored_hash.data(), secret_hash.data(), stored_hash.size()) != 0) {
    return absl::UnauthenticatedError("enrollment token is not known to this coordinator");
  }
  switch (token.StateAt(now)) {
    case TokenState::kUsed:
      return absl::UnauthenticatedError("enrollment token was already used");
    case TokenState::kRevoked:
      return absl::UnauthenticatedError("enrollment token was revoked");
    case TokenState::kExpired:
      return absl::UnauthenticatedError(absl::StrCat(
          "enrollment token expired at ", absl::FormatTime(token.expires_at, absl::UTCTimeZone())));
    case TokenState::kUnused:
      break;
  }
  if (absl::StatusOr<ClientRecord> existing = GetClientLocked(token.client_id); existing.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("client id '", token.client_id, "' is already ",
                     existing->revoked() ? "revoked; enroll under a new id" : "enrolled"));
  }

  absl::StatusOr<IssuedCertificate> certificate = issue(token.client_id);
  if (!certificate.ok()) return certificate.status();

  absl::StatusOr<Statement> use =
      db_->Prepare("UPDATE enrollment_tokens SET used_at_ms = ? WHERE token_id = ?");
  if (!use.ok()) return use.status();
  if (absl::Status status = use->Bind(1, ToMillis(now)).Bind(2, token_id).Run(); !status.ok()) {
    return status;
  }
  absl::StatusOr<Statement> insert = db_->Prepare(
      "INSERT INTO clients (client_id, spiffe_id, client_version, enrolled_at_ms) "
      "VALUES (?, ?, ?, ?)");
  if (!insert.ok()) return insert.status();
  if (absl::Status status = insert->Bind(1, token.client_id)
                                .Bind(2, certificate->spiffe_id)
                                .Bind(3, version)
                                .Bind(4, ToMillis(now))
                                .Run();
      !status.ok()) {
    return status;
  }
  if (absl::Status status = InsertCertificate(*db_, token.client_id, *certificate, now);
      !status.ok()) {
    return status;
  }
  if (absl::Status status = transaction->Commit(); !status.ok()) return status;
  return GetClientLocked(token.client_id);
}

absl::Status Store::RecordRenewal(const std::string& client_id,
                                  const IssuedCertificate& certificate, absl::Time now) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Transaction> transaction = Transaction::Begin(*db_);
  if (!transaction.ok()) return transaction.status();
  absl::StatusOr<ClientRecord> client = GetClientLocked(client_id);
  if (!client.ok()) return client.status();
  if (client->revoked()) {
    return absl::PermissionDeniedError(absl::StrCat("client '", client_id, "' is revoked"));
  }
  if (absl::Status status = InsertCertificate(*db_, client_id, certificate, now); !status.ok()) {
    return status;
  }
  return transaction->Commit();
}

absl::Status Store::AuthorizeClient(const std::string& client_id, const std::string& serial) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Statement> query = db_->Prepare(
      "SELECT (SELECT revoked_at_ms FROM revocations WHERE client_id = ?1), "
      "EXISTS (SELECT 1 FROM clients WHERE client_id = ?1), "
      "EXISTS (SELECT 1 FROM certificates WHERE client_id = ?1 AND serial = ?2)");
  if (!query.ok()) return query.status();
  query->Bind(1, client_id).Bind(2, serial);
  if (absl::StatusOr<bool> row = query->Step(); !row.ok()) return row.status();
  if (query->ColumnInt(1) == 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("client '", client_id, "' is not enrolled in this federation"));
  }
  if (!query->ColumnIsNull(0)) {
    return absl::PermissionDeniedError(absl::StrCat("client '", client_id, "' is revoked"));
  }
  if (query->ColumnInt(2) == 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("certificate serial ", serial, " was not issued to client '", client_id, "'"));
  }
  return absl::OkStatus();
}

absl::Status Store::TouchClient(const std::string& client_id, absl::Time now) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Statement> update = db_->Prepare(
      "UPDATE clients SET last_seen_at_ms = ?1 WHERE client_id = ?2 AND "
      "(last_seen_at_ms IS NULL OR last_seen_at_ms < ?1 - 60000)");
  if (!update.ok()) return update.status();
  return update->Bind(1, ToMillis(now)).Bind(2, client_id).Run();
}

absl::StatusOr<ClientRecord> Store::GetClient(const std::string& client_id) {
  absl::MutexLock lock(&mutex_);
  return GetClientLocked(client_id);
}

absl::StatusOr<ClientRecord> Store::GetClientLocked(const std::string& client_id) {
  absl::StatusOr<Statement> query =
      db_->Prepare(absl::StrCat("SELECT ", kClientColumns, " WHERE c.client_id = ?"));
  if (!query.ok()) return query.status();
  query->Bind(1, client_id);
  absl::StatusOr<bool> row = query->Step();
  if (!row.ok()) return row.status();
  if (!*row) return absl::NotFoundError(absl::StrCat("no client '", client_id, "'"));
  return ReadClient(*query);
}

absl::StatusOr<std::vector<ClientRecord>> Store::ListClients(bool include_revoked,
                                                             const std::string& after_client_id,
                                                             int limit) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Statement> query =
      db_->Prepare(absl::StrCat("SELECT ", kClientColumns,
                                " WHERE c.client_id > ?1 AND (?2 OR r.client_id IS NULL)"
                                " ORDER BY c.client_id LIMIT ?3"));
  if (!query.ok()) return query.status();
  query->Bind(1, after_client_id).Bind(2, int64_t{include_revoked ? 1 : 0}).Bind(3, int64_t{limit});
  std::vector<ClientRecord> clients;
  while (true) {
    absl::StatusOr<bool> row = query->Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    clients.push_back(ReadClient(*query));
  }
  return clients;
}

absl::StatusOr<ClientRecord> Store::RevokeClient(const std::string& client_id,
                                                 const std::string& reason, absl::Time now) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Transaction> transaction = Transaction::Begin(*db_);
  if (!transaction.ok()) return transaction.status();
  absl::StatusOr<ClientRecord> client = GetClientLocked(client_id);
  if (!client.ok()) return client.status();
  if (client->revoked()) return client;
  absl::StatusOr<Statement> insert =
      db_->Prepare("INSERT INTO revocations (client_id, revoked_at_ms, reason) VALUES (?, ?, ?)");
  if (!insert.ok()) return insert.status();
  if (absl::Status status = insert->Bind(1, client_id).Bind(2, ToMillis(now)).Bind(3, reason).Run();
      !status.ok()) {
    return status;
  }
  if (absl::Status status = transaction->Commit(); !status.ok()) return status;
  return GetClientLocked(client_id);
}

absl::StatusOr<std::vector<TokenRecord>> Store::ListTokens(int limit) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Statement> query =
      db_->Prepare(absl::StrCat("SELECT ", kTokenColumns,
                                " FROM enrollment_tokens ORDER BY created_at_ms DESC, rowid DESC "
                                "LIMIT ?"));
  if (!query.ok()) return query.status();
  query->Bind(1, int64_t{limit});
  std::vector<TokenRecord> tokens;
  while (true) {
    absl::StatusOr<bool> row = query->Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    tokens.push_back(ReadToken(*query));
  }
  return tokens;
}

absl::StatusOr<TokenRecord> Store::RevokeToken(const std::string& token_id, absl::Time now) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Transaction> transaction = Transaction::Begin(*db_);
  if (!transaction.ok()) return transaction.status();
  auto read = [&]() -> absl::StatusOr<TokenRecord> {
    absl::StatusOr<Statement> query = db_->Prepare(
        absl::StrCat("SELECT ", kTokenColumns, " FROM enrollment_tokens WHERE token_id = ?"));
    if (!query.ok()) return query.status();
    query->Bind(1, token_id);
    absl::StatusOr<bool> row = query->Step();
    if (!row.ok()) return row.status();
    if (!*row) return absl::NotFoundError(absl::StrCat("no enrollment token '", token_id, "'"));
    return ReadToken(*query);
  };
  absl::StatusOr<TokenRecord> token = read();
  if (!token.ok()) return token.status();
  if (token->used_at.has_value()) {
    return absl::FailedPreconditionError(
        absl::StrCat("token '", token_id, "' was already used; revoke the client instead"));
  }
  if (token->revoked_at.has_value()) return token;
  absl::StatusOr<Statement> update =
      db_->Prepare("UPDATE enrollment_tokens SET revoked_at_ms = ? WHERE token_id = ?");
  if (!update.ok()) return update.status();
  if (absl::Status status = update->Bind(1, ToMillis(now)).Bind(2, token_id).Run(); !status.ok()) {
    return status;
  }
  if (absl::Status status = transaction->Commit(); !status.ok()) return status;
  return read();
}

absl::StatusOr<Store::ClientCounts> Store::CountClients() {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Statement> query = db_->Prepare(
      "SELECT (SELECT COUNT(*) FROM clients) - (SELECT COUNT(*) FROM revocations), "
      "(SELECT COUNT(*) FROM revocations)");
  if (!query.ok()) return query.status();
  if (absl::StatusOr<bool> row = query->Step(); !row.ok()) return row.status();
  return ClientCounts{query->ColumnInt(0), query->ColumnInt(1)};
}

}  // namespace fedmoe::coordinator
