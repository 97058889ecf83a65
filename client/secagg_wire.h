// A client's SecAgg+ messages between their wire form (federation.proto) and the library's
// (secure_agg/shared/messages.h), in the direction a client needs them: tasks in, requests out.
// RoundParticipant uses them, and so does the round engine's unit test, whose clients call the
// engine in-process.
#ifndef FEDMOE_CLIENT_SECAGG_WIRE_H_
#define FEDMOE_CLIENT_SECAGG_WIRE_H_

#include <cstdint>
#include <vector>

#include "fedmoe/v1/federation.pb.h"
#include "secure_agg/shared/messages.h"

namespace fedmoe::client {

// The round as the client's SecAgg+ side sees it, from its JoinRoundTask.
secure_agg::RoundSetup RoundSetupOf(const v1::JoinRoundTask& task);

v1::AdvertiseKeysRequest AdvertiseKeysRequestOf(uint64_t round_id,
                                                const secure_agg::AdvertisedKeys& keys);

// The neighbours' advertised keys a ShareKeysTask relays.
std::vector<secure_agg::AdvertisedKeys> NeighbourKeysOf(const v1::ShareKeysTask& task);

v1::ShareKeysRequest ShareKeysRequestOf(uint64_t round_id,
                                        const std::vector<secure_agg::SealedShares>& sealed);

// The bundles sealed for `participant` that a MaskedInputTask carries.
std::vector<secure_agg::SealedShares> IncomingSharesOf(const v1::MaskedInputTask& task,
                                                       uint32_t participant);

secure_agg::UnmaskRequest UnmaskRequestOf(const v1::UnmaskTask& task);

v1::UnmaskRequest UnmaskRequestOf(uint64_t round_id, const secure_agg::RevealedShares& revealed);

}  // namespace fedmoe::client

#endif  // FEDMOE_CLIENT_SECAGG_WIRE_H_
