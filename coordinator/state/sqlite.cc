#include "coordinator/state/sqlite.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace fedmoe::coordinator::sqlite {

Statement::Statement(sqlite3* db, sqlite3_stmt* statement, std::string sql)
    : db_(db), statement_(statement), sql_(std::move(sql)) {}

absl::Status Statement::Check(int code, std::string_view what) const {
  if (code == SQLITE_OK || code == SQLITE_ROW || code == SQLITE_DONE) return absl::OkStatus();
  const absl::StatusCode status_code = code == SQLITE_CONSTRAINT ? absl::StatusCode::kAlreadyExists
                                       : code == SQLITE_BUSY     ? absl::StatusCode::kUnavailable
                                                                 : absl::StatusCode::kInternal;
  return {status_code, absl::StrCat("sqlite ", std::string(what), " failed (", sqlite3_errmsg(db_),
                                    ") in: ", sql_)};
}

Statement& Statement::Bind(int index, int64_t value) {
  if (bind_status_.ok()) {
    bind_status_ = Check(sqlite3_bind_int64(statement_.get(), index, value), "bind");
  }
  return *this;
}

Statement& Statement::Bind(int index, double value) {
  if (bind_status_.ok()) {
    bind_status_ = Check(sqlite3_bind_double(statement_.get(), index, value), "bind");
  }
  return *this;
}

Statement& Statement::Bind(int index, std::string_view text) {
  if (bind_status_.ok()) {
    bind_status_ = Check(sqlite3_bind_text64(statement_.get(), index, text.data(), text.size(),
                                             SQLITE_TRANSIENT, SQLITE_UTF8),
                         "bind");
  }
  return *this;
}

Statement& Statement::BindBlob(int index, std::string_view bytes) {
  if (bind_status_.ok()) {
    bind_status_ = Check(
        sqlite3_bind_blob64(statement_.get(), index, bytes.data(), bytes.size(), SQLITE_TRANSIENT),
        "bind");
  }
  return *this;
}

Statement& Statement::BindNull(int index) {
  if (bind_status_.ok()) {
    bind_status_ = Check(sqlite3_bind_null(statement_.get(), index), "bind");
  }
  return *this;
}

Statement& Statement::Bind(int index, const std::optional<int64_t>& value) {
  return value.has_value() ? Bind(index, *value) : BindNull(index);
}

absl::StatusOr<bool> Statement::Step() {
  if (!bind_status_.ok()) return bind_status_;
  const int code = sqlite3_step(statement_.get());
  if (code == SQLITE_ROW) return true;
  if (code == SQLITE_DONE) return false;
  return Check(code, "step");
}

absl::Status Statement::Run() {
  absl::StatusOr<bool> row = Step();
  if (!row.ok()) return row.status();
  return absl::OkStatus();
}

int64_t Statement::ColumnInt(int index) const {
  return sqlite3_column_int64(statement_.get(), index);
}

double Statement::ColumnDouble(int index) const {
  return sqlite3_column_double(statement_.get(), index);
}

std::string Statement::ColumnText(int index) const {
  const auto* text = sqlite3_column_text(statement_.get(), index);
  const int size = sqlite3_column_bytes(statement_.get(), index);
  return text == nullptr
             ? std::string()
             : std::string(reinterpret_cast<const char*>(text), static_cast<size_t>(size));
}

std::string Statement::ColumnBlob(int index) const {
  const void* blob = sqlite3_column_blob(statement_.get(), index);
  const int size = sqlite3_column_bytes(statement_.get(), index);
  return blob == nullptr ? std::string()
                         : std::string(static_cast<const char*>(blob), static_cast<size_t>(size));
}

bool Statement::ColumnIsNull(int index) const {
  return sqlite3_column_type(statement_.get(), index) == SQLITE_NULL;
}

std::optional<int64_t> Statement::ColumnOptionalInt(int index) const {
  if (ColumnIsNull(index)) return std::nullopt;
  return ColumnInt(index);
}

namespace {

// The store holds hashed tokens, the registry and the privacy ledger: owner-only, like the keys
// beside it. SQLite gives its -wal and -shm files the database file's mode, so the database is
// created 0600 before SQLite opens it, and an older one (and its WAL) is narrowed to 0600.
absl::Status RestrictToOwner(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot open store ", path.string(), ": ", std::strerror(errno)));
  }
  const int changed = ::fchmod(fd, 0600);
  ::close(fd);
  if (changed != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot make store ", path.string(), " owner-only: ", std::strerror(errno)));
  }
  for (const char* suffix : {"-wal", "-shm"}) {
    const std::string companion = path.string() + suffix;
    if (::chmod(companion.c_str(), 0600) != 0 && errno != ENOENT) {
      return absl::UnavailableError(
          absl::StrCat("cannot make ", companion, " owner-only: ", std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Database>> Database::Open(const std::filesystem::path& path) {
  if (absl::Status status = RestrictToOwner(path); !status.ok()) return status;
  sqlite3* raw = nullptr;
  const int code =
      sqlite3_open_v2(path.c_str(), &raw,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr);
  std::unique_ptr<Database> db(new Database(raw));
  if (code != SQLITE_OK) {
    return absl::UnavailableError(absl::StrCat("cannot open store ", path.string(), ": ",
                                               raw ? sqlite3_errmsg(raw) : "out of memory"));
  }
  sqlite3_busy_timeout(raw, 5000);
  sqlite3_extended_result_codes(raw, 0);
  // WAL: readers never block the writer. synchronous=FULL: a committed transaction survives a
  // power cut, which the "no committed state is lost" promise needs.
  if (absl::Status status =
          db->Execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;");
      !status.ok()) {
    return absl::UnavailableError(
        absl::StrCat("store ", path.string(), " is not a usable database: ", status.message()));
  }
  return db;
}

absl::StatusOr<std::unique_ptr<Database>> Database::OpenInMemory() {
  sqlite3* raw = nullptr;
  const int code =
      sqlite3_open_v2(":memory:", &raw,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr);
  std::unique_ptr<Database> db(new Database(raw));
  if (code != SQLITE_OK) {
    return absl::UnavailableError(absl::StrCat("cannot open a store in memory: ",
                                               raw ? sqlite3_errmsg(raw) : "out of memory"));
  }
  sqlite3_extended_result_codes(raw, 0);
  if (absl::Status status = db->Execute("PRAGMA foreign_keys=ON;"); !status.ok()) return status;
  return db;
}

Database::~Database() { sqlite3_close_v2(db_); }

absl::Status Database::BackupTo(const std::filesystem::path& destination) {
  if (absl::Status status = RestrictToOwner(destination); !status.ok()) return status;
  sqlite3* raw = nullptr;
  if (sqlite3_open_v2(destination.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                      nullptr) != SQLITE_OK) {
    const std::string why = raw != nullptr ? sqlite3_errmsg(raw) : "out of memory";
    sqlite3_close_v2(raw);
    return absl::UnavailableError(absl::StrCat("cannot create ", destination.string(), ": ", why));
  }
  std::unique_ptr<sqlite3, int (*)(sqlite3*)> target(raw, sqlite3_close_v2);
  sqlite3_backup* backup = sqlite3_backup_init(target.get(), "main", db_, "main");
  if (backup == nullptr) {
    return absl::InternalError(
        absl::StrCat("cannot start the store backup: ", sqlite3_errmsg(target.get())));
  }
  // All pages in one step: a copy of a federation's metadata is small, and one step is one
  // consistent read snapshot.
  const int stepped = sqlite3_backup_step(backup, -1);
  const int finished = sqlite3_backup_finish(backup);
  if (stepped != SQLITE_DONE || finished != SQLITE_OK) {
    return absl::UnavailableError(
        absl::StrCat("the store backup failed: ", sqlite3_errmsg(target.get())));
  }
  return absl::OkStatus();
}

absl::StatusOr<Statement> Database::Prepare(std::string_view sql) {
  sqlite3_stmt* statement = nullptr;
  const int code =
      sqlite3_prepare_v2(db_, sql.data(), static_cast<int>(sql.size()), &statement, nullptr);
  if (code != SQLITE_OK) {
    sqlite3_finalize(statement);
    return absl::InternalError(
        absl::StrCat("sqlite prepare failed (", sqlite3_errmsg(db_), ") in: ", std::string(sql)));
  }
  return Statement(db_, statement, std::string(sql));
}

absl::StatusOr<Statement> Database::QueryRow(std::string_view sql) {
  absl::StatusOr<Statement> query = Prepare(sql);
  if (!query.ok()) return query.status();
  absl::StatusOr<bool> row = query->Step();
  if (!row.ok()) return row.status();
  if (!*row) return absl::InternalError(absl::StrCat("no row from: ", std::string(sql)));
  return query;
}

absl::Status Database::Execute(std::string_view sql) {
  char* error = nullptr;
  const std::string text(sql);
  if (sqlite3_exec(db_, text.c_str(), nullptr, nullptr, &error) != SQLITE_OK) {
    absl::Status status = absl::InternalError(
        absl::StrCat("sqlite exec failed (", error ? error : sqlite3_errmsg(db_), ") in: ", text));
    sqlite3_free(error);
    return status;
  }
  return absl::OkStatus();
}

int64_t Database::Changes() const { return sqlite3_changes64(db_); }

absl::StatusOr<Transaction> Transaction::Begin(Database& db) {
  if (absl::Status status = db.Execute("BEGIN IMMEDIATE"); !status.ok()) return status;
  return Transaction(&db);
}

Transaction::Transaction(Transaction&& other) noexcept : db_(std::exchange(other.db_, nullptr)) {}

Transaction::~Transaction() {
  if (db_ != nullptr) db_->Execute("ROLLBACK").IgnoreError();
}

absl::Status Transaction::Commit() {
  if (db_ == nullptr) return absl::FailedPreconditionError("transaction already finished");
  absl::Status status = db_->Execute("COMMIT");
  if (status.ok()) db_ = nullptr;
  return status;
}

}  // namespace fedmoe::coordinator::sqlite
