#include "client/secagg_wire.h"

namespace fedmoe::client {

secure_agg::RoundSetup RoundSetupOf(const v1::JoinRoundTask& task) {
  const v1::SecAggParameters& parameters = task.secagg();
  secure_agg::RoundSetup setup;
  setup.round_id = task.round_id();
  setup.session_id = parameters.session_id();
  setup.num_participants = parameters.num_participants();
  setup.threshold = parameters.threshold();
  setup.length = task.update_spec().layout().encoded_values();
  setup.bits = static_cast<int>(parameters.ring_bits());
  return setup;
}

v1::AdvertiseKeysRequest AdvertiseKeysRequestOf(uint64_t round_id,
                                                const secure_agg::AdvertisedKeys& keys) {
  v1::AdvertiseKeysRequest request;
  request.set_round_id(round_id);
  request.set_cipher_public_key(keys.cipher_public_key);
  request.set_mask_public_key(keys.mask_public_key);
  request.set_signature(keys.signature);
  return request;
}

std::vector<secure_agg::AdvertisedKeys> NeighbourKeysOf(const v1::ShareKeysTask& task) {
  std::vector<secure_agg::AdvertisedKeys> neighbours;
  neighbours.reserve(static_cast<size_t>(task.neighbor_keys_size()));
  for (const v1::AdvertisedKeys& keys : task.neighbor_keys()) {
    neighbours.push_back({keys.participant_id(), keys.cipher_public_key(), keys.mask_public_key(),
                          keys.signature()});
  }
  return neighbours;
}

v1::ShareKeysRequest ShareKeysRequestOf(uint64_t round_id,
                                        const std::vector<secure_agg::SealedShares>& sealed) {
  v1::ShareKeysRequest request;
  request.set_round_id(round_id);
  for (const secure_agg::SealedShares& bundle : sealed) {
    v1::EncryptedShares* out = request.add_shares();
    out->set_peer_participant_id(bundle.recipient);
    out->set_ciphertext(bundle.ciphertext);
  }
  return request;
}

std::vector<secure_agg::SealedShares> IncomingSharesOf(const v1::MaskedInputTask& task,
                                                       uint32_t participant) {
  std::vector<secure_agg::SealedShares> incoming;
  incoming.reserve(static_cast<size_t>(task.incoming_shares_size()));
  for (const v1::EncryptedShares& bundle : task.incoming_shares()) {
    incoming.push_back({bundle.peer_participant_id(), participant, bundle.ciphertext()});
  }
  return incoming;
}

secure_agg::UnmaskRequest UnmaskRequestOf(const v1::UnmaskTask& task) {
  secure_agg::UnmaskRequest request;
  request.alive.assign(task.alive_neighbors().begin(), task.alive_neighbors().end());
  request.dropped.assign(task.dropped_neighbors().begin(), task.dropped_neighbors().end());
  return request;
}

v1::UnmaskRequest UnmaskRequestOf(uint64_t round_id, const secure_agg::RevealedShares& revealed) {
  v1::UnmaskRequest request;
  request.set_round_id(round_id);
  for (const auto& [owner, share] : revealed.self_mask_shares) {
    v1::RevealedShare* out = request.add_self_mask_shares();
    out->set_owner_participant_id(owner);
    out->set_share(share);
  }
  for (const auto& [owner, share] : revealed.mask_key_shares) {
    v1::RevealedShare* out = request.add_mask_key_shares();
    out->set_owner_participant_id(owner);
    out->set_share(share);
  }
  return request;
}

}  // namespace fedmoe::client
