// A thin RAII layer over SQLite's C API for the coordinator's store: a connection, prepared
// statements with typed binds and columns, and transactions that roll back unless committed.
// Every failure becomes an absl::Status that names the statement.
#ifndef FEDMOE_COORDINATOR_STATE_SQLITE_H_
#define FEDMOE_COORDINATOR_STATE_SQLITE_H_

#include <sqlite3.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace fedmoe::coordinator::sqlite {

// Times are stored as Unix milliseconds.
inline int64_t ToMillis(absl::Time time) { return absl::ToUnixMillis(time); }
inline absl::Time FromMillis(int64_t millis) { return absl::FromUnixMillis(millis); }
inline std::optional<absl::Time> FromOptionalMillis(const std::optional<int64_t>& millis) {
  if (!millis.has_value()) return std::nullopt;
  return FromMillis(*millis);
}

class Database;

// One prepared statement. Bind parameters by 1-based index, then Step() through the rows.
class Statement {
 public:
  Statement(Statement&&) noexcept = default;
  Statement& operator=(Statement&&) noexcept = default;

  Statement& Bind(int index, int64_t value);
  Statement& Bind(int index, double value);
  Statement& Bind(int index, std::string_view text);
  Statement& BindBlob(int index, std::string_view bytes);
  Statement& BindNull(int index);
  Statement& Bind(int index, const std::optional<int64_t>& value);

  // True while a row is available; false when done. An error (including a failed bind) comes
  // back as a status.
  absl::StatusOr<bool> Step();
  // Runs a statement that returns no rows.
  absl::Status Run();

  int64_t ColumnInt(int index) const;
  double ColumnDouble(int index) const;
  std::string ColumnText(int index) const;
  std::string ColumnBlob(int index) const;
  bool ColumnIsNull(int index) const;
  std::optional<int64_t> ColumnOptionalInt(int index) const;

 private:
  friend class Database;
  Statement(sqlite3* db, sqlite3_stmt* statement, std::string sql);
  absl::Status Check(int code, std::string_view what) const;

  struct Finalizer {
    void operator()(sqlite3_stmt* statement) const { sqlite3_finalize(statement); }
  };
  sqlite3* db_;
  std::unique_ptr<sqlite3_stmt, Finalizer> statement_;
  std::string sql_;
  absl::Status bind_status_;
};

class Database {
 public:
  // Opens or creates the database in WAL mode with foreign keys on and full fsync on commit.
  static absl::StatusOr<std::unique_ptr<Database>> Open(const std::filesystem::path& path);
  // A private database in memory, gone when closed: for unit tests of what sits on the store.
  static absl::StatusOr<std::unique_ptr<Database>> OpenInMemory();

  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;
  ~Database();

  absl::StatusOr<Statement> Prepare(std::string_view sql);
  // Prepares a query without parameters that yields one row (an aggregate: COUNT, MAX) and
  // steps onto it, for its Column* calls.
  absl::StatusOr<Statement> QueryRow(std::string_view sql);
  // Runs one or more statements that take no parameters.
  absl::Status Execute(std::string_view sql);
  int64_t Changes() const;
  // A consistent copy of the whole database in a new file, taken with SQLite's online backup
  // while other connections keep writing (DESIGN: restarts and backups lose nothing).
  absl::Status BackupTo(const std::filesystem::path& destination);

 private:
  explicit Database(sqlite3* db) : db_(db) {}
  sqlite3* db_;
};

// BEGIN IMMEDIATE on construction (the write lock is taken at once, so two writers never
// deadlock on an upgrade); ROLLBACK on destruction unless Commit() succeeded.
class Transaction {
 public:
  static absl::StatusOr<Transaction> Begin(Database& db);
  Transaction(Transaction&& other) noexcept;
  Transaction& operator=(Transaction&&) = delete;
  Transaction(const Transaction&) = delete;
  ~Transaction();
  absl::Status Commit();

 private:
  explicit Transaction(Database* db) : db_(db) {}
  Database* db_;
};

}  // namespace fedmoe::coordinator::sqlite

#endif  // FEDMOE_COORDINATOR_STATE_SQLITE_H_
