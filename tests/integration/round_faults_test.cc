// Rounds under faults, with simulated clients (simulation/simulated_client.h) that talk to a real
// fedmoe-coordinator process over loopback mutual TLS. Each simulated client's plain update is
// known here, so every committed model is checked against the per-expert weighted mean that
// this file computes from those updates on its own (DESIGN §4), within the quantisation bound:
// noise off, then with clients vanishing at each SecAgg+ stage, a kill -9 of the coordinator at
// each stage, clients that send a wrong-length vector or replay a stage message, and a client
// that dies in mid-upload.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <csignal>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "client/update.h"
#include "model/checkpoint.h"
#include "privacy/ring_encoder.h"
#include "privacy/secure_random.h"
#include "simulation/simulated_client.h"
#include "tests/integration/coordinator_fixture.h"

namespace fedmoe::testing {
namespace {

using simulation::Misbehaviour;
using simulation::RoundBehaviour;
using simulation::RoundReport;
using simulation::SimulatedClient;
using simulation::UpdateSource;
using ::testing::HasSubstr;

// What a simulated client "trained": a small random change of every tensor and routing
// counts of its own, both drawn from a seed derived from its id.
struct KnownUpdate {
  std::vector<double> delta;  // local − global over the whole model
  std::vector<std::vector<int64_t>> slots;
};

class KnownUpdates {
 public:
  explicit KnownUpdates(std::filesystem::path models) : models_(std::move(models)) {}

  UpdateSource Source() {
    return [this](const SimulatedClient& client, const v1::JoinRoundTask& task) {
      return Encode(client.client_id(), task);
    };
  }

  const KnownUpdate& For(const std::string& client_id) const { return updates_.at(client_id); }
  const v1::UpdateSpec& spec() const { return spec_; }

 private:
  absl::StatusOr<std::vector<uint64_t>> Encode(const std::string& client_id,
                                               const v1::JoinRoundTask& task) {
    const v1::UpdateSpec& spec = task.update_spec();
    absl::StatusOr<model::ModelParameters> global =
        model::LoadModel(models_ / absl::StrCat("v", spec.base_model().version()));
    if (!global.ok()) return global.status();
    std::mt19937_64 random(std::hash<std::string>{}(client_id));
    std::normal_distribution<float> change(0.0F, 1e-3F);
    model::ModelParameters local = *global;
    for (float& value : local.values()) value += change(random);
    // Some experts unused by some clients, so the weights differ from a plain mean.
    std::uniform_int_distribution<int64_t> count(0, 3);
    const model::MoeConfig& config = global->config();
    KnownUpdate known;
    known.slots.assign(static_cast<size_t>(config.num_hidden_layers),
                       std::vector<int64_t>(static_cast<size_t>(config.num_local_experts)));
    for (auto& layer : known.slots) {
      for (int64_t& slots : layer) slots = count(random) * 50;
      layer[0] += 10;  // Every layer routes somewhere.
    }
    known.delta.resize(local.values().size());
    for (size_t i = 0; i < known.delta.size(); ++i) {
      known.delta[i] = static_cast<double>(local.values()[i]) - global->values()[i];
    }
    absl::StatusOr<client::PlainUpdate> plain =
        client::BuildPlainUpdate(*global, local, known.slots, spec);
    if (!plain.ok()) return plain.status();
    absl::StatusOr<privacy::RingEncoder> encoder = privacy::RingEncoder::Create(
        plain->values.size(),
        client::EncodingFromSpec(spec, static_cast<int>(task.secagg().ring_bits())));
    if (!encoder.ok()) return encoder.status();
    absl::StatusOr<privacy::SecureRandom> rounding = privacy::SecureRandom::FromSystem();
    if (!rounding.ok()) return rounding.status();
    std::lock_guard<std::mutex> lock(mutex_);
    spec_ = spec;
    updates_[client_id] = std::move(known);
    return encoder->Encode(plain->values, *rounding);
  }

  std::filesystem::path models_;
  std::mutex mutex_;
  std::map<std::string, KnownUpdate> updates_;
  v1::UpdateSpec spec_;
};

class RoundFaultsTest : public CoordinatorFixture {
 protected:
  // A federation of `clients` simulated clients, without noise (so the committed change can be
  // compared with the plain updates), short stage timeouts, FedAvg at learning rate 1, and
  // experts and routers trainable. The clip norm is far above the updates' norms. One masked
  // input is staged at a time, so concurrent uploads meet RESOURCE_EXHAUSTED and retry; the
  // masked-input stage has 16 s for those retries, and the others 6 s: 4 s and then 8 s ran out
  // now and then under ctest -j2 while the CUDA simulator tests took both cores. A vanished
  // client's stage waits out its timeout, so these are the tests' cost.
  // Without noise unless `privacy` says otherwise (YAML lines under privacy:).
  void StartNoiselessFederation(int clients, int max_rounds,
                                const std::string& privacy = "  mode: none\n") {
    StartFederation(absl::StrCat("rounds:\n  min_clients: ", clients, "\n  max_clients: ", clients,
                                 "\n  max_rounds: ", max_rounds, R"(
  interval: 1s
  timeouts:
    train: 6s
    share_keys: 6s
    masked_input: 16s
    unmask: 6s
  trainable: [experts, router]
privacy:
  clip_norm: 10
)",
                                 privacy),
                    {{"concurrent_uploads: 4", "concurrent_uploads: 1"}});
    for (int i = 1; i <= clients; ++i) {
      absl::StatusOr<std::unique_ptr<SimulatedClient>> client =
          SimulatedClient::Open(EnrollClient(absl::StrCat("sim-", i)));
      ASSERT_TRUE(client.ok()) << client.status();
      clients_.push_back(*std::move(client));
    }
  }

  // Every client takes part in one round as its behaviour says (honest when absent).
  std::vector<RoundReport> RunRound(std::vector<RoundBehaviour> behaviours = {}) {
    behaviours.resize(clients_.size());
    std::vector<RoundReport> reports(clients_.size());
    std::vector<std::thread> threads;
    const UpdateSource source = updates_.Source();
    for (size_t i = 0; i < clients_.size(); ++i) {
      threads.emplace_back(
          [&, i] { reports[i] = clients_[i]->RunRound(source, behaviours[i], absl::Seconds(90)); });
    }
    for (std::thread& thread : threads) thread.join();
    return reports;
  }

  // The clients whose masked input went into the sum.
  static std::vector<std::string> Contributors(const std::vector<RoundReport>& reports,
                                               const std::vector<std::string>& ids) {
    std::vector<std::string> contributors;
    for (size_t i = 0; i < reports.size(); ++i) {
      if (reports[i].completed >= v1::ROUND_STAGE_MASKED_COLLECTED) contributors.push_back(ids[i]);
    }
    return contributors;
  }

  std::vector<std::string> ClientIds() const {
    std::vector<std::string> ids;
    for (const auto& client : clients_) ids.push_back(client->client_id());
    return ids;
  }

  // Version `version` − version − 1, tensor by tensor, against DESIGN §4 computed here from
  // the contributors' plain updates: routed experts Σ w_ue·Δ_u / Σ w_ue with w_ue the client's
  // share of its routed slots in the layer (unchanged below w_min = 1e-3), routers the mean.
  // Per value, the bound is eight standard deviations of the rounding in the ring sum
  // (√n/(2γ), γ the spec's scale) over the merge's denominator, plus float32 rounding of the
  // stored weights. With central noise of standard deviation `central_noise_sd` (z·C) in the
  // sum, the differences of the tensors merged as a mean over the survivors, times their
  // count, are that noise instead: mean 0 and that standard deviation.
  void ExpectWeightedMean(uint64_t version, const std::vector<std::string>& contributors,
                          double central_noise_sd = 0) {
    absl::StatusOr<model::ModelParameters> before =
        model::LoadModel(state_ / "models" / absl::StrCat("v", version - 1));
    absl::StatusOr<model::ModelParameters> after =
        model::LoadModel(state_ / "models" / absl::StrCat("v", version));
    ASSERT_TRUE(before.ok() && after.ok());
    const v1::UpdateSpec& spec = updates_.spec();
    const auto n = static_cast<double>(contributors.size());
    const double rounding_sd = std::sqrt(n) / (2 * spec.privacy().scale());
    double worst = 0;
    double largest_change = 0;
    double largest_bound = 0;
    double noise_sum = 0;
    double noise_squares = 0;
    double noised_values = 0;
    for (const v1::TrainableTensor& tensor : spec.trainable_tensors()) {
      const model::TensorSpec* found = before->layout().Find(tensor.name());
      ASSERT_NE(found, nullptr) << tensor.name();
      std::vector<double> weights;
      for (const std::string& id : contributors) {
        if (tensor.role() != v1::TrainableTensor::ROLE_ROUTED_EXPERT) {
          weights.push_back(1.0);
          continue;
        }
        const std::vector<int64_t>& layer = updates_.For(id).slots[tensor.layer()];
        double total = 0;
        for (int64_t slots : layer) total += static_cast<double>(slots);
        weights.push_back(static_cast<double>(layer[tensor.expert()]) / total);
      }
      double weight_sum = 0;
      for (double weight : weights) weight_sum += weight;
      const bool untouched = weight_sum < 1e-3;
      for (int64_t i = found->offset; i < found->offset + found->size; ++i) {
        double expected = 0;
        if (!untouched) {
          for (size_t u = 0; u < contributors.size(); ++u) {
            expected += weights[u] * updates_.For(contributors[u]).delta[static_cast<size_t>(i)];
          }
          expected /= weight_sum;
        }
        const double old_value = before->values()[static_cast<size_t>(i)];
        const double new_value = after->values()[static_cast<size_t>(i)];
        const double bound = (untouched ? 0 : 8 * rounding_sd / weight_sum) +
                             std::ldexp(std::abs(old_value) + std::abs(new_value), -23);
        worst = std::max(worst, std::abs((new_value - old_value) - expected) / bound);
        largest_change = std::max(largest_change, std::abs(expected));
        largest_bound = std::max(largest_bound, bound);
        // Routed experts divide by the noised sum of the expert weights; the other tensors by
        // the survivors' count, so that their differences are the noise alone.
        if (tensor.role() != v1::TrainableTensor::ROLE_ROUTED_EXPERT) {
          const double noise = ((new_value - old_value) - expected) * weight_sum;
          noise_sum += noise;
          noise_squares += noise * noise;
          noised_values += 1;
        }
      }
    }
    if (central_noise_sd > 0) {
      ASSERT_GE(noised_values, 256);
      EXPECT_NEAR(noise_sum / noised_values, 0.0, 5 * central_noise_sd / std::sqrt(noised_values));
      // Five standard errors of a standard deviation estimated from this many values.
      EXPECT_NEAR(std::sqrt(noise_squares / noised_values), central_noise_sd,
                  5 * central_noise_sd / std::sqrt(2 * noised_values));
      return;
    }
    EXPECT_LE(worst, 1.0) << "the committed change is off by " << worst << " bounds";
    // The check means something only if the change is far above the bound.
    EXPECT_GT(largest_change, 100 * largest_bound);
  }

  v1::RoundInfo RoundInfoOf(uint64_t round_id) {
    const v1::ListRoundsResponse rounds = Rounds();
    for (const v1::RoundInfo& round : rounds.rounds()) {
      if (round.round_id() == round_id) return round;
    }
    ADD_FAILURE() << "no round " << round_id;
    return {};
  }

  std::vector<std::unique_ptr<SimulatedClient>> clients_;
  KnownUpdates updates_{dir_.path() / "coordinator" / "models"};
};

TEST_F(RoundFaultsTest, WithoutNoiseTheCommittedChangeIsThePerExpertWeightedMean) {
  StartNoiselessFederation(3, 1);
  const std::vector<RoundReport> reports = RunRound();
  for (const RoundReport& report : reports) {
    ASSERT_EQ(report.outcome, v1::ROUND_STAGE_COMMITTED) << report.error << report.abort_reason;
    EXPECT_EQ(report.new_model_version, 2u);
  }
  ExpectWeightedMean(2, ClientIds());
}

TEST_F(RoundFaultsTest, CentralNoiseIsAllThatSeparatesTheCommittedChangeFromTheWeightedMean) {
  // z·C = 0.05·10: the coordinator's discrete Gaussian in the ring, decoded, is N(0, 0.5²)
  // per value of the sum, far above the rounding (√n/2γ) and the stored floats.
  StartNoiselessFederation(3, 1, "  mode: central\n  noise_multiplier: 0.05\n");
  const std::vector<RoundReport> reports = RunRound();
  for (const RoundReport& report : reports) {
    ASSERT_EQ(report.outcome, v1::ROUND_STAGE_COMMITTED) << report.error << report.abort_reason;
  }
  ExpectWeightedMean(2, ClientIds(), 0.05 * 10);
}

std::string StageTestName(const ::testing::TestParamInfo<v1::RoundStage>& stage) {
  return v1::RoundStage_Name(stage.param);
}

class DropoutTest : public RoundFaultsTest, public ::testing::WithParamInterface<v1::RoundStage> {};

TEST_P(DropoutTest, AClientThatVanishesAtTheStageLeavesTheOthersToCommit) {
  // Four clients: a complete graph of degree 3 and threshold 2, so three survivors suffice.
  StartNoiselessFederation(4, 1);
  std::vector<RoundBehaviour> behaviours(4);
  behaviours[3].vanish_at = GetParam();
  const std::vector<RoundReport> reports = RunRound(behaviours);
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(reports[i].outcome, v1::ROUND_STAGE_COMMITTED)
        << reports[i].error << reports[i].abort_reason;
  }
  const std::vector<std::string> contributors = Contributors(reports, ClientIds());
  // Vanishing before Unmask leaves its masked input in the sum; the others' shares remove its
  // masks. Earlier, its pairwise masks are rebuilt from its shared key instead.
  EXPECT_EQ(contributors.size(), GetParam() == v1::ROUND_STAGE_MASKED_COLLECTED ? 4u : 3u);
  const v1::RoundInfo round = RoundInfoOf(reports[0].round_id);
  EXPECT_EQ(round.cohort_size(), 4u);
  EXPECT_EQ(round.survivors(), contributors.size());
  ExpectWeightedMean(2, contributors);
}

INSTANTIATE_TEST_SUITE_P(EachStage, DropoutTest,
                         ::testing::Values(v1::ROUND_STAGE_SELECTED,
                                           v1::ROUND_STAGE_KEYS_ADVERTISED,
                                           v1::ROUND_STAGE_KEYS_SHARED,
                                           v1::ROUND_STAGE_MASKED_COLLECTED),
                         StageTestName);

class CoordinatorRestartTest : public RoundFaultsTest,
                               public ::testing::WithParamInterface<v1::RoundStage> {};

TEST_P(CoordinatorRestartTest, AKill9AtTheStageAbortsTheRoundAndTheNextOneCommits) {
  StartNoiselessFederation(3, 1);
  // Every client holds round 1 at the stage until the coordinator has been killed and restarted.
  absl::Notification at_stage;
  std::once_flag first_at_stage;  // Clients reach the stage concurrently; one notifies.
  absl::Notification restarted;
  std::vector<RoundBehaviour> behaviours(3);
  for (RoundBehaviour& behaviour : behaviours) {
    behaviour.on_task = [&](v1::RoundStage stage) {
      if (stage != GetParam() || restarted.HasBeenNotified()) return;
      std::call_once(first_at_stage, [&] { at_stage.Notify(); });
      restarted.WaitForNotification();
    };
  }
  std::vector<RoundReport> first;
  std::thread round([&] { first = RunRound(behaviours); });
  ASSERT_TRUE(at_stage.WaitForNotificationWithTimeout(absl::Seconds(60)));
  EXPECT_EQ(RoundInfoOf(1).stage(), GetParam());
  coordinator_->Signal(SIGKILL);
  coordinator_->Wait(absl::Seconds(10));
  StartCoordinator();
  restarted.Notify();
  round.join();
  for (const RoundReport& report : first) {
    EXPECT_NE(report.outcome, v1::ROUND_STAGE_COMMITTED);
    EXPECT_FALSE(report.error.ok());
  }
  const v1::RoundInfo aborted = RoundInfoOf(1);
  EXPECT_EQ(aborted.stage(), v1::ROUND_STAGE_ABORTED);
  EXPECT_THAT(aborted.abort_reason(), HasSubstr("restarted"));

  const std::vector<RoundReport> second = RunRound();
  for (const RoundReport& report : second) {
    ASSERT_EQ(report.outcome, v1::ROUND_STAGE_COMMITTED) << report.error << report.abort_reason;
    EXPECT_EQ(report.round_id, 2u);
    EXPECT_EQ(report.new_model_version, 2u);
  }
  EXPECT_EQ(Status().model_version(), 2u);
  ExpectWeightedMean(2, ClientIds());
}

INSTANTIATE_TEST_SUITE_P(EachStage, CoordinatorRestartTest,
                         ::testing::Values(v1::ROUND_STAGE_SELECTED,
                                           v1::ROUND_STAGE_KEYS_ADVERTISED,
                                           v1::ROUND_STAGE_KEYS_SHARED,
                                           v1::ROUND_STAGE_MASKED_COLLECTED),
                         StageTestName);

TEST_F(RoundFaultsTest, WrongLengthAndReplayedMessagesDropTheSenderAndTheRoundCompletes) {
  // Six clients (degree 5, threshold 3): the four honest ones are enough.
  StartNoiselessFederation(6, 1);
  std::vector<RoundBehaviour> behaviours(6);
  behaviours[4].misbehaviour = Misbehaviour::kWrongLength;
  behaviours[5].misbehaviour = Misbehaviour::kReplayAdvertiseKeys;
  const std::vector<RoundReport> reports = RunRound(behaviours);
  for (int i = 0; i < 4; ++i) {
    ASSERT_EQ(reports[i].outcome, v1::ROUND_STAGE_COMMITTED)
        << reports[i].error << reports[i].abort_reason;
  }
  EXPECT_EQ(reports[4].error.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(reports[4].error.message(), HasSubstr("values; round 1 expects"));
  EXPECT_EQ(reports[5].error.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(reports[5].error.message(), HasSubstr("has closed; this client is dropped"));
  const std::vector<std::string> contributors = Contributors(reports, ClientIds());
  ASSERT_EQ(contributors.size(), 4u);
  EXPECT_EQ(RoundInfoOf(1).survivors(), 4u);
  ExpectWeightedMean(2, contributors);
}

TEST_F(RoundFaultsTest, AClientKilledMidUploadLeavesNothingInTheSumAndTheOthersCommit) {
  // Four clients (threshold 2): the three that finish are enough.
  StartNoiselessFederation(4, 1);
  std::vector<RoundBehaviour> behaviours(4);
  behaviours[3].misbehaviour = Misbehaviour::kAbandonUpload;
  const std::vector<RoundReport> reports = RunRound(behaviours);
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(reports[i].outcome, v1::ROUND_STAGE_COMMITTED)
        << reports[i].error << reports[i].abort_reason;
  }
  EXPECT_EQ(reports[3].error.code(), absl::StatusCode::kCancelled) << reports[3].error;
  const std::vector<std::string> contributors = Contributors(reports, ClientIds());
  ASSERT_EQ(contributors.size(), 3u);
  EXPECT_EQ(RoundInfoOf(1).survivors(), 3u);
  // Half a masked vector in the sum would make this far from the mean of the other three.
  ExpectWeightedMean(2, contributors);
}

TEST_F(RoundFaultsTest, ABackupTakenWhileServingRestoresTheExactVersionsAndLedger) {
  StartNoiselessFederation(3, 3);
  for (int round = 0; round < 2; ++round) {
    ASSERT_EQ(RunRound()[0].outcome, v1::ROUND_STAGE_COMMITTED);
  }
  const std::filesystem::path backup = dir_.path() / "backup";
  CommandResult backed_up = Coordinator({"backup", "--out", backup.string()});
  ASSERT_EQ(backed_up.exit_code, 0) << backed_up.err;
  EXPECT_THAT(backed_up.out, HasSubstr("3 model versions"));
  const std::string ledger = Coordinator({"privacy", "report", "--json"}).out;
  const std::string rounds = Coordinator({"rounds", "list", "--json"}).out;
  const std::string weights = ReadFile(state_ / "models/v3/model.safetensors");
  // Keys in the backup stay private.
  EXPECT_EQ(std::filesystem::status(backup / "ca.key").permissions() & std::filesystem::perms::all,
            std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);

  // The live federation moves on past the backup, then is lost.
  ASSERT_EQ(RunRound()[0].outcome, v1::ROUND_STAGE_COMMITTED);
  ASSERT_EQ(Status().model_version(), 4u);
  coordinator_->Signal(SIGKILL);
  coordinator_->Wait(absl::Seconds(10));

  const std::filesystem::path restored = dir_.path() / "restored";
  CommandResult restore = RunCommand({BinaryPath("fedmoe-coordinator"), "restore", "--backup",
                                      backup.string(), "--state-dir", restored.string()});
  ASSERT_EQ(restore.exit_code, 0) << restore.err;
  state_ = restored;
  StartCoordinator();
  EXPECT_EQ(Status().model_version(), 3u);
  EXPECT_EQ(Coordinator({"privacy", "report", "--json"}).out, ledger);
  EXPECT_EQ(Coordinator({"rounds", "list", "--json"}).out, rounds);
  EXPECT_EQ(ReadFile(restored / "models/v3/model.safetensors"), weights);
  EXPECT_FALSE(std::filesystem::exists(restored / "models/v4"));
  // And the restored federation carries on from version 3.
  ASSERT_EQ(RunRound()[0].outcome, v1::ROUND_STAGE_COMMITTED);
  EXPECT_EQ(Status().model_version(), 4u);
}

TEST_F(RoundFaultsTest, TheCoordinatorsMetricsFollowTheRoundInThePrometheusTextFormat) {
  StartNoiselessFederation(3, 1);
  // Scraped while round 1 waits for masked inputs, then after it commits.
  std::map<std::string, double> during;
  std::string error;
  bool scraped = false;
  std::once_flag once;
  std::vector<RoundBehaviour> behaviours(3);
  for (RoundBehaviour& behaviour : behaviours) {
    behaviour.on_task = [&](v1::RoundStage stage) {
      if (stage != v1::ROUND_STAGE_KEYS_SHARED) return;
      std::call_once(once, [&] { scraped = ScrapeMetrics(metrics_address_, during, error); });
    };
  }
  const std::vector<RoundReport> reports = RunRound(behaviours);
  ASSERT_EQ(reports[0].outcome, v1::ROUND_STAGE_COMMITTED) << reports[0].error;
  ASSERT_TRUE(scraped) << error;
  EXPECT_EQ(during["fedmoe_up"], 1);
  EXPECT_EQ(during["fedmoe_round_open"], 1);
  EXPECT_EQ(during["fedmoe_clients{state=\"enrolled\"}"], 3);
  EXPECT_EQ(during["fedmoe_clients{state=\"online\"}"], 3);
  EXPECT_EQ(during["fedmoe_model_version"], 1);
  EXPECT_EQ(during["fedmoe_round_stage_seconds_count{stage=\"SELECTED\"}"], 1);
  EXPECT_EQ(during["fedmoe_round_stage_seconds_count{stage=\"KEYS_ADVERTISED\"}"], 1);
  EXPECT_GT(during["fedmoe_transport_bytes_total{direction=\"in\"}"], 0);

  std::map<std::string, double> after;
  ASSERT_TRUE(WaitFor(
      [&] {
        return ScrapeMetrics(metrics_address_, after, error) &&
               after["fedmoe_rounds_total{outcome=\"committed\"}"] == 1;
      },
      absl::Seconds(10)))
      << error;
  EXPECT_EQ(after["fedmoe_round_open"], 0);
  EXPECT_EQ(after["fedmoe_model_version"], 2);
  EXPECT_EQ(after["fedmoe_round_seconds_count{outcome=\"committed\"}"], 1);
  EXPECT_EQ(after["fedmoe_round_stage_seconds_count{stage=\"UNMASKED\"}"], 1);
  // Each client's masked input alone is 2^18 values at 32 bits.
  EXPECT_GT(after["fedmoe_transport_bytes_total{direction=\"in\"}"], 3.0 * (1 << 20));
  // Mode none spends an unbounded ε, and says so.
  EXPECT_TRUE(std::isinf(after["fedmoe_privacy_epsilon_spent"]));
  // Nothing about one client is exposed: no sample names a client.
  for (const auto& [sample, value] : after) {
    EXPECT_EQ(sample.find("sim-"), std::string::npos) << sample;
  }
}

}  // namespace
}  // namespace fedmoe::testing
