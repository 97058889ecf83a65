// Writes the binary seeds of the fuzz corpora: safetensors files, model-directory files,
// encoded masked uploads and coordinator requests, in the formats as the code writes them
// today. Run after a format changes: `build/bin/fuzz_make_seeds tests/fuzz/corpus`. The text
// seeds (YAML configs, tokenizer.json) are kept by hand beside these.
#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "fedmoe/v1/admin.pb.h"
#include "fedmoe/v1/enrollment.pb.h"
#include "fedmoe/v1/federation.pb.h"
#include "model/checkpoint.h"
#include "model/init.h"
#include "model/safetensors.h"
#include "privacy/ring_encoder.h"
#include "privacy/secure_random.h"
#include "secure_agg/shared/packing.h"
#include "storage/read_file.h"
#include "tests/fuzz/fuzz_support.h"
#include "tests/fuzz/input_layout.h"
#include "tests/testing_tiny_model.h"

namespace {

namespace fs = std::filesystem;
namespace v1 = fedmoe::v1;

void Write(const fs::path& path, std::string_view bytes) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) fedmoe::fuzz::Violated(absl::StrCat("cannot write ", path.string()));
}

std::string Read(const fs::path& path) {
  absl::StatusOr<std::string> bytes = fedmoe::storage::ReadSmallFile(path);
  if (!bytes.ok()) fedmoe::fuzz::Violated(bytes.status().ToString());
  return *std::move(bytes);
}

void Check(const absl::Status& status) {
  if (!status.ok()) fedmoe::fuzz::Violated(status.ToString());
}

void SafetensorsSeeds(const fs::path& corpus) {
  fs::create_directories(corpus);
  const std::vector<float> values = {1.0f, -2.5f, 3.25f, 0.0f, 1e-3f, -7.0f};
  const std::vector<fedmoe::model::TensorToWrite> tensors = {
      {"a.weight", {2, 3}, values}, {"b.bias", {6}, values}, {"scalar", {}, {values.data(), 1}}};
  int written = 0;
  for (const fedmoe::model::DType dtype :
       {fedmoe::model::DType::kF32, fedmoe::model::DType::kF16, fedmoe::model::DType::kBF16}) {
    const fs::path path = corpus / absl::StrCat("tensors-", written++, ".safetensors");
    Check(fedmoe::model::WriteSafetensors(path, tensors, dtype, {{"format", "pt"}}));
  }
}

void CheckpointSeeds(const fs::path& corpus, const fs::path& scratch) {
  const fs::path directory = scratch / "checkpoint-seed";
  const fedmoe::model::ModelParameters model =
      fedmoe::model::InitializeModel(fedmoe::testing::TinyMoeConfig(), 11);
  Check(fedmoe::model::SaveModel(
      model, directory, {.max_shard_bytes = static_cast<uint64_t>(model.values().size()) * 2}));
  Write(corpus / "index.bin",
        std::string(1, '\0') + Read(directory / "model.safetensors.index.json"));
  Write(corpus / "config.bin", std::string(1, '\1') + Read(directory / "config.json"));
}

void RingSeeds(const fs::path& corpus) {
  int written = 0;
  // Dimension, ring bits, log2 γ and clip norm bytes, read as ring_decode_fuzz.cc reads them.
  for (const std::array<uint8_t, 4> parameters :
       {std::array<uint8_t, 4>{9, 16, 18, 0}, std::array<uint8_t, 4>{99, 32, 30, 16},
        std::array<uint8_t, 4>{255, 46, 47, 255}}) {
    std::array<uint8_t, fedmoe::fuzz::kRingHeaderBytes> header;
    std::copy(parameters.begin(), parameters.end(), header.begin());
    std::fill(header.begin() + 4, header.end(), static_cast<uint8_t>('a' + written));
    const auto [dimension, encoding] = fedmoe::fuzz::ReadRingHeader(header);
    absl::StatusOr<fedmoe::privacy::RingEncoder> encoder =
        fedmoe::privacy::RingEncoder::Create(dimension, encoding);
    Check(encoder.status());
    std::vector<float> update(dimension);
    for (size_t i = 0; i < dimension; ++i) update[i] = 0.01f * static_cast<float>(i % 17) - 0.05f;
    auto random = fedmoe::privacy::SecureRandom::FromSeed(std::string(32, 's'), "seed");
    Check(random.status());
    absl::StatusOr<std::vector<uint64_t>> encoded = encoder->Encode(update, *random);
    Check(encoded.status());
    std::string packed;
    Check(fedmoe::secure_agg::PackValues(*encoded, encoding.ring_bits, packed));
    std::string input(header.begin(), header.end());
    input += packed;
    Write(corpus / absl::StrCat("upload-", written++, ".bin"), input);
  }
}

using fedmoe::fuzz::RequestMethod;

// Identities as input_layout.h numbers them.
constexpr int kAdmin = fedmoe::fuzz::kAdminIdentity;
constexpr int kNoCertificate = fedmoe::fuzz::kNoCertificateIdentity;

void Request(const fs::path& corpus, RequestMethod method, int identity,
             const google::protobuf::Message& request) {
  const int number = static_cast<int>(method);
  std::string input = {static_cast<char>(number), static_cast<char>(identity)};
  input += request.SerializeAsString();
  Write(corpus / absl::StrCat(request.GetTypeName(), "-", number, "-", identity, ".bin"), input);
}

void CoordinatorSeeds(const fs::path& corpus) {
  v1::EnrollRequest enroll;
  enroll.set_token("fmt1.0123456789abcdef.secret");
  enroll.set_csr_der(std::string(64, '\x30'));
  enroll.set_client_version("1.0");
  Request(corpus, RequestMethod::kEnroll, kNoCertificate, enroll);
  v1::RenewCertificateRequest renew;
  renew.set_csr_der(std::string(64, '\x30'));
  renew.set_key_change_signature(std::string(70, '\x30'));
  Request(corpus, RequestMethod::kRenew, 1, renew);
  v1::CreateEnrollmentTokenRequest token;
  token.set_client_id("site-9");
  token.mutable_ttl()->set_seconds(3600);
  Request(corpus, RequestMethod::kCreateEnrollmentToken, kAdmin, token);
  Request(corpus, RequestMethod::kListEnrollmentTokens, kAdmin, v1::ListEnrollmentTokensRequest());
  v1::RevokeEnrollmentTokenRequest revoke_token;
  revoke_token.set_token_id("0123456789abcdef");
  Request(corpus, RequestMethod::kRevokeEnrollmentToken, kAdmin, revoke_token);
  v1::ListClientsRequest list_clients;
  list_clients.set_include_revoked(true);
  list_clients.mutable_page()->set_page_size(2);
  list_clients.mutable_page()->set_page_token("site-1");
  Request(corpus, RequestMethod::kListClients, kAdmin, list_clients);
  v1::RevokeClientRequest revoke_client;
  revoke_client.set_client_id("site-2");
  revoke_client.set_reason("fuzz");
  Request(corpus, RequestMethod::kRevokeClient, kAdmin, revoke_client);
  Request(corpus, RequestMethod::kRevokeClient, 1, revoke_client);
  Request(corpus, RequestMethod::kGetStatus, kAdmin, v1::GetStatusRequest());
  Request(corpus, RequestMethod::kGetStatus, kNoCertificate, v1::GetStatusRequest());
  v1::ListRoundsRequest rounds;
  rounds.mutable_page()->set_page_token("5");
  Request(corpus, RequestMethod::kListRounds, kAdmin, rounds);
  Request(corpus, RequestMethod::kGetPrivacyLedger, kAdmin, v1::GetPrivacyLedgerRequest());
  v1::AddAdminRequest add_admin;
  add_admin.set_name("second");
  add_admin.set_csr_der(std::string(64, '\x30'));
  Request(corpus, RequestMethod::kAddAdmin, kAdmin, add_admin);
  Request(corpus, RequestMethod::kListAdmins, kAdmin, v1::ListAdminsRequest());
  v1::RevokeAdminRequest revoke_admin;
  revoke_admin.set_name("operator");
  Request(corpus, RequestMethod::kRevokeAdmin, kAdmin, revoke_admin);
  for (int client = 1; client <= fedmoe::fuzz::kRequestClients; ++client) {
    v1::PollTaskRequest poll;
    poll.set_known_round_id(0);
    poll.mutable_max_wait()->set_nanos(1000);
    Request(corpus, RequestMethod::kPollTask, client, poll);
  }
  v1::AdvertiseKeysRequest advertise;
  advertise.set_round_id(1);
  advertise.set_cipher_public_key(std::string(65, '\x04'));
  advertise.set_mask_public_key(std::string(65, '\x04'));
  advertise.set_signature(std::string(70, '\x30'));
  Request(corpus, RequestMethod::kAdvertiseKeys, 1, advertise);
  v1::ShareKeysRequest share;
  share.set_round_id(1);
  v1::EncryptedShares* shares = share.add_shares();
  shares->set_peer_participant_id(2);
  shares->set_ciphertext(std::string(80, 'c'));
  Request(corpus, RequestMethod::kShareKeys, 1, share);
  v1::UnmaskRequest unmask;
  unmask.set_round_id(1);
  v1::RevealedShare* revealed = unmask.add_self_mask_shares();
  revealed->set_owner_participant_id(2);
  revealed->set_share(std::string(32, 's'));
  Request(corpus, RequestMethod::kUnmask, 1, unmask);
  Request(corpus, RequestMethod::kGetModelManifest, 2, v1::GetModelManifestRequest());
  v1::DownloadModelRequest download;
  download.set_file_name("model.safetensors");
  download.set_max_chunk_bytes(1000);
  Request(corpus, RequestMethod::kDownloadModel, 3, download);
  download.set_file_name("config.json");
  download.set_offset(10);
  Request(corpus, RequestMethod::kDownloadModel, 1, download);
  // A masked upload of two chunks, each behind its 2-byte length.
  std::string upload = {static_cast<char>(RequestMethod::kUploadMaskedInput), 1};
  for (uint64_t first : {uint64_t{0}, uint64_t{4}}) {
    v1::MaskedInputChunk chunk;
    chunk.set_round_id(1);
    chunk.set_first_value(first);
    chunk.set_value_count(4);
    chunk.set_total_values(8);
    chunk.set_packed_values(std::string(16, '\x01'));
    const std::string bytes = chunk.SerializeAsString();
    upload += {static_cast<char>(bytes.size() & 0xff), static_cast<char>(bytes.size() >> 8)};
    upload += bytes;
  }
  Write(corpus / "MaskedInputChunk-19-1.bin", upload);
  v1::GetRoundStatusRequest status;
  status.set_round_id(1);
  Request(corpus, RequestMethod::kGetRoundStatus, 2, status);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::fprintf(stderr, "usage: %s tests/fuzz/corpus\n", argv[0]);
    return argc == 2 ? 0 : 2;
  }
  const fs::path corpus = argv[1];
  SafetensorsSeeds(corpus / "safetensors");
  CheckpointSeeds(corpus / "checkpoint", fedmoe::fuzz::ScratchDirectory());
  RingSeeds(corpus / "ring_decode");
  CoordinatorSeeds(corpus / "coordinator_requests");
  std::printf("seeds written under %s\n", corpus.c_str());
  return 0;
}
