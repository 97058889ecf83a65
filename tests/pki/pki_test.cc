// The federation PKI, checked against the openssl command line as an independent reference
// where one exists (fingerprints, chain verification), and against each refusal it promises.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_replace.h"
#include "pki/certificate.h"
#include "pki/certificate_authority.h"
#include "pki/key_pair_files.h"
#include "pki/private_key.h"
#include "pki/spiffe_id.h"
#include "pki/trust_bundle.h"
#include "tests/testing_temp_dir.h"

namespace fedmoe::pki {
namespace {

using ::testing::HasSubstr;

using ::fedmoe::testing::TempDir;

// Runs a shell command and returns its standard output.
std::string RunCommand(const std::string& command) {
  std::string output;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return output;
  char buffer[512];
  while (size_t n = std::fread(buffer, 1, sizeof(buffer), pipe)) output.append(buffer, n);
  ::pclose(pipe);
  return output;
}

mode_t FileMode(const std::filesystem::path& path) {
  struct stat info {};
  ::stat(path.c_str(), &info);
  return info.st_mode & 0777;
}

CertificateAuthority MakeCa(const std::string& federation = "acme-fed") {
  auto ca = CertificateAuthority::Create(federation, absl::Hours(24 * 365));
  EXPECT_TRUE(ca.ok()) << ca.status();
  return std::move(*ca);
}

Certificate IssueClient(const CertificateAuthority& ca, const std::string& name,
                        absl::Duration validity = absl::Hours(24 * 30),
                        absl::Time now = absl::Now()) {
  auto key = PrivateKey::GenerateP256();
  EXPECT_TRUE(key.ok());
  auto csr = MakeCsr(*key, name);
  EXPECT_TRUE(csr.ok()) << csr.status();
  auto certificate =
      ca.IssueFromCsr(*csr, SpiffeId{ca.federation(), IdentityKind::kClient, name}, validity, now);
  EXPECT_TRUE(certificate.ok()) << certificate.status();
  return *certificate;
}

std::string PemOfKey(EVP_PKEY* key) {
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr);
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio, &data);
  std::string pem(data, static_cast<size_t>(size));
  BIO_free(bio);
  return pem;
}

TEST(PrivateKeyTest, PemRoundTripAndSignatures) {
  auto key = PrivateKey::GenerateP256();
  ASSERT_TRUE(key.ok());
  auto pem = key->ToPem();
  ASSERT_TRUE(pem.ok());
  EXPECT_THAT(*pem, HasSubstr("BEGIN PRIVATE KEY"));
  auto reloaded = PrivateKey::FromPem(*pem);
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  EXPECT_EQ(*reloaded->PublicKeyDer(), *key->PublicKeyDer());

  auto signature = key->Sign("round 7 keys");
  ASSERT_TRUE(signature.ok());
  EXPECT_TRUE(VerifySignature(*key->PublicKeyDer(), "round 7 keys", *signature).ok());
  EXPECT_EQ(VerifySignature(*key->PublicKeyDer(), "round 8 keys", *signature).code(),
            absl::StatusCode::kUnauthenticated);
  auto other = PrivateKey::GenerateP256();
  EXPECT_EQ(VerifySignature(*other->PublicKeyDer(), "round 7 keys", *signature).code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(VerifySignature("not a key", "round 7 keys", *signature).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PrivateKeyTest, OnlyP256KeysAreAccepted) {
  EVP_PKEY* rsa = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048});
  auto from_rsa = PrivateKey::FromPem(PemOfKey(rsa));
  EVP_PKEY_free(rsa);
  EXPECT_EQ(from_rsa.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(from_rsa.status().message()), HasSubstr("not an EC key"));

  EVP_PKEY* p384 = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-384");
  auto from_p384 = PrivateKey::FromPem(PemOfKey(p384));
  EVP_PKEY_free(p384);
  EXPECT_THAT(std::string(from_p384.status().message()), HasSubstr("secp384r1"));

  EXPECT_EQ(PrivateKey::FromPem("-----BEGIN PRIVATE KEY-----\ngarbage\n").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PrivateKeyTest, KeyFilesAreWrittenAndReadOnlyAs0600) {
  TempDir dir;
  auto key = PrivateKey::GenerateP256();
  const auto path = dir.path() / "client.key";
  ASSERT_TRUE(key->WriteFile(path).ok());
  EXPECT_EQ(FileMode(path), 0600);
  auto reloaded = PrivateKey::ReadFile(path);
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  EXPECT_EQ(*reloaded->PublicKeyDer(), *key->PublicKeyDer());

  // No temporary file is left beside it.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()),
                          std::filesystem::directory_iterator()),
            1);

  ::chmod(path.c_str(), 0644);
  auto exposed = PrivateKey::ReadFile(path);
  EXPECT_EQ(exposed.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(exposed.status().message()), HasSubstr("0600"));
}

TEST(SpiffeIdTest, FormatsAndParses) {
  const SpiffeId id{"acme-fed", IdentityKind::kClient, "bank.eu-1"};
  EXPECT_EQ(id.ToUri(), "spiffe://acme-fed/client/bank.eu-1");
  auto parsed = SpiffeId::Parse(id.ToUri());
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(*parsed, id);
  EXPECT_EQ(SpiffeId::Parse("spiffe://acme-fed/admin/ops")->kind, IdentityKind::kAdmin);

  for (const char* bad : {"https://acme/client/x", "spiffe://acme/client", "spiffe://acme/robot/x",
                          "spiffe://acme/client/Upper", "spiffe://acme/client/x/y",
                          "spiffe:///client/x", "spiffe://acme/client/-lead"}) {
    EXPECT_EQ(SpiffeId::Parse(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_TRUE(ValidateName("client id", std::string(63, 'a')).ok());
  EXPECT_FALSE(ValidateName("client id", std::string(64, 'a')).ok());
}

TEST(CertificateAuthorityTest, CaCertificateMatchesOpensslsView) {
  TempDir dir;
  const CertificateAuthority ca = MakeCa();
  EXPECT_TRUE(ca.certificate().IsCa());
  const auto path = dir.path() / "ca.pem";
  ASSERT_TRUE(ca.certificate().WriteFile(path).ok());

  // openssl prints "sha256 Fingerprint=AB:CD:...".
  std::string reference =
      RunCommand("openssl x509 -noout -fingerprint -sha256 -in " + path.string());
  reference = reference.substr(reference.find('=') + 1);
  absl::StripAsciiWhitespace(&reference);
  auto normalized = NormalizeFingerprint(reference);
  ASSERT_TRUE(normalized.ok()) << normalized.status();
  EXPECT_EQ(*normalized, ca.certificate().Sha256Fingerprint());

  const std::string text = RunCommand("openssl x509 -noout -text -in " + path.string());
  EXPECT_THAT(text, HasSubstr("CA:TRUE, pathlen:0"));
  EXPECT_THAT(text, HasSubstr("Certificate Sign"));
  EXPECT_THAT(text, HasSubstr("ASN1 OID: prime256v1"));
}

// During a CA rotation a member trusts two CAs: leaves of either verify, the issuer comes
// first, and the digest that tells members apart changes with the order.
TEST(TrustBundleTest, AcceptsLeavesOfEitherCaAndItsDigestFollowsTheOrder) {
  auto old_ca = CertificateAuthority::Create("acme-fed", absl::Hours(24));
  auto new_ca = CertificateAuthority::Create("acme-fed", absl::Hours(24));
  auto stranger = CertificateAuthority::Create("acme-fed", absl::Hours(24));
  ASSERT_TRUE(old_ca.ok() && new_ca.ok() && stranger.ok());
  auto both = TrustBundle::Create({new_ca->certificate(), old_ca->certificate()}, "acme-fed");
  auto reversed = TrustBundle::Create({old_ca->certificate(), new_ca->certificate()}, "acme-fed");
  ASSERT_TRUE(both.ok() && reversed.ok());
  EXPECT_EQ(both->issuer().Sha256Fingerprint(), new_ca->certificate().Sha256Fingerprint());
  EXPECT_NE(both->Digest(), reversed->Digest());
  EXPECT_EQ(both->Digest().size(), 64u);
  EXPECT_TRUE(both->Contains(old_ca->certificate().Sha256Fingerprint()));
  EXPECT_FALSE(both->Contains(stranger->certificate().Sha256Fingerprint()));

  for (const CertificateAuthority* ca : {&*old_ca, &*new_ca, &*stranger}) {
    auto key = PrivateKey::GenerateP256();
    auto leaf = ca->IssueFromCsr(*MakeCsr(*key, "bank"),
                                 {"acme-fed", IdentityKind::kClient, "bank"}, absl::Hours(1));
    ASSERT_TRUE(leaf.ok());
    EXPECT_EQ(both->Verify(*leaf, Purpose::kClient).ok(), ca != &*stranger);
  }

  // ca.pem round trip; a file from before rotations (one CA) reads as a bundle of one.
  TempDir dir;
  ASSERT_TRUE(both->WriteFile(dir.path() / "ca.pem").ok());
  auto read = TrustBundle::ReadFile(dir.path() / "ca.pem", "acme-fed");
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->Digest(), both->Digest());
  ASSERT_TRUE(old_ca->certificate().WriteFile(dir.path() / "single.pem").ok());
  EXPECT_EQ(TrustBundle::ReadFile(dir.path() / "single.pem", "acme-fed")->Fingerprints().size(),
            1u);
  EXPECT_THAT(TrustBundle::ReadFile(dir.path() / "ca.pem", "globex").status().message(),
              HasSubstr("not 'globex'"));
  EXPECT_EQ(TrustBundle::ReadFile(dir.path() / "missing.pem", "acme-fed").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_THAT(TrustBundle::Create({}, "acme-fed").status().message(), HasSubstr("at least one"));
}

TEST(CertificateAuthorityTest, ClientCertificateVerifiesWithOpensslAndVerifyPeer) {
  TempDir dir;
  const CertificateAuthority ca = MakeCa();
  const Certificate client = IssueClient(ca, "bank-1");
  ASSERT_TRUE(ca.certificate().WriteFile(dir.path() / "ca.pem").ok());
  ASSERT_TRUE(client.WriteFile(dir.path() / "client.pem").ok());
  EXPECT_THAT(RunCommand("openssl verify -x509_strict -purpose sslclient -CAfile " +
                         (dir.path() / "ca.pem").string() + " " +
                         (dir.path() / "client.pem").string() + " 2>&1"),
              HasSubstr(": OK"));

  auto identity = VerifyPeer(client, ca.certificate(), "acme-fed", Purpose::kClient);
  ASSERT_TRUE(identity.ok()) << identity.status();
  EXPECT_EQ(identity->ToUri(), "spiffe://acme-fed/client/bank-1");
  EXPECT_FALSE(client.IsCa());
  EXPECT_EQ(client.SerialHex().size(), 32U);
  EXPECT_NE(client.SerialHex(), IssueClient(ca, "bank-1").SerialHex());
}

TEST(CertificateAuthorityTest, VerifyPeerRefusesEachWayACertificateCanBeWrong) {
  const CertificateAuthority ca = MakeCa();
  const absl::Time now = absl::Now();
  const Certificate client = IssueClient(ca, "bank-1", absl::Hours(24), now);

  auto message = [](const absl::StatusOr<SpiffeId>& result) {
    EXPECT_EQ(result.status().code(), absl::StatusCode::kUnauthenticated);
    return std::string(result.status().message());
  };
  EXPECT_THAT(message(VerifyPeer(client, ca.certificate(), "acme-fed", Purpose::kClient,
                                 now + absl::Hours(25))),
              HasSubstr("expired"));
  EXPECT_THAT(message(VerifyPeer(client, ca.certificate(), "acme-fed", Purpose::kClient,
                                 now - absl::Hours(1))),
              HasSubstr("not yet valid"));
  EXPECT_THAT(message(VerifyPeer(client, ca.certificate(), "acme-fed", Purpose::kServer)),
              HasSubstr("unsuitable certificate purpose"));

  const CertificateAuthority other = MakeCa("other-fed");
  EXPECT_THAT(message(VerifyPeer(client, other.certificate(), "acme-fed", Purpose::kClient)),
              HasSubstr("local issuer"));
  const Certificate foreign = IssueClient(other, "bank-1");
  EXPECT_THAT(message(VerifyPeer(foreign, other.certificate(), "acme-fed", Purpose::kClient)),
              HasSubstr("names federation 'other-fed'"));
}

TEST(CertificateAuthorityTest, CsrsAreCheckedBeforeSigning) {
  const CertificateAuthority ca = MakeCa();
  const SpiffeId id{"acme-fed", IdentityKind::kClient, "bank-1"};
  auto key = PrivateKey::GenerateP256();
  auto csr = MakeCsr(*key, "bank-1");
  ASSERT_TRUE(csr.ok());

  std::string tampered = *csr;
  tampered[tampered.size() - 3] ^= 0x01;  // Inside the signature.
  EXPECT_THAT(std::string(ca.IssueFromCsr(tampered, id, absl::Hours(1)).status().message()),
              HasSubstr("does not verify"));
  EXPECT_THAT(std::string(ca.IssueFromCsr("garbage", id, absl::Hours(1)).status().message()),
              HasSubstr("malformed CSR"));
  EXPECT_THAT(
      std::string(
          ca.IssueFromCsr(csr->substr(0, csr->size() - 1), id, absl::Hours(1)).status().message()),
      HasSubstr("malformed CSR"));

  // An RSA key in the request is refused.
  EVP_PKEY* rsa = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048});
  X509_REQ* request = X509_REQ_new();
  X509_REQ_set_pubkey(request, rsa);
  X509_REQ_sign(request, rsa, EVP_sha256());
  unsigned char* der = nullptr;
  const int length = i2d_X509_REQ(request, &der);
  const std::string rsa_csr(reinterpret_cast<const char*>(der), static_cast<size_t>(length));
  OPENSSL_free(der);
  X509_REQ_free(request);
  EVP_PKEY_free(rsa);
  EXPECT_THAT(std::string(ca.IssueFromCsr(rsa_csr, id, absl::Hours(1)).status().message()),
              HasSubstr("not ECDSA P-256"));

  // Identities of another federation, and server identities, are not issued from a CSR.
  EXPECT_FALSE(
      ca.IssueFromCsr(*csr, {"other-fed", IdentityKind::kClient, "bank-1"}, absl::Hours(1)).ok());
  EXPECT_FALSE(
      ca.IssueFromCsr(*csr, {"acme-fed", IdentityKind::kServer, "bank-1"}, absl::Hours(1)).ok());
}

TEST(CertificateAuthorityTest, LifetimesAreBounded) {
  const CertificateAuthority ca = MakeCa();  // Valid for 365 days.
  auto key = PrivateKey::GenerateP256();
  auto csr = MakeCsr(*key, "bank-1");
  const SpiffeId id{"acme-fed", IdentityKind::kClient, "bank-1"};
  EXPECT_EQ(ca.IssueFromCsr(*csr, id, absl::Hours(24 * 399)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ca.IssueFromCsr(*csr, id, -absl::Hours(1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  // 398 days are allowed, but the certificate ends when the CA does.
  auto long_lived = ca.IssueFromCsr(*csr, id, absl::Hours(24 * 398));
  ASSERT_TRUE(long_lived.ok());
  EXPECT_EQ(long_lived->NotAfter(), ca.certificate().NotAfter());

  const absl::Time now = absl::Now();
  auto day = ca.IssueFromCsr(*csr, id, absl::Hours(24), now);
  EXPECT_LE(absl::AbsDuration(day->NotAfter() - (now + absl::Hours(24))), absl::Seconds(1));
  EXPECT_LE(absl::AbsDuration(day->NotBefore() - (now - kClockSkewAllowance)), absl::Seconds(1));
}

TEST(CertificateAuthorityTest, ServerCertificateCoversItsHosts) {
  const CertificateAuthority ca = MakeCa();
  auto key = PrivateKey::GenerateP256();
  auto server =
      ca.IssueServer(*key, {"localhost", "127.0.0.1", "::1", "coord.example.org"}, absl::Hours(24));
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(X509_check_host(server->get(), "localhost", 0, 0, nullptr), 1);
  EXPECT_EQ(X509_check_host(server->get(), "coord.example.org", 0, 0, nullptr), 1);
  EXPECT_EQ(X509_check_ip_asc(server->get(), "127.0.0.1", 0), 1);
  EXPECT_EQ(X509_check_ip_asc(server->get(), "::1", 0), 1);
  EXPECT_NE(X509_check_host(server->get(), "evil.example.org", 0, 0, nullptr), 1);
  auto identity = VerifyPeer(*server, ca.certificate(), "acme-fed", Purpose::kServer);
  ASSERT_TRUE(identity.ok()) << identity.status();
  EXPECT_EQ(identity->kind, IdentityKind::kServer);
  EXPECT_FALSE(VerifyPeer(*server, ca.certificate(), "acme-fed", Purpose::kClient).ok());
  EXPECT_FALSE(ca.IssueServer(*key, {}, absl::Hours(24)).ok());
}

TEST(CertificateAuthorityTest, LoadChecksTheKeyAndRecoversTheFederation) {
  TempDir dir;
  const CertificateAuthority ca = MakeCa();
  ASSERT_TRUE(ca.key().WriteFile(dir.path() / "ca.key").ok());
  ASSERT_TRUE(ca.certificate().WriteFile(dir.path() / "ca.pem").ok());
  auto loaded = CertificateAuthority::Load(*Certificate::ReadFile(dir.path() / "ca.pem"),
                                           *PrivateKey::ReadFile(dir.path() / "ca.key"));
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->federation(), "acme-fed");
  const Certificate issued = IssueClient(*loaded, "bank-2");
  EXPECT_TRUE(VerifyPeer(issued, ca.certificate(), "acme-fed", Purpose::kClient).ok());

  auto wrong_key = CertificateAuthority::Load(ca.certificate(), *PrivateKey::GenerateP256());
  EXPECT_THAT(std::string(wrong_key.status().message()), HasSubstr("does not match"));
  auto not_ca = CertificateAuthority::Load(issued, *PrivateKey::GenerateP256());
  EXPECT_THAT(std::string(not_ca.status().message()), HasSubstr("not a CA"));
}

TEST(CertificateTest, ParsingRefusesGarbage) {
  EXPECT_FALSE(Certificate::FromPem("not pem").ok());
  EXPECT_FALSE(Certificate::FromDer("not der").ok());
  const CertificateAuthority ca = MakeCa();
  const std::string der = ca.certificate().ToDer();
  EXPECT_FALSE(Certificate::FromDer(der.substr(0, der.size() - 1)).ok());
  EXPECT_FALSE(Certificate::FromDer(der + "x").ok()) << "trailing bytes are refused";
  auto bundle =
      Certificate::BundleFromPem(ca.certificate().ToPem() + IssueClient(ca, "bank-1").ToPem());
  ASSERT_TRUE(bundle.ok());
  EXPECT_EQ(bundle->size(), 2U);
  EXPECT_FALSE(Certificate::BundleFromPem("").ok());
}

TEST(FingerprintTest, NormalizesWhatOperatorsType) {
  const std::string lower(64, 'a');
  std::string with_colons;
  for (size_t i = 0; i < 32; ++i) with_colons += i == 0 ? "AA" : ":AA";
  EXPECT_EQ(*NormalizeFingerprint(with_colons), lower);
  EXPECT_EQ(*NormalizeFingerprint(lower), lower);
  EXPECT_FALSE(NormalizeFingerprint(lower.substr(1)).ok());
  EXPECT_FALSE(NormalizeFingerprint(std::string(64, 'g')).ok());
  EXPECT_TRUE(FingerprintsEqual(lower, lower));
  EXPECT_FALSE(FingerprintsEqual(lower, std::string(63, 'a') + "b"));
  EXPECT_FALSE(FingerprintsEqual(lower, lower.substr(1)));
}

}  // namespace
}  // namespace fedmoe::pki

namespace fedmoe::pki {
namespace {

TEST(KeyPairFilesTest, AnInterruptedSwapIsFinishedOrDiscardedNeverMismatched) {
  fedmoe::testing::TempDir dir;
  auto ca = CertificateAuthority::Create("acme", absl::Hours(24));
  ASSERT_TRUE(ca.ok());
  auto issue = [&](const PrivateKey& key) {
    return ca->IssueServer(key, {"localhost", "10.1.2.3", "::1"}, absl::Hours(1));
  };
  const auto key_path = dir.path() / "server.key";
  const auto certificate_path = dir.path() / "server.pem";
  auto old_key = PrivateKey::GenerateP256();
  auto old_certificate = issue(*old_key);
  ASSERT_TRUE(ReplaceKeyPair(*old_key, *old_certificate, key_path, certificate_path).ok());
  EXPECT_EQ(old_certificate->ServerHosts(),
            (std::vector<std::string>{"localhost", "10.1.2.3", "::1"}));

  // A crash after both new files were written and the key renamed: the swap completes.
  auto new_key = PrivateKey::GenerateP256();
  auto new_certificate = issue(*new_key);
  ASSERT_TRUE(new_key->WriteFile(key_path).ok());
  ASSERT_TRUE(new_certificate->WriteFile(dir.path() / "server.pem.next").ok());
  ASSERT_TRUE(CompleteKeyPairSwap(key_path, certificate_path).ok());
  auto certificate = Certificate::ReadFile(certificate_path);
  auto key = PrivateKey::ReadFile(key_path);
  ASSERT_TRUE(certificate.ok() && key.ok());
  EXPECT_EQ(certificate->PublicKeyDer(), *key->PublicKeyDer());
  EXPECT_FALSE(std::filesystem::exists(dir.path() / "server.pem.next"));

  // A crash after only the new key was written: it is discarded, the old pair stays.
  auto stray = PrivateKey::GenerateP256();
  ASSERT_TRUE(stray->WriteFile(dir.path() / "server.key.next").ok());
  ASSERT_TRUE(CompleteKeyPairSwap(key_path, certificate_path).ok());
  EXPECT_FALSE(std::filesystem::exists(dir.path() / "server.key.next"));
  key = PrivateKey::ReadFile(key_path);
  ASSERT_TRUE(key.ok());
  EXPECT_EQ(certificate->PublicKeyDer(), *key->PublicKeyDer());
}

}  // namespace
}  // namespace fedmoe::pki
