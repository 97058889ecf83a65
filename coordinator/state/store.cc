#include "coordinator/state/store.h"

#include <openssl/crypto.h>

#include <limits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

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

constexpr char kAdminColumns[] =
    "name, first_seen_at_ms, last_seen_at_ms, last_serial, added_by, revoked_at_ms, revoked_by, "
    "reason";

AdminRecord ReadAdmin(const Statement& row) {
  AdminRecord admin;
  admin.name = row.ColumnText(0);
  admin.first_seen_at = FromMillis(row.ColumnInt(1));
  admin.last_seen_at = FromOptionalMillis(row.ColumnOptionalInt(2));
  admin.last_serial = row.ColumnText(3);
  admin.added_by = row.ColumnText(4);
  admin.revoked_at = FromOptionalMillis(row.ColumnOptionalInt(5));
  admin.revoked_by = row.ColumnText(6);
  admin.reason = row.ColumnText(7);
  return admin;
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
      "INSERT INTO certificates (serial, client_id, issued_at_ms, not_after_ms, issuer_sha256, "
      "trust_bundle, public_key_der, previous_public_key_der, key_change_signature) "
      "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)");
  if (!insert.ok()) return insert.status();
  insert->Bind(1, certificate.serial)
      .Bind(2, client_id)
      .Bind(3, ToMillis(now))
      .Bind(4, ToMillis(certificate.not_after))
      .Bind(5, certificate.issuer_fingerprint)
      .Bind(6, absl::StrJoin(certificate.trust_bundle, ","))
      .BindBlob(7, certificate.public_key_der);
  if (certificate.key_change.has_value()) {
    insert->BindBlob(8, certificate.key_change->old_public_key_der)
        .BindBlob(9, certificate.key_change->signature);
  } else {
    insert->BindNull(8).BindNull(9);
  }
  return insert->Run();
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

absl::StatusOr<std::vector<pki::KeyChange>> Store::KeyChanges(const std::string& client_id,
                                                              int limit) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Statement> query = db_->Prepare(
      "SELECT previous_public_key_der, public_key_der, key_change_signature FROM ("
      "SELECT previous_public_key_der, public_key_der, key_change_signature, issued_at_ms, rowid "
      "FROM certificates WHERE client_id = ? AND key_change_signature IS NOT NULL "
      "ORDER BY issued_at_ms DESC, rowid DESC LIMIT ?) ORDER BY issued_at_ms, rowid");
  if (!query.ok()) return query.status();
  query->Bind(1, client_id).Bind(2, int64_t{limit});
  std::vector<pki::KeyChange> changes;
  while (true) {
    absl::StatusOr<bool> row = query->Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    changes.push_back({query->ColumnBlob(0), query->ColumnBlob(1), query->ColumnBlob(2)});
  }
  return changes;
}

absl::Status Store::AuthorizeClient(const std::string& client_id, const std::string& serial) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Statement> query = db_->Prepare(
      "SELECT (SELECT revoked_at_ms FROM revocations WHERE client_id = ?1), "
      "EXISTS (SELECT 1 FROM clients WHERE client_id = ?1), "
      // NULL when the serial was not issued to the client; 1 on its first use.
      "(SELECT first_used_at_ms IS NULL FROM certificates WHERE client_id = ?1 AND serial = ?2)");
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
  if (query->ColumnIsNull(2)) {
    return absl::PermissionDeniedError(
        absl::StrCat("certificate serial ", serial, " was not issued to client '", client_id, "'"));
  }
  if (query->ColumnInt(2) != 0) {
    // The first call with a certificate: the client holds it, and the trust bundle that came
    // with it (the client writes the bundle first). Written once per certificate.
    absl::StatusOr<Statement> used = db_->Prepare(
        "UPDATE certificates SET first_used_at_ms = ?1 WHERE serial = ?2 AND "
        "first_used_at_ms IS NULL");
    if (!used.ok()) return used.status();
    if (absl::Status status = used->Bind(1, ToMillis(absl::Now())).Bind(2, serial).Run();
        !status.ok()) {
      return status;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> Store::ClientsWithoutCa(const std::string& fingerprint,
                                                                 CaHolding holding,
                                                                 absl::Time now) {
  absl::MutexLock lock(&mutex_);
  // A client counts while it could still call: enrolled, unrevoked, its newest certificate
  // unexpired. It has moved once it has presented a certificate that proves the holding.
  const char* proof = holding == CaHolding::kIssuedBy
                          ? "u.issuer_sha256 = ?1"
                          : "instr(',' || u.trust_bundle || ',', ',' || ?1 || ',') > 0";
  absl::StatusOr<Statement> query = db_->Prepare(absl::StrCat(
      "SELECT c.client_id FROM clients c "
      "WHERE NOT EXISTS (SELECT 1 FROM revocations r WHERE r.client_id = c.client_id) "
      "AND (SELECT MAX(not_after_ms) FROM certificates WHERE client_id = c.client_id) > ?2 "
      "AND NOT EXISTS (SELECT 1 FROM certificates u WHERE u.client_id = c.client_id "
      "                AND u.first_used_at_ms IS NOT NULL AND ",
      proof, ") ORDER BY c.client_id"));
  if (!query.ok()) return query.status();
  query->Bind(1, fingerprint).Bind(2, ToMillis(now));
  std::vector<std::string> missing;
  while (true) {
    absl::StatusOr<bool> row = query->Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    missing.push_back(query->ColumnText(0));
  }
  return missing;
}

absl::Status Store::TouchClient(const std::string& client_id, absl::Time now) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Statement> update = db_->Prepare(
      "UPDATE clients SET last_seen_at_ms = ?1 WHERE client_id = ?2 AND "
      "(last_seen_at_ms IS NULL OR last_seen_at_ms < ?1 - 60000)");
  if (!update.ok()) return update.status();
  return update->Bind(1, ToMillis(now)).Bind(2, client_id).Run();
}

absl::Status Store::AuthorizeAdmin(const std::string& name, const std::string& serial,
                                   absl::Time now) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<std::optional<AdminRecord>> admin = FindAdminLocked(name);
  if (!admin.ok()) return admin.status();
  if (admin->has_value() && (*admin)->revoked()) {
    return absl::PermissionDeniedError(absl::StrCat(
        "admin '", name, "' is revoked", (*admin)->reason.empty() ? "" : ": ", (*admin)->reason));
  }
  // The CA vouches for an admin name the store has not seen yet (the operator's own, written by
  // `init`); its first call records it so that it can be listed and revoked.
  absl::StatusOr<Statement> upsert = db_->Prepare(
      "INSERT INTO admins (name, first_seen_at_ms, last_seen_at_ms, last_serial) "
      "VALUES (?1, ?2, ?2, ?3) ON CONFLICT(name) DO UPDATE SET last_seen_at_ms = ?2, "
      "last_serial = ?3");
  if (!upsert.ok()) return upsert.status();
  return upsert->Bind(1, name).Bind(2, ToMillis(now)).Bind(3, serial).Run();
}

absl::Status Store::AddAdmin(const std::string& name, const std::string& added_by, absl::Time now,
                             const std::function<absl::StatusOr<std::string>()>& issue) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<std::optional<AdminRecord>> admin = FindAdminLocked(name);
  if (!admin.ok()) return admin.status();
  if (admin->has_value()) {
    return absl::AlreadyExistsError(absl::StrCat("admin '", name, "' already exists",
                                                 (*admin)->revoked() ? " and is revoked" : "",
                                                 "; choose another name"));
  }
  absl::StatusOr<std::string> serial = issue();
  if (!serial.ok()) return serial.status();
  absl::StatusOr<Statement> insert = db_->Prepare(
      "INSERT INTO admins (name, first_seen_at_ms, last_serial, added_by) VALUES (?, ?, ?, ?)");
  if (!insert.ok()) return insert.status();
  return insert->Bind(1, name).Bind(2, ToMillis(now)).Bind(3, *serial).Bind(4, added_by).Run();
}

absl::StatusOr<std::vector<AdminRecord>> Store::ListAdmins() {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Statement> query =
      db_->Prepare(absl::StrCat("SELECT ", kAdminColumns, " FROM admins ORDER BY name"));
  if (!query.ok()) return query.status();
  std::vector<AdminRecord> admins;
  while (true) {
    absl::StatusOr<bool> row = query->Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    admins.push_back(ReadAdmin(*query));
  }
  return admins;
}

absl::StatusOr<AdminRecord> Store::RevokeAdmin(const std::string& name, const std::string& reason,
                                               const std::string& revoked_by, absl::Time now) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<std::optional<AdminRecord>> admin = FindAdminLocked(name);
  if (!admin.ok()) return admin.status();
  if (!admin->has_value()) {
    return absl::NotFoundError(absl::StrCat("no admin '", name,
                                            "': an admin is known once it was added or has "
                                            "called; see `admins list`"));
  }
  if ((*admin)->revoked()) return **admin;
  absl::StatusOr<Statement> update = db_->Prepare(
      "UPDATE admins SET revoked_at_ms = ?, revoked_by = ?, reason = ? WHERE name = ?");
  if (!update.ok()) return update.status();
  if (absl::Status status =
          update->Bind(1, ToMillis(now)).Bind(2, revoked_by).Bind(3, reason).Bind(4, name).Run();
      !status.ok()) {
    return status;
  }
  absl::StatusOr<std::optional<AdminRecord>> revoked = FindAdminLocked(name);
  if (!revoked.ok()) return revoked.status();
  return **revoked;
}

absl::StatusOr<std::optional<AdminRecord>> Store::FindAdminLocked(const std::string& name) {
  absl::StatusOr<Statement> query =
      db_->Prepare(absl::StrCat("SELECT ", kAdminColumns, " FROM admins WHERE name = ?"));
  if (!query.ok()) return query.status();
  query->Bind(1, name);
  absl::StatusOr<bool> row = query->Step();
  if (!row.ok()) return row.status();
  if (!*row) return std::nullopt;
  return ReadAdmin(*query);
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

namespace {

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
  absl::StatusOr<Statement> query = db_->Prepare("SELECT MAX(round_id) FROM rounds");
  if (!query.ok()) return query.status();
  if (absl::StatusOr<bool> row = query->Step(); !row.ok()) return row.status();
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
  absl::StatusOr<Statement> query = db_->Prepare(
      "SELECT COALESCE(SUM(stage = 'COMMITTED'), 0), COALESCE(SUM(stage = 'ABORTED'), 0) "
      "FROM rounds");
  if (!query.ok()) return query.status();
  if (absl::StatusOr<bool> row = query->Step(); !row.ok()) return row.status();
  return RoundCounts{query->ColumnInt(0), query->ColumnInt(1)};
}

}  // namespace fedmoe::coordinator
