// The coordinator's durable state (DESIGN §6): clients and the certificates issued to them,
// enrollment tokens (as hashes only), revocations, rounds, model versions and the privacy
// ledger, in one SQLite database in WAL mode.
//
// Every write is one transaction; a method either does all it says or nothing. The schema is
// versioned: Open() applies the migrations a database lacks, in order, each in its own
// transaction, and refuses a database written by a newer fedmoe. Thread-safe: calls are
// serialized, since SQLite transactions belong to the connection, not to a thread.
#ifndef FEDMOE_COORDINATOR_STATE_STORE_H_
#define FEDMOE_COORDINATOR_STATE_STORE_H_

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/state/sqlite.h"
#include "pki/key_change.h"

namespace fedmoe::coordinator {

struct ClientRecord {
  std::string client_id;
  std::string spiffe_id;
  std::string client_version;
  absl::Time enrolled_at;
  // The newest certificate issued to the client.
  std::string certificate_serial;
  absl::Time certificate_not_after;
  std::optional<absl::Time> last_seen_at;
  int64_t rounds_participated = 0;
  std::optional<absl::Time> revoked_at;
  std::string revocation_reason;

  bool revoked() const { return revoked_at.has_value(); }
};

// An operator identity (spiffe://<federation>/admin/<name>). Revocation is by name and for
// good: every certificate the CA issued or will issue for the name is refused.
struct AdminRecord {
  std::string name;
  // When it was added by another admin, or first called (the operator that `init` made).
  absl::Time first_seen_at;
  std::optional<absl::Time> last_seen_at;
  // The certificate of its latest call, or the one `admins add` issued.
  std::string last_serial;
  // The admin that added it; empty for one first seen calling.
  std::string added_by;
  std::optional<absl::Time> revoked_at;
  std::string revoked_by;
  std::string reason;

  bool revoked() const { return revoked_at.has_value(); }
};

enum class TokenState { kUnused, kUsed, kExpired, kRevoked };

struct TokenRecord {
  std::string token_id;
  std::string client_id;
  absl::Time created_at;
  absl::Time expires_at;
  std::optional<absl::Time> used_at;
  std::optional<absl::Time> revoked_at;

  TokenState StateAt(absl::Time now) const;
};

// What the CA issued, recorded with the client it was issued to.
struct IssuedCertificate {
  std::string serial;
  std::string spiffe_id;
  absl::Time not_after;
  // SHA-256 fingerprint of the issuing CA.
  std::string issuer_fingerprint;
  // Fingerprints of the trust bundle sent to the client with the certificate.
  std::vector<std::string> trust_bundle;
  // The certificate's SubjectPublicKeyInfo, DER.
  std::string public_key_der = {};
  // On renewal: the change from the previous certificate's key, signed by that key.
  std::optional<pki::KeyChange> key_change = std::nullopt;
};

// What a client must have shown for a CA rotation to move on (coordinator/identity/ca_rotation.h).
enum class CaHolding {
  // It uses a certificate that came with a trust bundle containing the CA.
  kTrusts,
  // It uses a certificate issued by the CA.
  kIssuedBy,
};

// A published model version: its files live in StateDir::models() / directory.
struct ModelVersionRecord {
  int64_t version = 0;
  // Raw SHA-256 of model.safetensors (adapter_model.safetensors for adapters).
  std::string weights_sha256;
  std::string directory;
  int64_t size_bytes = 0;
  absl::Time created_at;
  // The round that produced it; none for the initial model.
  std::optional<int64_t> round_id;
  // One line per file: "name size sha256-hex".
  std::string files;
};

// Round stages are stored by name: "SELECTED", ..., "COMMITTED", "ABORTED".
struct RoundRecord {
  int64_t round_id = 0;
  std::string stage;
  int64_t cohort_size = 0;
  int64_t survivors = 0;
  absl::Time started_at;
  std::optional<absl::Time> finished_at;
  int64_t base_model_version = 0;
  std::optional<int64_t> committed_model_version;
  std::optional<double> epsilon_after;
  std::string abort_reason;
  // "client: reason" for each client that left the round on its own and said why.
  std::vector<std::string> left_reasons;
};

// One committed round's privacy cost (admin.proto PrivacyLedgerEntry).
struct LedgerEntry {
  int64_t round_id = 0;
  double sampling_rate = 0;
  double planned_noise_multiplier = 0;
  double effective_noise_multiplier = 0;
  std::string mechanism;
  std::string mode;
  std::vector<double> orders;
  // This round's RDP at each order.
  std::vector<double> rdp;
  double epsilon_after = 0;
  double delta = 0;
  double best_order = 0;
  absl::Time committed_at;
  // How far the round's noise can be from the noise `rdp` prices, in total variation
  // (privacy::DistributedRoundTotalVariation); charged to δ. 0 for rounds committed before
  // schema 4, which did not record it.
  double sampler_total_variation = 0;
};

class Store {
 public:
  // The newest schema version this build knows.
  static constexpr int kSchemaVersion = 8;

  // Opens the store at `path`, creating it when missing: for `init`, and for tests.
  static absl::StatusOr<std::unique_ptr<Store>> Open(const std::filesystem::path& path);
  // A store in memory, gone when destroyed: for unit tests of the round engine.
  static absl::StatusOr<std::unique_ptr<Store>> OpenInMemory();
  // Opens the store of an initialized state directory, for `serve` and the commands that work
  // on one. A missing or empty file, or one without fedmoe's tables, is FailedPrecondition
  // naming the path and `restore` as the way out, never a new empty federation; so is the
  // store of another federation. A store from before schema 8 is claimed for `federation`.
  static absl::StatusOr<std::unique_ptr<Store>> OpenExisting(const std::filesystem::path& path,
                                                             const std::string& federation);

  // The federation the store belongs to; empty before it is recorded.
  absl::StatusOr<std::string> Federation();
  absl::Status RecordFederation(const std::string& federation);

  absl::StatusOr<int> SchemaVersion();

  // Records a new token. Only the hash of its secret is stored.
  absl::Status AddToken(const TokenRecord& token, const std::string& secret_hash);

  // Consumes a token and records the client it enrolls, atomically: `issue` is called inside
  // the transaction with the token's client id, and if it fails nothing is recorded and the
  // token stays usable. Unauthenticated, with a specific message, for an unknown, used,
  // expired or revoked token or a wrong secret; FailedPrecondition when the client id is
  // already enrolled or was revoked.
  absl::StatusOr<ClientRecord> Enroll(
      const std::string& token_id, const std::string& secret_hash, const std::string& version,
      absl::Time now,
      const std::function<absl::StatusOr<IssuedCertificate>(const std::string& client_id)>& issue);

  // Records a renewed certificate for an enrolled, unrevoked client.
  absl::Status RecordRenewal(const std::string& client_id, const IssuedCertificate& certificate,
                             absl::Time now);

  // The client's signed key changes, oldest first, at most the latest `limit`.
  absl::StatusOr<std::vector<pki::KeyChange>> KeyChanges(const std::string& client_id, int limit);

  // OK when `client_id` is enrolled, not revoked, and `serial` was issued to it, and then
  // records the certificate's first use. PermissionDenied otherwise, saying which.
  absl::Status AuthorizeClient(const std::string& client_id, const std::string& serial);

  // Clients that could still call (enrolled, unrevoked, newest certificate unexpired at
  // `now`) but have never presented a certificate showing `holding` of the CA with
  // `fingerprint`, in client id order.
  absl::StatusOr<std::vector<std::string>> ClientsWithoutCa(const std::string& fingerprint,
                                                            CaHolding holding, absl::Time now);

  // Notes an authenticated call. Cheap to call often: writes at most once a minute per client.
  absl::Status TouchClient(const std::string& client_id, absl::Time now);

  // OK unless admin `name` is revoked (PermissionDenied, with the reason). Records the call:
  // an admin name not seen before becomes known, so that it can be listed and revoked.
  absl::Status AuthorizeAdmin(const std::string& name, const std::string& serial, absl::Time now);
  // Records a new admin `name` with the certificate `issue` makes (it returns the serial),
  // calling `issue` only for a name never known: AlreadyExists otherwise, revoked or not, since
  // a revoked name never comes back.
  absl::Status AddAdmin(const std::string& name, const std::string& added_by, absl::Time now,
                        const std::function<absl::StatusOr<std::string>()>& issue);
  // In name order.
  absl::StatusOr<std::vector<AdminRecord>> ListAdmins();
  // Idempotent. NotFound for a name never added nor seen.
  absl::StatusOr<AdminRecord> RevokeAdmin(const std::string& name, const std::string& reason,
                                          const std::string& revoked_by, absl::Time now);

  absl::StatusOr<ClientRecord> GetClient(const std::string& client_id);
  // Clients in id order after `after_client_id`, at most `limit`.
  absl::StatusOr<std::vector<ClientRecord>> ListClients(bool include_revoked,
                                                        const std::string& after_client_id,
                                                        int limit);
  // Idempotent: revoking a revoked client returns it unchanged. NotFound for an unknown id.
  absl::StatusOr<ClientRecord> RevokeClient(const std::string& client_id, const std::string& reason,
                                            absl::Time now);

  // Tokens newest first, at most `limit`.
  absl::StatusOr<std::vector<TokenRecord>> ListTokens(int limit);
  // Idempotent. NotFound for an unknown id; FailedPrecondition for a used token.
  absl::StatusOr<TokenRecord> RevokeToken(const std::string& token_id, absl::Time now);

  struct ClientCounts {
    int64_t enrolled = 0;
    int64_t revoked = 0;
  };
  absl::StatusOr<ClientCounts> CountClients();

  // The model with this version, or the newest with version 0; nullopt when there is none.
  absl::StatusOr<std::optional<ModelVersionRecord>> GetModel(int64_t version);
  // Publishes the federation's first model (no round produced it).
  absl::Status AddInitialModel(const ModelVersionRecord& model);

  // At start-up: every round not COMMITTED or ABORTED becomes ABORTED with `reason`. Returns
  // how many there were.
  absl::StatusOr<int64_t> AbortUnfinishedRounds(const std::string& reason, absl::Time now);
  // 0 when no round was ever started.
  absl::StatusOr<int64_t> LastRoundId();
  absl::Status StartRound(const RoundRecord& round);
  absl::Status UpdateRoundStage(int64_t round_id, const std::string& stage, int64_t survivors);
  // Appends one "client: reason" line (no newline in it) to the round's left_reasons.
  absl::Status AddLeftReason(int64_t round_id, const std::string& line);
  absl::Status AbortRound(int64_t round_id, const std::string& reason, int64_t survivors,
                          absl::Time now);
  // One transaction: the new model version, the round's COMMITTED row, its ledger entry, and
  // each survivor's participation count. FailedPrecondition if the round is not open.
  absl::Status CommitRound(int64_t round_id, const std::vector<std::string>& survivors,
                           const ModelVersionRecord& model, const LedgerEntry& ledger);
  // Rounds newest first with ids below `before_round_id` (all with 0), at most `limit`.
  absl::StatusOr<std::vector<RoundRecord>> ListRounds(int64_t before_round_id, int limit);
  // Every entry, oldest first.
  absl::StatusOr<std::vector<LedgerEntry>> Ledger();
  struct RoundCounts {
    int64_t committed = 0;
    int64_t aborted = 0;
  };
  absl::StatusOr<RoundCounts> CountRounds();

 private:
  explicit Store(std::unique_ptr<sqlite::Database> db) : db_(std::move(db)) {}
  // A store over `db` with every migration applied.
  static absl::StatusOr<std::unique_ptr<Store>> Migrated(
      absl::StatusOr<std::unique_ptr<sqlite::Database>> db);
  absl::Status Migrate();
  absl::StatusOr<ClientRecord> GetClientLocked(const std::string& client_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  absl::StatusOr<std::optional<AdminRecord>> FindAdminLocked(const std::string& name)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  absl::Mutex mutex_;
  std::unique_ptr<sqlite::Database> db_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace fedmoe::coordinator

#endif  // FEDMOE_COORDINATOR_STATE_STORE_H_
