// The coordinator's store: migrations, enrollment tokens, the registry and revocation.
#include "coordinator/state/store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "coordinator/identity/caller.h"
#include "coordinator/identity/enrollment_token.h"
#include "tests/testing_temp_dir.h"

namespace fedmoe::coordinator {
namespace {

using ::fedmoe::testing::TempDir;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

const absl::Time kNow = absl::FromUnixSeconds(1'800'000'000);

std::string Message(const absl::Status& status) { return std::string(status.message()); }

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = Store::Open(dir_.path() / "state.db");
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }

  EnrollmentToken AddToken(const std::string& client_id, absl::Duration ttl = absl::Hours(24)) {
    auto token = GenerateEnrollmentToken();
    EXPECT_TRUE(token.ok());
    TokenRecord record{token->token_id, client_id, kNow, kNow + ttl, std::nullopt, std::nullopt};
    EXPECT_TRUE(store_->AddToken(record, HashTokenSecret(token->secret)).ok());
    return *token;
  }

  static auto IssueSerial(const std::string& serial) {
    return [serial](const std::string& client_id) -> absl::StatusOr<IssuedCertificate> {
      return IssuedCertificate{serial,
                               "spiffe://fed/client/" + client_id,
                               kNow + absl::Hours(24 * 30),
                               "old-ca",
                               {"old-ca"}};
    };
  }

  absl::StatusOr<ClientRecord> Enroll(const EnrollmentToken& token, absl::Time now = kNow,
                                      const std::string& serial = "aa01") {
    return store_->Enroll(token.token_id, HashTokenSecret(token.secret), "0.1.0", now,
                          IssueSerial(serial));
  }

  TempDir dir_;
  std::unique_ptr<Store> store_;
};

TEST_F(StoreTest, MigrationsApplyOnceAndNewerSchemasAreRefused) {
  EXPECT_EQ(*store_->SchemaVersion(), Store::kSchemaVersion);
  store_.reset();
  auto reopened = Store::Open(dir_.path() / "state.db");
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_EQ(*(*reopened)->SchemaVersion(), Store::kSchemaVersion);
  reopened->reset();

  auto db = sqlite::Database::Open(dir_.path() / "state.db");
  ASSERT_TRUE((*db)->Execute("INSERT INTO schema_migrations VALUES (99, 0)").ok());
  db->reset();
  auto future = Store::Open(dir_.path() / "state.db");
  EXPECT_EQ(future.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Message(future.status()), HasSubstr("schema version 99"));
}

TEST_F(StoreTest, ACorruptDatabaseFileIsAClearError) {
  const auto path = dir_.path() / "corrupt.db";
  std::ofstream(path) << std::string(8192, 'x');
  auto store = Store::Open(path);
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(Message(store.status()), HasSubstr("not a usable database"));
}

TEST_F(StoreTest, EnrollmentConsumesTheTokenAndRecordsTheClient) {
  const EnrollmentToken token = AddToken("bank-1");
  auto client = Enroll(token);
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ(client->client_id, "bank-1");
  EXPECT_EQ(client->spiffe_id, "spiffe://fed/client/bank-1");
  EXPECT_EQ(client->certificate_serial, "aa01");
  EXPECT_EQ(client->enrolled_at, kNow);
  EXPECT_FALSE(client->revoked());
  EXPECT_TRUE(store_->AuthorizeClient("bank-1", "aa01").ok());

  auto again = Enroll(token);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(Message(again.status()), HasSubstr("already used"));
  EXPECT_EQ(store_->ListTokens(10)->front().StateAt(kNow), TokenState::kUsed);
}

TEST_F(StoreTest, EachBadTokenIsRefusedWithItsOwnReason) {
  const EnrollmentToken expired = AddToken("bank-1", absl::Hours(1));
  EXPECT_THAT(Message(Enroll(expired, kNow + absl::Hours(2)).status()), HasSubstr("expired"));

  const EnrollmentToken revoked = AddToken("bank-2");
  ASSERT_TRUE(store_->RevokeToken(revoked.token_id, kNow).ok());
  EXPECT_THAT(Message(Enroll(revoked).status()), HasSubstr("revoked"));

  const EnrollmentToken real = AddToken("bank-3");
  EnrollmentToken wrong_secret = real;
  wrong_secret.secret[0] = wrong_secret.secret[0] == 'a' ? 'b' : 'a';
  EXPECT_THAT(Message(Enroll(wrong_secret).status()), HasSubstr("not known"));
  EnrollmentToken unknown = real;
  unknown.token_id = "0000000000000000";
  EXPECT_THAT(Message(Enroll(unknown).status()), HasSubstr("not known"));

  // None of the refusals consumed the real token.
  EXPECT_TRUE(Enroll(real).ok());
}

TEST_F(StoreTest, AFailedIssueLeavesTheTokenUsable) {
  const EnrollmentToken token = AddToken("bank-1");
  auto failed = store_->Enroll(token.token_id, HashTokenSecret(token.secret), "0.1.0", kNow,
                               [](const std::string&) -> absl::StatusOr<IssuedCertificate> {
                                 return absl::InvalidArgumentError("bad CSR");
                               });
  EXPECT_THAT(Message(failed.status()), HasSubstr("bad CSR"));
  EXPECT_EQ(store_->GetClient("bank-1").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Enroll(token).ok());
}

TEST_F(StoreTest, AClientIdEnrollsOnce) {
  ASSERT_TRUE(Enroll(AddToken("bank-1")).ok());
  auto second = Enroll(AddToken("bank-1"), kNow, "bb02");
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Message(second.status()), HasSubstr("already enrolled"));
  ASSERT_TRUE(store_->RevokeClient("bank-1", "left", kNow).ok());
  EXPECT_THAT(Message(Enroll(AddToken("bank-1"), kNow, "cc03").status()),
              HasSubstr("revoked; enroll under a new id"));
}

TEST_F(StoreTest, RevocationTakesEffectAtTheNextAuthorization) {
  ASSERT_TRUE(Enroll(AddToken("bank-1")).ok());
  ASSERT_TRUE(
      store_
          ->RecordRenewal(
              "bank-1",
              {"aa02", "spiffe://fed/client/bank-1", kNow + absl::Hours(48), "old-ca", {"old-ca"}},
              kNow + absl::Hours(1))
          .ok());
  EXPECT_EQ(store_->GetClient("bank-1")->certificate_serial, "aa02");
  EXPECT_TRUE(store_->AuthorizeClient("bank-1", "aa01").ok()) << "old certificate until expiry";
  EXPECT_TRUE(store_->AuthorizeClient("bank-1", "aa02").ok());
  EXPECT_THAT(Message(store_->AuthorizeClient("bank-1", "ffff")), HasSubstr("was not issued"));
  EXPECT_THAT(Message(store_->AuthorizeClient("nobody", "aa01")), HasSubstr("not enrolled"));

  auto revoked = store_->RevokeClient("bank-1", "key leaked", kNow + absl::Hours(2));
  ASSERT_TRUE(revoked.ok());
  EXPECT_TRUE(revoked->revoked());
  EXPECT_EQ(revoked->revocation_reason, "key leaked");
  for (const char* serial : {"aa01", "aa02"}) {
    const absl::Status status = store_->AuthorizeClient("bank-1", serial);
    EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied);
    EXPECT_THAT(Message(status), HasSubstr("revoked"));
  }
  // Idempotent: the first revocation's time and reason stay.
  auto again = store_->RevokeClient("bank-1", "other", kNow + absl::Hours(3));
  EXPECT_EQ(again->revocation_reason, "key leaked");
  EXPECT_EQ(*again->revoked_at, kNow + absl::Hours(2));
  EXPECT_EQ(store_->RevokeClient("nobody", "x", kNow).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->RecordRenewal("bank-1", {"aa03", "", kNow, "old-ca", {}}, kNow).code(),
            absl::StatusCode::kPermissionDenied);
}

// A CA rotation moves on once every client that can still call has *used* a certificate that
// proves it holds the new CA: issued alone is not enough (the reply may have been lost).
TEST_F(StoreTest, ClientsWithoutCaCountsOnlyCertificatesInUse) {
  ASSERT_TRUE(Enroll(AddToken("bank-1"), kNow, "b101").ok());
  ASSERT_TRUE(Enroll(AddToken("bank-2"), kNow, "b201").ok());
  ASSERT_TRUE(Enroll(AddToken("gone"), kNow, "g01").ok());
  ASSERT_TRUE(Enroll(AddToken("lapsed"), kNow, "l01").ok());
  ASSERT_TRUE(store_->RevokeClient("gone", "left", kNow).ok());
  const absl::Time later = kNow + absl::Hours(24 * 31);  // "lapsed" has expired by then
  for (const char* client : {"bank-1", "bank-2"}) {
    ASSERT_TRUE(store_
                    ->RecordRenewal(client,
                                    {std::string(client) + "-n",
                                     "",
                                     later + absl::Hours(48),
                                     "old-ca",
                                     {"old-ca", "new-ca"}},
                                    later)
                    .ok());
  }
  auto missing = [&](CaHolding holding) {
    return *store_->ClientsWithoutCa("new-ca", holding, later + absl::Minutes(1));
  };
  EXPECT_THAT(missing(CaHolding::kTrusts), ElementsAre("bank-1", "bank-2"));
  ASSERT_TRUE(store_->AuthorizeClient("bank-1", "bank-1-n").ok());
  EXPECT_THAT(missing(CaHolding::kTrusts), ElementsAre("bank-2"));
  EXPECT_THAT(missing(CaHolding::kIssuedBy), ElementsAre("bank-1", "bank-2"));
  ASSERT_TRUE(
      store_
          ->RecordRenewal("bank-2",
                          {"bank-2-x", "", later + absl::Hours(48), "new-ca", {"new-ca", "old-ca"}},
                          later)
          .ok());
  ASSERT_TRUE(store_->AuthorizeClient("bank-2", "bank-2-x").ok());
  EXPECT_THAT(missing(CaHolding::kTrusts), IsEmpty());
  EXPECT_THAT(missing(CaHolding::kIssuedBy), ElementsAre("bank-1"));
  // A fingerprint is matched whole, not as a substring of another.
  EXPECT_THAT(*store_->ClientsWithoutCa("new", CaHolding::kTrusts, later),
              ElementsAre("bank-1", "bank-2"));
}

TEST_F(StoreTest, ListsPageInIdOrderAndHideRevokedUnlessAsked) {
  for (const char* id : {"c", "a", "d", "b"}) {
    ASSERT_TRUE(Enroll(AddToken(id), kNow, std::string("5e") + id).ok());
  }
  ASSERT_TRUE(store_->RevokeClient("b", "", kNow).ok());
  auto ids = [](const std::vector<ClientRecord>& clients) {
    std::vector<std::string> out;
    out.reserve(clients.size());
    for (const auto& c : clients) out.push_back(c.client_id);
    return out;
  };
  EXPECT_EQ(ids(*store_->ListClients(false, "", 10)), (std::vector<std::string>{"a", "c", "d"}));
  EXPECT_EQ(ids(*store_->ListClients(true, "", 2)), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(ids(*store_->ListClients(true, "b", 2)), (std::vector<std::string>{"c", "d"}));
  const auto counts = store_->CountClients();
  EXPECT_EQ(counts->enrolled, 3);
  EXPECT_EQ(counts->revoked, 1);
}

TEST_F(StoreTest, LastSeenIsWrittenAtMostOnceAMinute) {
  ASSERT_TRUE(Enroll(AddToken("bank-1")).ok());
  ASSERT_TRUE(store_->TouchClient("bank-1", kNow).ok());
  ASSERT_TRUE(store_->TouchClient("bank-1", kNow + absl::Seconds(30)).ok());
  EXPECT_EQ(*store_->GetClient("bank-1")->last_seen_at, kNow);
  ASSERT_TRUE(store_->TouchClient("bank-1", kNow + absl::Seconds(61)).ok());
  EXPECT_EQ(*store_->GetClient("bank-1")->last_seen_at, kNow + absl::Seconds(61));
}

TEST_F(StoreTest, TheDatabaseHoldsNoTokenSecret) {
  const EnrollmentToken token = AddToken("bank-1");
  store_.reset();  // Closing may checkpoint the WAL; every file of the directory is read.
  std::string bytes;
  for (const auto& entry : std::filesystem::directory_iterator(dir_.path())) {
    std::ifstream in(entry.path(), std::ios::binary);
    std::ostringstream contents;
    contents << in.rdbuf();
    bytes += contents.str();
  }
  ASSERT_FALSE(bytes.empty());
  EXPECT_EQ(bytes.find(token.secret), std::string::npos);
  EXPECT_NE(bytes.find(token.token_id), std::string::npos) << "the id is a non-secret handle";
  EXPECT_NE(bytes.find(HashTokenSecret(token.secret)), std::string::npos);
}

// Commits round `round_id` on model version round_id + 1 with this ledger entry.
absl::Status CommitWithLedger(Store& store, int64_t round_id, double sampler_total_variation) {
  RoundRecord round;
  round.round_id = round_id;
  round.stage = "SELECTED";
  round.cohort_size = 3;
  round.started_at = kNow;
  round.base_model_version = round_id;
  if (absl::Status status = store.StartRound(round); !status.ok()) return status;
  ModelVersionRecord model;
  model.version = round_id + 1;
  model.weights_sha256 = std::string(32, 'w');
  model.directory = absl::StrCat("models/v", round_id + 1);
  model.created_at = kNow;
  model.round_id = round_id;
  LedgerEntry entry;
  entry.round_id = round_id;
  entry.mechanism = "discrete_gaussian";
  entry.mode = "distributed";
  entry.orders = {2, 4};
  entry.rdp = {0.5, 1.0};
  entry.epsilon_after = 2.0;
  entry.delta = 1e-5;
  entry.best_order = 4;
  entry.committed_at = kNow;
  entry.sampler_total_variation = sampler_total_variation;
  return store.CommitRound(round_id, {"bank-1"}, model, entry);
}

TEST_F(StoreTest, TheLedgerKeepsEachRoundsSamplerChargeAndOlderEntriesCarryNone) {
  ASSERT_TRUE(Enroll(AddToken("bank-1")).ok());
  ASSERT_TRUE(CommitWithLedger(*store_, 1, 0x1.8p-40).ok());
  // The store as schema 3 left it: no sampler column.
  store_.reset();
  {
    auto db = sqlite::Database::Open(dir_.path() / "state.db");
    ASSERT_TRUE(db.ok());
    ASSERT_TRUE((*db)
                    ->Execute("ALTER TABLE privacy_ledger DROP COLUMN sampler_total_variation; "
                              "DROP TABLE admins; "
                              "ALTER TABLE certificates DROP COLUMN public_key_der; "
                              "ALTER TABLE certificates DROP COLUMN previous_public_key_der; "
                              "ALTER TABLE certificates DROP COLUMN key_change_signature; "
                              "ALTER TABLE rounds DROP COLUMN left_reasons; "
                              "DROP TABLE federation; "
                              "DELETE FROM schema_migrations WHERE version >= 4")
                    .ok());
  }
  auto reopened = Store::Open(dir_.path() / "state.db");
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  store_ = std::move(*reopened);
  EXPECT_EQ(*store_->SchemaVersion(), Store::kSchemaVersion);
  ASSERT_TRUE(CommitWithLedger(*store_, 2, 0x1.8p-40).ok());

  absl::StatusOr<std::vector<LedgerEntry>> ledger = store_->Ledger();
  ASSERT_TRUE(ledger.ok()) << ledger.status();
  ASSERT_EQ(ledger->size(), 2U);
  EXPECT_EQ((*ledger)[0].sampler_total_variation, 0.0);
  EXPECT_EQ((*ledger)[1].sampler_total_variation, 0x1.8p-40);
  EXPECT_THAT((*ledger)[1].rdp, ElementsAre(0.5, 1.0));
}

// An initialized state directory never turns into an empty federation: a missing, empty or
// foreign store is refused with the path and the way out, and an older store is claimed.
TEST_F(StoreTest, AStoreThatVanishedOrBelongsElsewhereIsRefusedNotRecreated) {
  const std::filesystem::path path = dir_.path() / "state.db";
  ASSERT_TRUE(store_->RecordFederation("acme").ok());
  ASSERT_TRUE(Enroll(AddToken("bank-1")).ok());
  store_.reset();
  absl::StatusOr<std::unique_ptr<Store>> opened = Store::OpenExisting(path, "acme");
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ((*opened)->ListClients(true, "", 10)->size(), 1U);
  opened->reset();

  absl::StatusOr<std::unique_ptr<Store>> foreign = Store::OpenExisting(path, "globex");
  ASSERT_EQ(foreign.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(foreign.status().message()),
              AllOf(HasSubstr(path.string()), HasSubstr("'acme'"), HasSubstr("'globex'")));

  const std::filesystem::path missing = dir_.path() / "gone" / "state.db";
  absl::StatusOr<std::unique_ptr<Store>> refused = Store::OpenExisting(missing, "acme");
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.status().message()),
              AllOf(HasSubstr(missing.string()), HasSubstr("is missing"),
                    HasSubstr("fedmoe-coordinator restore")));
  EXPECT_FALSE(std::filesystem::exists(missing)) << "refusing must not create it";

  const std::filesystem::path empty = dir_.path() / "empty.db";
  { std::ofstream touch(empty); }
  refused = Store::OpenExisting(empty, "acme");
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("is empty"));
  EXPECT_EQ(std::filesystem::file_size(empty), 0U);

  // A database that is SQLite but not ours.
  const std::filesystem::path other = dir_.path() / "other.db";
  ASSERT_TRUE((*sqlite::Database::Open(other))->Execute("CREATE TABLE notes (text TEXT)").ok());
  refused = Store::OpenExisting(other, "acme");
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("holds no fedmoe store"));

  // A store from before schema 8 records no federation: its first open claims it.
  {
    auto db = sqlite::Database::Open(path);
    ASSERT_TRUE((*db)
                    ->Execute("DROP TABLE federation; DELETE FROM schema_migrations WHERE "
                              "version = 8")
                    .ok());
  }
  opened = Store::OpenExisting(path, "acme");
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ(*(*opened)->Federation(), "acme");
}

// A database error reaches a remote caller as an incident id; the SQL and the paths stay in the
// coordinator's log. A caller's own mistakes keep their specific message.
TEST(ToGrpcTest, TheCoordinatorsOwnFailuresReachCallersAsAnIncidentId) {
  const grpc::Status hidden = ToGrpc(absl::InternalError(
      "sqlite exec failed (database disk image is malformed) in: SELECT secret_sha256 FROM "
      "enrollment_tokens"));
  EXPECT_EQ(hidden.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_THAT(hidden.error_message(), HasSubstr("incident "));
  EXPECT_THAT(hidden.error_message(), Not(HasSubstr("sqlite")));
  EXPECT_THAT(hidden.error_message(), Not(HasSubstr("enrollment_tokens")));
  const grpc::Status again = ToGrpc(absl::DataLossError("models/v3/model.safetensors is short"));
  EXPECT_EQ(again.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_NE(again.error_message(), hidden.error_message()) << "each incident has its own id";
  EXPECT_THAT(again.error_message(), Not(HasSubstr("safetensors")));
  const grpc::Status plain = ToGrpc(absl::InvalidArgumentError("the update has 3 values, not 4"));
  EXPECT_EQ(plain.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(plain.error_message(), "the update has 3 values, not 4");
}

TEST(EnrollmentTokenTest, GeneratesDistinctWellFormedTokens) {
  auto a = GenerateEnrollmentToken();
  auto b = GenerateEnrollmentToken();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(a->secret, b->secret);
  EXPECT_EQ(a->ToString().size(), 16U + 1U + 64U);
  auto parsed = ParseEnrollmentToken(a->ToString());
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->token_id, a->token_id);
  EXPECT_EQ(parsed->secret, a->secret);
  for (const std::string& bad : {std::string(""), a->token_id, a->ToString() + "0",
                                 absl::AsciiStrToUpper(a->ToString()), a->secret}) {
    auto refused = ParseEnrollmentToken(bad);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(Message(refused.status()).find(a->secret), std::string::npos)
        << "the error never echoes a secret";
  }
  EXPECT_EQ(HashTokenSecret("abc").size(), 32U);
}

}  // namespace
}  // namespace fedmoe::coordinator

namespace fedmoe::coordinator {
namespace {

mode_t ModeOf(const std::filesystem::path& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0 ? info.st_mode & 0777 : 0;
}

// The store and its WAL hold hashed tokens, the registry and the privacy ledger: 0600, like
// the keys beside them, whether new or left 0644 by an older version.
TEST(StoreFileModeTest, TheStoreAndItsWalAreOwnerOnly) {
  fedmoe::testing::TempDir dir;
  const std::filesystem::path path = dir.path() / "state.db";
  {
    absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(path);
    ASSERT_TRUE(store.ok()) << store.status();
    auto token = GenerateEnrollmentToken();
    ASSERT_TRUE(token.ok());
    const absl::Time now = absl::Now();
    ASSERT_TRUE((*store)
                    ->AddToken({token->token_id, "bank-1", now, now + absl::Hours(1), std::nullopt,
                                std::nullopt},
                               HashTokenSecret(token->secret))
                    .ok());
    EXPECT_EQ(ModeOf(path), 0600U);
    EXPECT_EQ(ModeOf(path.string() + "-wal"), 0600U);
  }
  ASSERT_EQ(::chmod(path.c_str(), 0644), 0);
  absl::StatusOr<std::unique_ptr<Store>> reopened = Store::Open(path);
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_EQ(ModeOf(path), 0600U);
}

}  // namespace
}  // namespace fedmoe::coordinator
