// The SecAgg+ round: exact sums against the plain modular sum under dropouts at every stage,
// and a specific refusal for every way a message can be wrong.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>

#include "pki/private_key.h"
#include "secure_agg/client/secagg_client.h"
#include "secure_agg/server/secagg_server.h"
#include "simulation/secagg_simulation.h"

namespace fedmoe::secure_agg {
namespace {

using ::testing::HasSubstr;

std::string Message(const absl::Status& status) { return std::string(status.message()); }

// Rounds through the whole protocol, dropouts chosen at random per seed and spread over the
// four stages, compared with the plain sum of the survivors' inputs.
TEST(SecAggRoundTest, SumsExactlyUnderDropoutsAtEveryStage) {
  struct Shape {
    uint32_t clients;
    uint32_t degree;
    uint32_t threshold;
    double dropout;
  };
  // n = 3 and n = 10 are below what the 2^-40/2^-20 parameter choice allows with dropouts, so
  // their graphs are given; n = 100 uses the chosen parameters.
  for (const Shape& shape : {Shape{3, 2, 1, 0.34}, Shape{10, 6, 3, 0.3}, Shape{100, 0, 0, 0.1}}) {
    for (uint64_t seed = 1; seed <= 4; ++seed) {
      bench::SimulationConfig config;
      config.clients = shape.clients;
      config.degree = shape.degree;
      config.threshold = shape.threshold;
      config.dropout_rate = shape.dropout;
      config.dimension = 3001;
      config.bits = seed % 2 == 0 ? 20 : 40;
      config.chunk = 1000;
      config.seed = seed;
      bench::ChooseDropouts(config);
      auto result = bench::RunSimulation(config);
      ASSERT_TRUE(result.ok()) << result.status();
      SCOPED_TRACE(::testing::Message() << "n=" << shape.clients << " seed=" << seed);
      ASSERT_TRUE(result->completed) << result->abort_reason;
      EXPECT_TRUE(result->correct);
      EXPECT_LT(result->survivors, shape.clients);
    }
  }
}

TEST(SecAggRoundTest, EachStageDropoutAloneStillSumsExactly) {
  for (int stage = 0; stage < 4; ++stage) {
    bench::SimulationConfig config;
    config.clients = 10;
    config.degree = 6;
    config.threshold = 3;
    config.dimension = 500;
    std::set<uint32_t>* stages[] = {&config.drop_before_advertise, &config.drop_before_share,
                                    &config.drop_before_masked_input, &config.drop_before_unmask};
    stages[stage]->insert({2, 7});
    auto result = bench::RunSimulation(config);
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_TRUE(result->completed) << "stage " << stage << ": " << result->abort_reason;
    EXPECT_TRUE(result->correct) << "stage " << stage;
    // A dropout before unmasking is still in the sum: it finished its masked input.
    EXPECT_EQ(result->survivors, stage == 3 ? 10U : 8U) << "stage " << stage;
  }
}

TEST(SecAggRoundTest, AServerInItsOwnProcessSumsExactlyAndReportsItsPeakRss) {
  // Every message crosses a socket pair, as in secagg_sim --server-process.
  bench::SimulationConfig config;
  config.clients = 20;
  config.dimension = 5000;
  config.chunk = 1000;
  config.server_in_child_process = true;
  bench::ChooseDropouts(config);
  auto result = bench::RunSimulation(config);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_TRUE(result->completed) << result->abort_reason;
  EXPECT_TRUE(result->correct);
  EXPECT_LT(result->survivors, 20U);
  // The child holds the server alone; it never saw the clients' inputs or keys.
  EXPECT_GT(result->server_peak_rss_mib, 1.0);
  EXPECT_LT(result->server_peak_rss_mib, 200.0);
}

TEST(SecAggRoundTest, BelowTheThresholdTheRoundAbortsAndReleasesNothing) {
  bench::SimulationConfig config;
  config.clients = 10;
  config.degree = 4;
  config.threshold = 4;
  config.dimension = 100;
  config.drop_before_unmask = {1, 2, 3, 4, 5};
  auto result = bench::RunSimulation(config);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_FALSE(result->completed);
  EXPECT_THAT(result->abort_reason, HasSubstr("releases nothing"));
}

// A small round driven by hand, for the refusal tests.
class ProtocolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    setup_.round_id = 3;
    setup_.session_id = std::string(32, 'S');
    setup_.num_participants = 4;
    setup_.threshold = 2;
    setup_.length = 64;
    setup_.bits = 24;
    for (uint32_t id = 1; id <= 4; ++id) {
      identities_.push_back(*pki::PrivateKey::GenerateP256());
      public_keys_[id] = *identities_.back().PublicKeyDer();
    }
    auto graph = NeighborGraph::Create(4, 3, std::string(32, 'g'));
    server_.emplace(*SecAggServer::Create(setup_, *graph));
    for (uint32_t id = 1; id <= 4; ++id) {
      const pki::PrivateKey* identity = &identities_[id - 1];
      clients_.emplace(
          id, *SecAggClient::Create(
                  setup_, id, graph->Neighbors(id),
                  [identity](std::string_view m) { return identity->Sign(std::string(m)); },
                  [this](uint32_t p, std::string_view m, std::string_view s) {
                    return pki::VerifySignature(public_keys_[p], std::string(m), std::string(s));
                  }));
    }
  }

  void Advertise() {
    for (auto& [id, client] : clients_) {
      ASSERT_TRUE(server_->ReceiveAdvertisedKeys(*client.AdvertiseKeys()).ok());
    }
    ASSERT_TRUE(server_->CloseAdvertiseKeys().ok());
  }

  void Share() {
    for (auto& [id, client] : clients_) {
      ASSERT_TRUE(server_->ReceiveShares(id, *client.ShareKeys(server_->KeysFor(id))).ok());
    }
    ASSERT_TRUE(server_->CloseShareKeys().ok());
  }

  RoundSetup setup_;
  std::vector<pki::PrivateKey> identities_;
  std::map<uint32_t, std::string> public_keys_;
  std::optional<SecAggServer> server_;
  std::map<uint32_t, SecAggClient> clients_;
};

TEST_F(ProtocolTest, ForgedKeySignaturesAreRefused) {
  Advertise();
  std::vector<AdvertisedKeys> keys = server_->KeysFor(1);
  ASSERT_FALSE(keys.empty());
  // A coordinator substituting a key it controls cannot re-sign it.
  keys[0].mask_public_key = std::string(32, '\x09');
  auto shared = clients_.at(1).ShareKeys(keys);
  EXPECT_EQ(shared.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(Message(shared.status()), HasSubstr("do not carry its signature"));
}

TEST_F(ProtocolTest, ReplayedAndOutOfOrderMessagesGetSpecificErrors) {
  auto keys = clients_.at(1).AdvertiseKeys();
  EXPECT_TRUE(server_->ReceiveAdvertisedKeys(*keys).ok());
  EXPECT_TRUE(server_->ReceiveAdvertisedKeys(*keys).ok()) << "an identical retry is accepted";
  AdvertisedKeys altered = *keys;
  altered.cipher_public_key[0] ^= 1;
  EXPECT_EQ(server_->ReceiveAdvertisedKeys(altered).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(server_->ReceiveShares(1, {}).code(), absl::StatusCode::kFailedPrecondition)
      << "shares before the advertise stage closed";
  EXPECT_EQ(clients_.at(1).MaskChunk({}).code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(ProtocolTest, EachServerStageTakesOnlyItsOwnMessagesAndAFailedCloseKeepsIt) {
  EXPECT_EQ(server_->stage_name(), "advertise-keys");
  // Every later stage's messages, before their stage: refused, naming the stage that is open.
  const absl::Status early_chunk = server_->ReceiveMaskedChunk(1, 0, {});
  EXPECT_EQ(early_chunk.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Message(early_chunk), HasSubstr("the masked-input stage is not open; the "
                                              "advertise-keys stage is"));
  EXPECT_EQ(server_->ReceiveRevealedShares(RevealedShares{}).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(server_->Finish().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(server_->CloseShareKeys().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(server_->survivors().empty());

  Advertise();
  EXPECT_EQ(server_->stage_name(), "share-keys");
  // An earlier stage's message, after it closed: refused too.
  auto keys = clients_.at(1).AdvertiseKeys();
  EXPECT_EQ(server_->ReceiveAdvertisedKeys(*keys).code(), absl::StatusCode::kFailedPrecondition);
  Share();
  EXPECT_EQ(server_->stage_name(), "masked-input");

  std::vector<uint64_t> input(64, 3);
  ASSERT_TRUE(clients_.at(1).ReceiveShares(server_->SharesFor(1)).ok());
  ASSERT_TRUE(clients_.at(1).MaskChunk(input).ok());
  ASSERT_TRUE(server_->ReceiveMaskedChunk(1, 0, std::span<const uint64_t>(input).first(32)).ok());
  // Half an input in the sum: the stage cannot close, and stays open as it was.
  EXPECT_EQ(server_->CloseMaskedInput().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(server_->stage_name(), "masked-input");
  EXPECT_EQ(server_->ValuesReceived(1), 32u);
  ASSERT_TRUE(
      server_->ReceiveMaskedChunk(1, 32, std::span<const uint64_t>(input).subspan(32)).ok());
  EXPECT_TRUE(server_->CloseMaskedInput().ok());
  EXPECT_EQ(server_->stage_name(), "unmask");
  EXPECT_EQ(server_->survivors(), std::set<uint32_t>{1});
  EXPECT_EQ(server_->ValuesReceived(1), 64u);
  EXPECT_EQ(server_->ValuesReceived(2), 0u);
}

TEST_F(ProtocolTest, TamperedShareCiphertextsAreRefused) {
  Advertise();
  Share();
  std::vector<SealedShares> incoming = server_->SharesFor(1);
  ASSERT_FALSE(incoming.empty());
  incoming[0].ciphertext[15] ^= 1;
  const absl::Status status = clients_.at(1).ReceiveShares(incoming);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(Message(status), HasSubstr("does not authenticate"));
  // A bundle redirected to another recipient is refused too.
  std::vector<SealedShares> redirected = server_->SharesFor(2);
  EXPECT_EQ(clients_.at(1).ReceiveShares(redirected).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ProtocolTest, WrongLengthsAndValuesAreRefusedAndChunksResume) {
  Advertise();
  Share();
  ASSERT_TRUE(clients_.at(1).ReceiveShares(server_->SharesFor(1)).ok());
  std::vector<uint64_t> input(64, 5);
  ASSERT_TRUE(clients_.at(1).MaskChunk(std::span<uint64_t>(input).first(32)).ok());
  ASSERT_TRUE(clients_.at(1).MaskChunk(std::span<uint64_t>(input).subspan(32)).ok());
  std::vector<uint64_t> extra(1, 0);
  EXPECT_EQ(clients_.at(1).MaskChunk(extra).code(), absl::StatusCode::kFailedPrecondition);

  const std::span<const uint64_t> first(input.data(), 32);
  const std::span<const uint64_t> second(input.data() + 32, 32);
  EXPECT_EQ(server_->ReceiveMaskedChunk(1, 32, second).code(), absl::StatusCode::kOutOfRange);
  EXPECT_TRUE(server_->ReceiveMaskedChunk(1, 0, first).ok());
  EXPECT_TRUE(server_->ReceiveMaskedChunk(1, 0, first).ok()) << "a retried chunk is skipped";
  std::vector<uint64_t> too_long(33, 0);
  EXPECT_EQ(server_->ReceiveMaskedChunk(1, 32, too_long).code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<uint64_t> outside(1, uint64_t{1} << 24);
  EXPECT_EQ(server_->ReceiveMaskedChunk(1, 32, outside).code(), absl::StatusCode::kInvalidArgument);
  // Participant 1 stopped half way: the round cannot complete.
  const absl::Status closed = server_->CloseMaskedInput();
  EXPECT_EQ(closed.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Message(closed), HasSubstr("cannot be removed"));
}

TEST_F(ProtocolTest, ClientsRefuseInconsistentUnmaskRequestsAndNeverRevealTwice) {
  Advertise();
  Share();
  std::vector<uint64_t> input(64, 1);
  ASSERT_TRUE(clients_.at(1).ReceiveShares(server_->SharesFor(1)).ok());
  ASSERT_TRUE(clients_.at(1).MaskChunk(input).ok());
  ASSERT_TRUE(server_->CloseMaskedInput().ok());
  UnmaskRequest request = server_->UnmaskRequestFor(1);  // Nobody uploaded: all "dropped".
  ASSERT_FALSE(request.dropped.empty());
  UnmaskRequest both = request;
  both.alive = {request.dropped[0]};
  EXPECT_EQ(clients_.at(1).Unmask(both).status().code(), absl::StatusCode::kPermissionDenied);
  UnmaskRequest missing;
  EXPECT_EQ(clients_.at(1).Unmask(missing).status().code(), absl::StatusCode::kPermissionDenied);
  // All neighbours alive: a valid request is answered once, and never again.
  UnmaskRequest alive;
  alive.alive = request.dropped;
  ASSERT_TRUE(clients_.at(1).Unmask(alive).ok());
  EXPECT_EQ(clients_.at(1).Unmask(request).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(SecAggMaskTest, AMaskedInputIsUniform) {
  // One client's masked zeros, byte by byte: χ² with 255 degrees of freedom below 330.5.
  RoundSetup setup{1, std::string(32, 'S'), 3, 1, 1 << 16, 32};
  auto graph = NeighborGraph::Create(3, 2, std::string(32, 'g'));
  auto identity = pki::PrivateKey::GenerateP256();
  auto sign = [&](std::string_view m) { return identity->Sign(std::string(m)); };
  auto accept = [](uint32_t, std::string_view, std::string_view) { return absl::OkStatus(); };
  std::map<uint32_t, SecAggClient> clients;
  auto server = SecAggServer::Create(setup, *graph);
  for (uint32_t id = 1; id <= 3; ++id) {
    clients.emplace(id, *SecAggClient::Create(setup, id, graph->Neighbors(id), sign, accept));
    ASSERT_TRUE(server->ReceiveAdvertisedKeys(*clients.at(id).AdvertiseKeys()).ok());
  }
  ASSERT_TRUE(server->CloseAdvertiseKeys().ok());
  for (auto& [id, client] : clients) {
    ASSERT_TRUE(server->ReceiveShares(id, *client.ShareKeys(server->KeysFor(id))).ok());
  }
  ASSERT_TRUE(server->CloseShareKeys().ok());
  ASSERT_TRUE(clients.at(1).ReceiveShares(server->SharesFor(1)).ok());
  std::vector<uint64_t> zeros(setup.length, 0);
  ASSERT_TRUE(clients.at(1).MaskChunk(zeros).ok());
  std::vector<double> counts(256, 0.0);
  for (uint64_t v : zeros) {
    for (int byte = 0; byte < 4; ++byte) counts[(v >> (8 * byte)) & 0xff] += 1;
  }
  const double expected = 4.0 * static_cast<double>(setup.length) / 256;
  double chi_square = 0;
  for (double count : counts) chi_square += (count - expected) * (count - expected) / expected;
  EXPECT_LT(chi_square, 330.5);
}

}  // namespace
}  // namespace fedmoe::secure_agg
