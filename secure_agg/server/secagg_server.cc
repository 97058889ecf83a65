#include "secure_agg/server/secagg_server.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace fedmoe::secure_agg {

absl::StatusOr<SecAggServer> SecAggServer::Create(RoundSetup setup, NeighborGraph graph) {
  if (absl::Status status = ValidateSetup(setup); !status.ok()) return status;
  if (graph.num_participants() != setup.num_participants) {
    return absl::InvalidArgumentError("the graph and the round disagree on the cohort size");
  }
  return SecAggServer(RoundContext{std::move(setup), std::move(graph)});
}

std::string_view SecAggServer::stage_name() const {
  return std::visit([](const auto& stage) { return stage.kName; }, stage_);
}

absl::Status SecAggServer::NotOpen(std::string_view wanted) const {
  return absl::FailedPreconditionError(absl::StrCat("the ", std::string(wanted),
                                                    " stage is not open; the ",
                                                    std::string(stage_name()), " stage is"));
}

template <typename Open>
absl::Status SecAggServer::Close() {
  Open* open = std::get_if<Open>(&stage_);
  if (open == nullptr) return NotOpen(Open::kName);
  auto next = std::move(*open).Close(round_);
  if (!next.ok()) return next.status();
  stage_ = std::move(*next);
  return absl::OkStatus();
}

absl::Status SecAggServer::ReceiveAdvertisedKeys(const AdvertisedKeys& keys) {
  auto* open = std::get_if<AdvertiseKeysStage>(&stage_);
  return open != nullptr ? open->Receive(round_, keys) : NotOpen(AdvertiseKeysStage::kName);
}

absl::Status SecAggServer::CloseAdvertiseKeys() { return Close<AdvertiseKeysStage>(); }

std::vector<AdvertisedKeys> SecAggServer::KeysFor(uint32_t participant) const {
  const auto* open = std::get_if<ShareKeysStage>(&stage_);
  return open != nullptr ? open->KeysFor(round_, participant) : std::vector<AdvertisedKeys>{};
}

absl::Status SecAggServer::ReceiveShares(uint32_t sender, const std::vector<SealedShares>& shares) {
  auto* open = std::get_if<ShareKeysStage>(&stage_);
  return open != nullptr ? open->Receive(round_, sender, shares) : NotOpen(ShareKeysStage::kName);
}

absl::Status SecAggServer::CloseShareKeys() { return Close<ShareKeysStage>(); }

std::vector<SealedShares> SecAggServer::SharesFor(uint32_t participant) const {
  const auto* open = std::get_if<MaskedInputStage>(&stage_);
  return open != nullptr ? open->SharesFor(participant) : std::vector<SealedShares>{};
}

absl::Status SecAggServer::ReceiveMaskedChunk(uint32_t participant, uint64_t first_value,
                                              std::span<const uint64_t> values) {
  auto* open = std::get_if<MaskedInputStage>(&stage_);
  return open != nullptr ? open->ReceiveChunk(round_, participant, first_value, values)
                         : NotOpen(MaskedInputStage::kName);
}

absl::Status SecAggServer::CloseMaskedInput() { return Close<MaskedInputStage>(); }

UnmaskRequest SecAggServer::UnmaskRequestFor(uint32_t participant) const {
  const auto* open = std::get_if<UnmaskStage>(&stage_);
  return open != nullptr ? open->RequestFor(round_, participant) : UnmaskRequest{};
}

absl::Status SecAggServer::ReceiveRevealedShares(const RevealedShares& shares) {
  auto* open = std::get_if<UnmaskStage>(&stage_);
  return open != nullptr ? open->Receive(round_, shares) : NotOpen(UnmaskStage::kName);
}

absl::StatusOr<std::vector<uint64_t>> SecAggServer::Finish() {
  auto* open = std::get_if<UnmaskStage>(&stage_);
  if (open == nullptr) return NotOpen(UnmaskStage::kName);
  absl::StatusOr<FinishedStage> finished = std::move(*open).Finish(round_);
  if (!finished.ok()) return finished.status();
  std::vector<uint64_t> sum = finished->TakeSum();
  stage_ = std::move(*finished);
  return sum;
}

const std::set<uint32_t>& SecAggServer::survivors() const {
  static const std::set<uint32_t>* const kNone = new std::set<uint32_t>();
  return std::visit(
      [](const auto& stage) -> const std::set<uint32_t>& {
        if constexpr (requires { stage.survivors(); }) {
          return stage.survivors();
        } else {
          return *kNone;
        }
      },
      stage_);
}

uint64_t SecAggServer::ValuesReceived(uint32_t participant) const {
  if (const auto* open = std::get_if<MaskedInputStage>(&stage_); open != nullptr) {
    return open->ValuesReceived(participant);
  }
  // Past masked-input a participant's input is in the sum whole or not at all.
  return survivors().contains(participant) ? round_.setup.length : 0;
}

size_t SecAggServer::StateBytes() const {
  size_t bytes = 0;
  for (uint32_t id = 1; id <= round_.graph.num_participants(); ++id) {
    bytes += round_.graph.Neighbors(id).capacity() * sizeof(uint32_t);
  }
  return bytes + std::visit([](const auto& stage) { return stage.Bytes(); }, stage_);
}

}  // namespace fedmoe::secure_agg
