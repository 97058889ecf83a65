// The Store's enrollment tables: tokens, clients and their certificates and key changes, and
// admins.
#include <openssl/crypto.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "coordinator/state/store.h"

namespace fedmoe::coordinator {
namespace {

using sqlite::FromMillis;
using sqlite::FromOptionalMillis;
using sqlite::Statement;
using sqlite::ToMillis;
using sqlite::Transaction;

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
  absl::StatusOr<Statement> query = db_->QueryRow(
      "SELECT (SELECT COUNT(*) FROM clients) - (SELECT COUNT(*) FROM revocations), "
      "(SELECT COUNT(*) FROM revocations)");
  if (!query.ok()) return query.status();
  return ClientCounts{query->ColumnInt(0), query->ColumnInt(1)};
}

}  // namespace fedmoe::coordinator
