#include "simulation/secagg_simulation.h"

#include <chrono>
#include <map>
#include <random>

#include "absl/strings/str_cat.h"
#include "pki/private_key.h"
#include "secure_agg/client/secagg_client.h"
#include "secure_agg/server/secagg_server.h"
#include "simulation/secagg_server_endpoint.h"

namespace fedmoe::bench {
namespace {

using secure_agg::AdvertisedKeys;
using secure_agg::SealedShares;

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

void ChooseDropouts(SimulationConfig& config) {
  std::mt19937_64 random(config.seed ^ 0x5eca66);
  std::vector<uint32_t> order(config.clients);
  for (uint32_t i = 0; i < config.clients; ++i) order[i] = i + 1;
  std::shuffle(order.begin(), order.end(), random);
  const auto dropped = static_cast<size_t>(config.dropout_rate * config.clients);
  std::set<uint32_t>* stages[] = {&config.drop_before_advertise, &config.drop_before_share,
                                  &config.drop_before_masked_input, &config.drop_before_unmask};
  for (size_t i = 0; i < dropped; ++i) stages[i % 4]->insert(order[i]);
}

absl::StatusOr<SimulationResult> RunSimulation(const SimulationConfig& config) {
  SimulationResult result;
  uint32_t degree = config.degree;
  uint32_t threshold = config.threshold;
  if (degree == 0 || threshold == 0) {
    absl::StatusOr<secure_agg::GraphParameters> params =
        secure_agg::ChooseGraphParameters(config.clients, config.dropout_rate, 1.0 / 3.0);
    if (!params.ok()) return params.status();
    degree = params->degree;
    threshold = params->threshold;
  }
  result.degree = degree;
  result.threshold = threshold;

  std::mt19937_64 random(config.seed);
  std::string graph_seed(32, '\0');
  for (char& c : graph_seed) c = static_cast<char>(random());
  absl::StatusOr<secure_agg::NeighborGraph> graph =
      secure_agg::NeighborGraph::Create(config.clients, degree, graph_seed);
  if (!graph.ok()) return graph.status();
  secure_agg::RoundSetup setup;
  setup.round_id = config.seed;
  setup.session_id = std::string(32, 'S');
  setup.num_participants = config.clients;
  setup.threshold = threshold;
  setup.length = config.dimension;
  setup.bits = config.bits;
  // Forked before the clients' keys and inputs exist, so the child holds only the server.
  std::unique_ptr<ServerEndpoint> server;
  if (config.server_in_child_process) {
    absl::StatusOr<std::unique_ptr<ServerEndpoint>> child = ServerInChildProcess(setup, *graph);
    if (!child.ok()) return child.status();
    server = *std::move(child);
  } else {
    absl::StatusOr<secure_agg::SecAggServer> created =
        secure_agg::SecAggServer::Create(setup, *graph);
    if (!created.ok()) return created.status();
    server = InProcessServer(*std::move(created));
  }

  // Identity keys: each client signs; everyone verifies against the public key table (what
  // certificates provide in fedmoe).
  std::vector<pki::PrivateKey> identities;
  std::map<uint32_t, std::string> public_keys;
  for (uint32_t id = 1; id <= config.clients; ++id) {
    absl::StatusOr<pki::PrivateKey> key = pki::PrivateKey::GenerateP256();
    if (!key.ok()) return key.status();
    public_keys[id] = *key->PublicKeyDer();
    identities.push_back(std::move(*key));
  }
  secure_agg::SignatureVerifier verify =
      [&public_keys](uint32_t participant, std::string_view message, std::string_view signature) {
        auto key = public_keys.find(participant);
        if (key == public_keys.end()) return absl::NotFoundError("unknown participant");
        return pki::VerifySignature(key->second, std::string(message), std::string(signature));
      };

  std::map<uint32_t, secure_agg::SecAggClient> clients;
  std::vector<double> client_seconds(config.clients + 1, 0.0);
  std::vector<uint64_t> client_bytes(config.clients + 1, 0);
  std::map<uint32_t, std::vector<uint64_t>> inputs;
  const uint64_t value_mask = (uint64_t{1} << config.bits) - 1;
  for (uint32_t id = 1; id <= config.clients; ++id) {
    const pki::PrivateKey* identity = &identities[id - 1];
    absl::StatusOr<secure_agg::SecAggClient> client = secure_agg::SecAggClient::Create(
        setup, id, graph->Neighbors(id),
        [identity](std::string_view message) { return identity->Sign(std::string(message)); },
        verify);
    if (!client.ok()) return client.status();
    clients.emplace(id, std::move(*client));
    std::vector<uint64_t> input(config.dimension);
    for (uint64_t& v : input) v = random() & value_mask;
    inputs[id] = std::move(input);
  }
  auto abort_with = [&result](const absl::Status& status) {
    result.completed = false;
    result.abort_reason = std::string(status.message());
    return result;
  };
  auto timed = [&](uint32_t id, auto&& work) {
    const auto start = std::chrono::steady_clock::now();
    auto outcome = work();
    client_seconds[id] += SecondsSince(start);
    return outcome;
  };
  double server_seconds = 0;
  auto server_timed = [&](auto&& work) {
    const auto start = std::chrono::steady_clock::now();
    auto outcome = work();
    server_seconds += SecondsSince(start);
    return outcome;
  };

  std::set<uint32_t> live;
  for (uint32_t id = 1; id <= config.clients; ++id) live.insert(id);
  auto drop = [&live](const std::set<uint32_t>& leaving) {
    for (uint32_t id : leaving) live.erase(id);
  };

  // Stage 1.
  drop(config.drop_before_advertise);
  for (uint32_t id : live) {
    absl::StatusOr<AdvertisedKeys> keys = timed(id, [&] { return clients.at(id).AdvertiseKeys(); });
    if (!keys.ok()) return keys.status();
    client_bytes[id] += 32 + 32 + keys->signature.size();
    if (absl::Status s = server_timed([&] { return server->ReceiveAdvertisedKeys(*keys); });
        !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = server->CloseAdvertiseKeys(); !s.ok()) return s;
  // Stage 2.
  drop(config.drop_before_share);
  for (uint32_t id : live) {
    absl::StatusOr<std::vector<AdvertisedKeys>> neighbor_keys = server->KeysFor(id);
    if (!neighbor_keys.ok()) return neighbor_keys.status();
    absl::StatusOr<std::vector<SealedShares>> sealed =
        timed(id, [&] { return clients.at(id).ShareKeys(*neighbor_keys); });
    if (!sealed.ok()) return abort_with(sealed.status());
    for (const SealedShares& bundle : *sealed) client_bytes[id] += bundle.ciphertext.size() + 8;
    if (absl::Status s = server_timed([&] { return server->ReceiveShares(id, *sealed); });
        !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = server->CloseShareKeys(); !s.ok()) return s;
  // Stage 3.
  drop(config.drop_before_masked_input);
  for (uint32_t id : live) {
    absl::StatusOr<std::vector<SealedShares>> incoming = server->SharesFor(id);
    if (!incoming.ok()) return incoming.status();
    if (absl::Status s = timed(id, [&] { return clients.at(id).ReceiveShares(*incoming); });
        !s.ok()) {
      return abort_with(s);
    }
    std::vector<uint64_t> masked = inputs[id];
    for (uint64_t first = 0; first < config.dimension; first += config.chunk) {
      const uint64_t count = std::min(config.chunk, config.dimension - first);
      std::span<uint64_t> chunk(masked.data() + first, count);
      if (absl::Status s = timed(id, [&] { return clients.at(id).MaskChunk(chunk); }); !s.ok()) {
        return s;
      }
      if (absl::Status s =
              server_timed([&] { return server->ReceiveMaskedChunk(id, first, chunk); });
          !s.ok()) {
        return s;
      }
    }
    client_bytes[id] += (config.dimension * static_cast<uint64_t>(config.bits) + 7) / 8;
  }
  if (absl::Status s = server_timed([&] { return server->CloseMaskedInput(); }); !s.ok()) {
    return abort_with(s);
  }
  absl::StatusOr<std::set<uint32_t>> survivors_or = server->Survivors();
  if (!survivors_or.ok()) return survivors_or.status();
  const std::set<uint32_t> survivors = *std::move(survivors_or);
  // Stage 4.
  drop(config.drop_before_unmask);
  for (uint32_t id : live) {
    absl::StatusOr<secure_agg::UnmaskRequest> request = server->UnmaskRequestFor(id);
    if (!request.ok()) return request.status();
    absl::StatusOr<secure_agg::RevealedShares> revealed =
        timed(id, [&] { return clients.at(id).Unmask(*request); });
    if (!revealed.ok()) continue;  // A client that refuses drops out of the stage.
    client_bytes[id] += 48 * (revealed->self_mask_shares.size() + revealed->mask_key_shares.size());
    if (absl::Status s = server_timed([&] { return server->ReceiveRevealedShares(*revealed); });
        !s.ok()) {
      return s;
    }
  }
  absl::StatusOr<uint64_t> state_bytes = server->StateBytes();
  if (!state_bytes.ok()) return state_bytes.status();
  result.server_state_bytes = *state_bytes;
  absl::StatusOr<std::vector<uint64_t>> sum = server_timed([&] { return server->Finish(); });
  if (config.server_in_child_process) {
    absl::StatusOr<double> peak = server->PeakRssMib();
    if (!peak.ok()) return peak.status();
    result.server_peak_rss_mib = *peak;
  }
  result.server_seconds = server_seconds;
  result.survivors = static_cast<uint32_t>(survivors.size());
  // Over the survivors: the clients that went through every stage.
  double total_seconds = 0;
  uint64_t total_bytes = 0;
  uint32_t participants = 0;
  for (uint32_t id : survivors) {
    total_seconds += client_seconds[id];
    total_bytes += client_bytes[id];
    ++participants;
  }
  if (participants > 0) {
    result.client_mask_seconds = total_seconds / participants;
    result.bytes_per_client = total_bytes / participants;
  }
  if (!sum.ok()) return abort_with(sum.status());
  // The reference: the plain modular sum of the survivors' inputs.
  std::vector<uint64_t> expected(config.dimension, 0);
  for (uint32_t id : survivors) {
    for (uint64_t i = 0; i < config.dimension; ++i) {
      expected[i] = (expected[i] + inputs[id][i]) & value_mask;
    }
  }
  result.completed = true;
  result.correct = *sum == expected;
  return result;
}

}  // namespace fedmoe::bench
