// The round engine on its own: a fake clock, a store in memory, and clients that are SecAgg+
// state machines called in-process, without gRPC or training. The real-process tests
// (tests/integration/rounds_test.cc) check the merged model against a plain sum; these check
// the engine's stages, deadlines, aborts, budget and restarts, each a clock step away.
#include "coordinator/round/round_engine.h"

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/secagg_wire.h"
#include "coordinator/config.h"
#include "coordinator/round/client_presence.h"
#include "coordinator/round/clock.h"
#include "coordinator/round/poll_hub.h"
#include "coordinator/round/privacy_plan.h"
#include "coordinator/state/store.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/checkpoint.h"
#include "model/init.h"
#include "pki/certificate_authority.h"
#include "pki/private_key.h"
#include "pki/spiffe_id.h"
#include "secure_agg/client/secagg_client.h"
#include "secure_agg/shared/packing.h"
#include "tests/testing_temp_dir.h"
#include "tests/testing_tiny_model.h"

namespace fedmoe::coordinator {
namespace {

using ::testing::HasSubstr;

class FakeClock final : public Clock {
 public:
  absl::Time Now() const override { return now_; }
  void Advance(absl::Duration by) { now_ += by; }

 private:
  absl::Time now_ = absl::FromUnixSeconds(1'900'000'000);
};

// One enrolled client: its key and certificate, and its SecAgg+ client once it joins a round.
// Its update is all zeros: what the engine does with a sum is the integration tests' business.
class EngineClient {
 public:
  EngineClient(std::string id, pki::PrivateKey key, std::string certificate_der)
      : id_(std::move(id)), key_(std::move(key)), certificate_der_(std::move(certificate_der)) {}

  const std::string& id() const { return id_; }
  int64_t encoded_values() const {
    return static_cast<int64_t>(join_.update_spec().layout().encoded_values());
  }

  std::optional<v1::PollTaskResponse> Poll(RoundEngine& engine) {
    v1::PollTaskRequest request;
    request.set_known_round_id(known_round_);
    request.set_known_stage(known_stage_);
    std::optional<v1::PollTaskResponse> task = engine.NextTask(id_, request);
    if (task.has_value() && task->has_round_finished()) {
      known_round_ = task->round_finished().round_id();
      known_stage_ = task->round_finished().outcome();
    }
    return task;
  }

  // Answers whatever task the engine has for this client now; false when it has none.
  bool Act(RoundEngine& engine) {
    std::optional<v1::PollTaskResponse> task = Poll(engine);
    // How the last round ended comes first; the next round's task follows it.
    if (task.has_value() && task->has_round_finished()) task = Poll(engine);
    if (!task.has_value()) return false;
    if (task->has_join_round()) {
      Join(task->join_round());
      return Advertise(engine);
    }
    if (task->has_share_keys()) return Share(engine, task->share_keys());
    if (task->has_masked_input()) return Upload(engine, task->masked_input());
    if (task->has_unmask()) return Unmask(engine, task->unmask());
    return false;
  }

 private:
  void Join(const v1::JoinRoundTask& task) {
    join_ = task;
    known_round_ = task.round_id();
    known_stage_ = v1::ROUND_STAGE_SELECTED;
    certificates_.clear();
    absl::StatusOr<secure_agg::SecAggClient> client = secure_agg::SecAggClient::Create(
        client::RoundSetupOf(task), task.secagg().participant_id(),
        {task.secagg().neighbors().begin(), task.secagg().neighbors().end()},
        [this](std::string_view message) { return key_.Sign(std::string(message)); },
        [this](uint32_t peer, std::string_view message, std::string_view signature) {
          absl::StatusOr<pki::Certificate> certificate =
              pki::Certificate::FromDer(certificates_[peer]);
          if (!certificate.ok()) return certificate.status();
          return pki::VerifySignature(certificate->PublicKeyDer(), std::string(message),
                                      std::string(signature));
        });
    ASSERT_TRUE(client.ok()) << client.status();
    secagg_ = std::make_unique<secure_agg::SecAggClient>(std::move(*client));
  }

  bool Done(const absl::StatusOr<v1::StageAck>& ack) {
    if (ack.ok()) known_stage_ = ack->stage();
    return ack.ok();
  }

  bool Advertise(RoundEngine& engine) {
    absl::StatusOr<secure_agg::AdvertisedKeys> keys = secagg_->AdvertiseKeys();
    if (!keys.ok()) return false;
    return Done(engine.AdvertiseKeys(id_, certificate_der_,
                                     client::AdvertiseKeysRequestOf(join_.round_id(), *keys)));
  }

  bool Share(RoundEngine& engine, const v1::ShareKeysTask& task) {
    for (const v1::AdvertisedKeys& keys : task.neighbor_keys()) {
      certificates_[keys.participant_id()] = keys.certificate_der();
    }
    absl::StatusOr<std::vector<secure_agg::SealedShares>> sealed =
        secagg_->ShareKeys(client::NeighbourKeysOf(task));
    if (!sealed.ok()) return false;
    return Done(engine.ShareKeys(id_, client::ShareKeysRequestOf(task.round_id(), *sealed)));
  }

  bool Upload(RoundEngine& engine, const v1::MaskedInputTask& task) {
    if (!secagg_->ReceiveShares(client::IncomingSharesOf(task, join_.secagg().participant_id()))
             .ok()) {
      return false;
    }
    std::vector<uint64_t> masked(join_.update_spec().layout().encoded_values(), 0);
    if (!secagg_->MaskChunk(masked).ok()) return false;
    absl::StatusOr<RoundEngine::MaskedUpload> upload =
        engine.BeginMaskedInput(id_, task.round_id(), masked.size());
    if (!upload.ok()) return false;
    RoundEngine::StagedChunk chunk;
    chunk.value_count = static_cast<uint32_t>(masked.size());
    if (!secure_agg::PackValues(masked, static_cast<int>(join_.secagg().ring_bits()),
                                chunk.packed_values)
             .ok()) {
      return false;
    }
    return Done(engine.FinishMaskedInput(id_, *upload, {&chunk, 1}));
  }

  bool Unmask(RoundEngine& engine, const v1::UnmaskTask& task) {
    absl::StatusOr<secure_agg::RevealedShares> revealed =
        secagg_->Unmask(client::UnmaskRequestOf(task));
    if (!revealed.ok()) return false;
    return Done(engine.Unmask(id_, client::UnmaskRequestOf(task.round_id(), *revealed)));
  }

  std::string id_;
  pki::PrivateKey key_;
  std::string certificate_der_;
  v1::JoinRoundTask join_;
  std::map<uint32_t, std::string> certificates_;
  std::unique_ptr<secure_agg::SecAggClient> secagg_;
  uint64_t known_round_ = 0;
  v1::RoundStage known_stage_ = v1::ROUND_STAGE_UNSPECIFIED;
};

class RoundEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = directory_.path();
    config_.federation = "engine.test";
    config_.state_dir.root = root_ / "state";
    std::filesystem::create_directories(config_.state_dir.models());
    config_.rounds.min_clients = 3;
    config_.rounds.max_clients = 3;
    config_.rounds.initial_model = root_ / "initial";
    ASSERT_TRUE(model::SaveModel(model::InitializeModel(testing::TinyMoeConfig(), 7),
                                 config_.rounds.initial_model)
                    .ok());
    absl::StatusOr<std::unique_ptr<Store>> store = Store::OpenInMemory();
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);

    absl::StatusOr<pki::CertificateAuthority> ca =
        pki::CertificateAuthority::Create(config_.federation, absl::Hours(1), clock_.Now());
    ASSERT_TRUE(ca.ok()) << ca.status();
    for (int i = 0; i < 4; ++i) {
      const std::string id = absl::StrCat("client-", i);
      absl::StatusOr<pki::PrivateKey> key = pki::PrivateKey::GenerateP256();
      ASSERT_TRUE(key.ok());
      absl::StatusOr<std::string> csr = pki::MakeCsr(*key, id);
      absl::StatusOr<pki::SpiffeId> spiffe =
          pki::SpiffeId::Parse(absl::StrCat("spiffe://", config_.federation, "/client/", id));
      ASSERT_TRUE(csr.ok() && spiffe.ok()) << spiffe.status();
      absl::StatusOr<pki::Certificate> certificate =
          ca->IssueFromCsr(*csr, *spiffe, absl::Hours(1), clock_.Now());
      ASSERT_TRUE(certificate.ok()) << certificate.status();
      clients_.emplace_back(id, std::move(*key), certificate->ToDer());
    }
    StartEngine();
  }

  void StartEngine() {
    engine_.reset();
    absl::StatusOr<std::unique_ptr<RoundEngine>> engine =
        RoundEngine::Create(&config_, store_.get(), &presence_, &polls_, &clock_);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
  }

  // The first `count` clients poll, so that the engine sees them online.
  void Online(int count) {
    for (int i = 0; i < count; ++i) presence_.PollStarted(clients_[i].id(), clock_.Now());
  }

  // Each of the first `count` clients does what its task asks; how many acted.
  int Act(int count) {
    int acted = 0;
    for (int i = 0; i < count; ++i) acted += clients_[i].Act(*engine_) ? 1 : 0;
    return acted;
  }

  // Drives the first `count` clients through a whole round; the engine's stage after each step.
  std::vector<v1::RoundStage> RunRound(int count) {
    std::vector<v1::RoundStage> stages;
    Online(count);
    engine_->Tick();
    for (int step = 0; step < 4; ++step) {
      stages.push_back(engine_->snapshot().stage);
      EXPECT_EQ(Act(count), count) << "at " << StageName(stages.back());
      engine_->Tick();
    }
    stages.push_back(engine_->snapshot().stage);
    return stages;
  }

  RoundRecord Round(int64_t round_id) {
    absl::StatusOr<std::vector<RoundRecord>> rounds = store_->ListRounds(round_id + 1, 1);
    EXPECT_TRUE(rounds.ok() && rounds->size() == 1);
    return rounds.ok() && !rounds->empty() ? rounds->front() : RoundRecord{};
  }

  // Removed when the test ends, whatever its outcome.
  testing::TempDir directory_;
  std::filesystem::path root_;
  CoordinatorConfig config_;
  FakeClock clock_;
  std::unique_ptr<Store> store_;
  ClientPresence presence_{absl::Minutes(1)};
  PollHub polls_{16};
  std::vector<EngineClient> clients_;
  std::unique_ptr<RoundEngine> engine_;
};

TEST_F(RoundEngineTest, ARoundWalksEveryStageAndCommitsWhatThePlanPriced) {
  const std::vector<v1::RoundStage> stages = RunRound(3);
  EXPECT_THAT(stages,
              ::testing::ElementsAre(v1::ROUND_STAGE_SELECTED, v1::ROUND_STAGE_KEYS_ADVERTISED,
                                     v1::ROUND_STAGE_KEYS_SHARED, v1::ROUND_STAGE_MASKED_COLLECTED,
                                     v1::ROUND_STAGE_COMMITTED));

  const RoundEngine::Snapshot snapshot = engine_->snapshot();
  EXPECT_EQ(snapshot.model_version, 2u);
  const RoundRecord round = Round(1);
  EXPECT_EQ(round.stage, "COMMITTED");
  EXPECT_EQ(round.survivors, 3);
  EXPECT_EQ(round.committed_model_version, 2);

  // The ledger's one row is what planning the federation says one round of three costs: two
  // independent paths to the same ε.
  absl::StatusOr<std::vector<LedgerEntry>> ledger = store_->Ledger();
  ASSERT_TRUE(ledger.ok() && ledger->size() == 1);
  absl::StatusOr<privacy::PrivacyLoss> planned =
      PlannedEpsilon(config_.rounds, 3, clients_[0].encoded_values(), 1);
  ASSERT_TRUE(planned.ok()) << planned.status();
  EXPECT_GT(planned->epsilon, 0);
  EXPECT_NEAR(ledger->front().epsilon_after, planned->epsilon, 1e-9 * planned->epsilon);
  EXPECT_EQ(ledger->front().mode, "distributed");
  EXPECT_EQ(snapshot.epsilon_spent, ledger->front().epsilon_after);

  // Every client hears the outcome once, then has nothing to do until the next round.
  for (int i = 0; i < 3; ++i) {
    std::optional<v1::PollTaskResponse> told = clients_[i].Poll(*engine_);
    ASSERT_TRUE(told.has_value() && told->has_round_finished());
    EXPECT_EQ(told->round_finished().outcome(), v1::ROUND_STAGE_COMMITTED);
    EXPECT_EQ(told->round_finished().new_model_version(), 2u);
    EXPECT_FALSE(clients_[i].Poll(*engine_).has_value());
  }
}

TEST_F(RoundEngineTest, AStageClosesAtItsDeadlineAndTooFewAbortsTheRound) {
  Online(3);
  engine_->Tick();
  ASSERT_EQ(engine_->snapshot().stage, v1::ROUND_STAGE_SELECTED);
  // Two advertise; the third never does. Until the deadline the stage waits for it.
  EXPECT_EQ(Act(2), 2);
  clock_.Advance(config_.rounds.timeouts.train - absl::Seconds(1));
  engine_->Tick();
  EXPECT_EQ(engine_->snapshot().stage, v1::ROUND_STAGE_SELECTED);
  clock_.Advance(absl::Seconds(1));
  engine_->Tick();
  EXPECT_EQ(engine_->snapshot().stage, v1::ROUND_STAGE_ABORTED);
  const RoundRecord round = Round(1);
  EXPECT_EQ(round.stage, "ABORTED");
  EXPECT_THAT(round.abort_reason, HasSubstr("only 2 participants advertised keys"));
  EXPECT_TRUE(store_->Ledger()->empty());

  // The laggard hears the outcome too, and its late keys are refused.
  std::optional<v1::PollTaskResponse> told = clients_[2].Poll(*engine_);
  ASSERT_TRUE(told.has_value() && told->has_round_finished());
  EXPECT_EQ(told->round_finished().outcome(), v1::ROUND_STAGE_ABORTED);

  // The next round waits out rounds.interval on the engine's clock, not the wall's.
  Online(3);
  engine_->Tick();
  EXPECT_EQ(engine_->snapshot().round_id, 1u);
  clock_.Advance(config_.rounds.interval);
  engine_->Tick();
  EXPECT_EQ(engine_->snapshot().round_id, 2u);
  EXPECT_EQ(engine_->snapshot().stage, v1::ROUND_STAGE_SELECTED);
}

TEST_F(RoundEngineTest, ALaggardPastADeadlineIsDroppedAndTheOthersCommitWithoutIt) {
  config_.rounds.min_clients = 4;
  config_.rounds.max_clients = 4;
  config_.rounds.dropout_rate = 0.3;
  StartEngine();
  Online(4);
  engine_->Tick();
  ASSERT_EQ(engine_->snapshot().stage, v1::ROUND_STAGE_SELECTED);
  ASSERT_EQ(Act(4), 4);
  engine_->Tick();
  ASSERT_EQ(engine_->snapshot().stage, v1::ROUND_STAGE_KEYS_ADVERTISED);
  ASSERT_EQ(Act(4), 4);
  engine_->Tick();
  ASSERT_EQ(engine_->snapshot().stage, v1::ROUND_STAGE_KEYS_SHARED);
  // Client 3 never uploads its masked input; the stage closes at its deadline without it.
  ASSERT_EQ(Act(3), 3);
  engine_->Tick();
  EXPECT_EQ(engine_->snapshot().stage, v1::ROUND_STAGE_KEYS_SHARED);
  // Deadlines are fixed when the round is selected, one timeout after another; the stages
  // before closed early, which moves none of them.
  const StageTimeouts& timeouts = config_.rounds.timeouts;
  clock_.Advance(timeouts.train + timeouts.share_keys + timeouts.masked_input - absl::Seconds(1));
  engine_->Tick();
  EXPECT_EQ(engine_->snapshot().stage, v1::ROUND_STAGE_KEYS_SHARED);
  clock_.Advance(absl::Seconds(1));
  engine_->Tick();
  ASSERT_EQ(engine_->snapshot().stage, v1::ROUND_STAGE_MASKED_COLLECTED);
  // The laggard gets no task, and its late upload is refused.
  EXPECT_FALSE(clients_[3].Act(*engine_));
  absl::StatusOr<RoundEngine::MaskedUpload> late =
      engine_->BeginMaskedInput(clients_[3].id(), 1, clients_[3].encoded_values());
  EXPECT_THAT(late.status().message(), HasSubstr("dropped"));
  // A survivor whose acknowledgement was lost as the stage closed asks before sending again,
  // and hears that its whole input is in the sum; the laggard hears that none of its is.
  const v1::RoundStatus survivor = engine_->RoundStatusFor(clients_[0].id(), 1);
  EXPECT_EQ(survivor.caller_completed_stage(), v1::ROUND_STAGE_MASKED_COLLECTED);
  EXPECT_EQ(survivor.caller_values_received(), clients_[0].encoded_values());
  EXPECT_EQ(engine_->RoundStatusFor(clients_[3].id(), 1).caller_values_received(), 0u);
  ASSERT_EQ(Act(3), 3);
  engine_->Tick();
  EXPECT_EQ(engine_->snapshot().stage, v1::ROUND_STAGE_COMMITTED);
  const RoundRecord round = Round(1);
  EXPECT_EQ(round.stage, "COMMITTED");
  EXPECT_EQ(round.cohort_size, 4);
  EXPECT_EQ(round.survivors, 3);
}

TEST_F(RoundEngineTest, ARestartAbortsTheOpenRoundAndKeepsTheModelAndTheLedger) {
  RunRound(3);
  const RoundEngine::Snapshot committed = engine_->snapshot();
  ASSERT_EQ(committed.model_version, 2u);
  clock_.Advance(config_.rounds.interval);
  Online(3);
  engine_->Tick();
  ASSERT_EQ(Act(3), 3);
  engine_->Tick();
  ASSERT_EQ(engine_->snapshot().stage, v1::ROUND_STAGE_KEYS_ADVERTISED);

  // The process dies here: the store and the models directory outlive the engine.
  StartEngine();
  const RoundEngine::Snapshot restarted = engine_->snapshot();
  EXPECT_EQ(restarted.stage, v1::ROUND_STAGE_ABORTED);
  EXPECT_EQ(restarted.round_id, 2u);
  EXPECT_EQ(restarted.model_version, 2u);
  EXPECT_EQ(restarted.epsilon_spent, committed.epsilon_spent);
  const RoundRecord open = Round(2);
  EXPECT_EQ(open.stage, "ABORTED");
  EXPECT_THAT(open.abort_reason, HasSubstr("restarted"));

  // A client still inside round 2 is told it ended; the next round is 3, and commits on top of
  // version 2 with the ledger's second row.
  std::optional<v1::PollTaskResponse> told = clients_[0].Poll(*engine_);
  ASSERT_TRUE(told.has_value() && told->has_round_finished());
  EXPECT_EQ(told->round_finished().round_id(), 2u);
  EXPECT_EQ(told->round_finished().outcome(), v1::ROUND_STAGE_ABORTED);
  RunRound(3);
  EXPECT_EQ(engine_->snapshot().model_version, 3u);
  EXPECT_EQ(Round(3).stage, "COMMITTED");
  absl::StatusOr<std::vector<LedgerEntry>> ledger = store_->Ledger();
  ASSERT_TRUE(ledger.ok() && ledger->size() == 2);
  EXPECT_GT(ledger->back().epsilon_after, ledger->front().epsilon_after);
  EXPECT_EQ(engine_->snapshot().epsilon_spent, ledger->back().epsilon_after);
}

TEST_F(RoundEngineTest, RoundsPauseWhenTheNextCouldPassTheTargetEpsilon) {
  RunRound(3);
  const double one_round = engine_->snapshot().epsilon_spent;
  // Room for the round just run but not for another: ε composes to more than this.
  config_.rounds.target_epsilon = one_round * 1.05;
  StartEngine();
  clock_.Advance(config_.rounds.interval);
  Online(3);
  engine_->Tick();
  const RoundEngine::Snapshot paused = engine_->snapshot();
  EXPECT_EQ(paused.round_id, 1u);
  EXPECT_THAT(paused.paused_reason, HasSubstr("privacy budget exhausted"));
  EXPECT_EQ(Round(1).stage, "COMMITTED");
  absl::StatusOr<std::vector<RoundRecord>> rounds = store_->ListRounds(100, 10);
  ASSERT_TRUE(rounds.ok());
  EXPECT_EQ(rounds->size(), 1u);
}

}  // namespace
}  // namespace fedmoe::coordinator
