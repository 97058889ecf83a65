#include "pki/certificate_authority.h"

#include <arpa/inet.h>
#include <openssl/rand.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace fedmoe::pki {
namespace {

using internal::Asn1IntegerPtr;
using internal::BignumPtr;
using internal::EvpPkeyPtr;
using internal::OpenSslError;
using internal::X509ExtensionPtr;
using internal::X509Ptr;
using internal::X509ReqPtr;

absl::Status AddExtension(X509* certificate, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX context;
  X509V3_set_ctx(&context, issuer, certificate, nullptr, nullptr, 0);
  X509ExtensionPtr extension(X509V3_EXT_nconf_nid(nullptr, &context, nid, value.c_str()));
  if (extension == nullptr || X509_add_ext(certificate, extension.get(), -1) != 1) {
    return OpenSslError(absl::StatusCode::kInternal,
                        absl::StrCat("certificate extension ", OBJ_nid2sn(nid), "=", value));
  }
  return absl::OkStatus();
}

// 127 random bits: positive, and unpredictable so that serials reveal nothing and never clash.
absl::Status SetRandomSerial(X509* certificate) {
  unsigned char bytes[16];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "RAND_bytes for serial");
  }
  bytes[0] &= 0x7f;
  bytes[0] |= 0x40;  // Keeps the encoding a fixed 16 bytes.
  BignumPtr number(BN_bin2bn(bytes, sizeof(bytes), nullptr));
  Asn1IntegerPtr serial(BN_to_ASN1_INTEGER(number.get(), nullptr));
  if (serial == nullptr || X509_set_serialNumber(certificate, serial.get()) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "certificate serial");
  }
  return absl::OkStatus();
}

absl::Status SetName(X509_NAME* name, const std::string& organization,
                     const std::string& common_name) {
  const auto* o = reinterpret_cast<const unsigned char*>(organization.c_str());
  const auto* cn = reinterpret_cast<const unsigned char*>(common_name.c_str());
  if (X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, o, -1, -1, 0) != 1 ||
      X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, cn, -1, -1, 0) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "certificate name");
  }
  return absl::OkStatus();
}

absl::Status SetValidity(X509* certificate, absl::Time not_before, absl::Time not_after) {
  if (ASN1_TIME_set(X509_getm_notBefore(certificate), absl::ToTimeT(not_before)) == nullptr ||
      ASN1_TIME_set(X509_getm_notAfter(certificate), absl::ToTimeT(not_after)) == nullptr) {
    return OpenSslError(absl::StatusCode::kInternal, "certificate validity");
  }
  return absl::OkStatus();
}

absl::Status Sign(X509* certificate, const PrivateKey& key) {
  if (X509_sign(certificate, key.get(), EVP_sha256()) <= 0) {
    return OpenSslError(absl::StatusCode::kInternal, "certificate signature");
  }
  return absl::OkStatus();
}

std::string SanEntry(const std::string& host) {
  unsigned char address[16];
  const bool is_ip = inet_pton(AF_INET, host.c_str(), address) == 1 ||
                     inet_pton(AF_INET6, host.c_str(), address) == 1;
  return absl::StrCat(is_ip ? "IP:" : "DNS:", host);
}

}  // namespace

absl::StatusOr<std::string> MakeCsr(const PrivateKey& key, std::string_view common_name) {
  X509ReqPtr request(X509_REQ_new());
  if (request == nullptr || X509_REQ_set_version(request.get(), 0) != 1 ||
      X509_REQ_set_pubkey(request.get(), key.get()) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "CSR setup");
  }
  const std::string cn(common_name);
  if (X509_NAME_add_entry_by_txt(X509_REQ_get_subject_name(request.get()), "CN", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1,
                                 0) != 1 ||
      X509_REQ_sign(request.get(), key.get(), EVP_sha256()) <= 0) {
    return OpenSslError(absl::StatusCode::kInternal, "CSR signature");
  }
  unsigned char* der = nullptr;
  const int length = i2d_X509_REQ(request.get(), &der);
  if (length <= 0) return OpenSslError(absl::StatusCode::kInternal, "CSR encoding");
  std::string out(reinterpret_cast<const char*>(der), static_cast<size_t>(length));
  OPENSSL_free(der);
  return out;
}

absl::StatusOr<CertificateAuthority> CertificateAuthority::Create(const std::string& federation,
                                                                  absl::Duration validity,
                                                                  absl::Time now) {
  if (absl::Status status = ValidateName("federation", federation); !status.ok()) return status;
  if (validity <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("CA validity must be positive");
  }
  absl::StatusOr<PrivateKey> key = PrivateKey::GenerateP256();
  if (!key.ok()) return key.status();
  X509Ptr certificate(X509_new());
  X509* cert = certificate.get();
  if (cert == nullptr || X509_set_version(cert, X509_VERSION_3) != 1 ||
      X509_set_pubkey(cert, key->get()) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "CA certificate setup");
  }
  const std::string common_name = absl::StrCat("fedmoe federation CA ", federation);
  absl::Status status = SetRandomSerial(cert);
  if (status.ok()) status = SetName(X509_get_subject_name(cert), federation, common_name);
  if (status.ok()) status = SetName(X509_get_issuer_name(cert), federation, common_name);
  if (status.ok()) status = SetValidity(cert, now - kClockSkewAllowance, now + validity);
  if (status.ok()) {
    status = AddExtension(cert, cert, NID_basic_constraints, "critical,CA:TRUE,pathlen:0");
  }
  if (status.ok()) status = AddExtension(cert, cert, NID_key_usage, "critical,keyCertSign,cRLSign");
  if (status.ok()) status = AddExtension(cert, cert, NID_subject_key_identifier, "hash");
  if (status.ok()) {
    status =
        AddExtension(cert, cert, NID_subject_alt_name, absl::StrCat("URI:spiffe://", federation));
  }
  if (status.ok()) status = Sign(cert, *key);
  if (!status.ok()) return status;
  return CertificateAuthority(Certificate::Adopt(std::move(certificate)), std::move(*key),
                              federation);
}

absl::StatusOr<CertificateAuthority> CertificateAuthority::Load(Certificate certificate,
                                                                PrivateKey key) {
  if (!certificate.IsCa()) {
    return absl::InvalidArgumentError("the CA certificate is not a CA certificate");
  }
  if (X509_check_private_key(certificate.get(), key.get()) != 1) {
    return OpenSslError(absl::StatusCode::kInvalidArgument,
                        "the CA key does not match the CA certificate");
  }
  absl::StatusOr<std::string> federation = CaFederation(certificate);
  if (!federation.ok()) return federation.status();
  return CertificateAuthority(std::move(certificate), std::move(key), std::move(*federation));
}

absl::StatusOr<Certificate> CertificateAuthority::IssueFromCsr(const std::string& csr_der,
                                                               const SpiffeId& identity,
                                                               absl::Duration validity,
                                                               absl::Time now) const {
  if (identity.kind == IdentityKind::kServer) {
    return absl::InvalidArgumentError("server certificates are issued with IssueServer");
  }
  const auto* cursor = reinterpret_cast<const unsigned char*>(csr_der.data());
  X509ReqPtr request(d2i_X509_REQ(nullptr, &cursor, static_cast<long>(csr_der.size())));
  if (request == nullptr ||
      cursor != reinterpret_cast<const unsigned char*>(csr_der.data()) + csr_der.size()) {
    return OpenSslError(absl::StatusCode::kInvalidArgument, "malformed CSR (expected DER PKCS#10)");
  }
  EVP_PKEY* subject_key = X509_REQ_get0_pubkey(request.get());
  if (subject_key == nullptr) {
    return OpenSslError(absl::StatusCode::kInvalidArgument, "CSR has no usable public key");
  }
  if (absl::Status status = internal::RequireP256(subject_key); !status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("CSR key is not ECDSA P-256: ", status.message()));
  }
  if (X509_REQ_verify(request.get(), subject_key) != 1) {
    return OpenSslError(absl::StatusCode::kInvalidArgument,
                        "CSR signature does not verify against its own key");
  }
  return Issue(subject_key, identity, {}, validity, now);
}

absl::StatusOr<Certificate> CertificateAuthority::IssueServer(const PrivateKey& key,
                                                              const std::vector<std::string>& hosts,
                                                              absl::Duration validity,
                                                              absl::Time now) const {
  if (hosts.empty()) {
    return absl::InvalidArgumentError("a server certificate needs at least one host name or IP");
  }
  std::vector<std::string> sans;
  sans.reserve(hosts.size());
  for (const std::string& host : hosts) sans.push_back(SanEntry(host));
  return Issue(key.get(), SpiffeId{federation_, IdentityKind::kServer, "coordinator"}, sans,
               validity, now);
}

absl::StatusOr<Certificate> CertificateAuthority::Issue(EVP_PKEY* subject_key,
                                                        const SpiffeId& identity,
                                                        const std::vector<std::string>& extra_sans,
                                                        absl::Duration validity,
                                                        absl::Time now) const {
  if (identity.federation != federation_) {
    return absl::InvalidArgumentError(
        absl::StrCat("identity ", identity.ToUri(), " is not of federation ", federation_));
  }
  if (absl::Status status = ValidateName("name", identity.name); !status.ok()) return status;
  if (validity <= absl::ZeroDuration() || validity > kMaxLeafValidity) {
    return absl::InvalidArgumentError(absl::StrCat("certificate validity must be in (0, ",
                                                   kMaxLeafValidity / absl::Hours(24),
                                                   " days], not ", absl::FormatDuration(validity)));
  }
  // A certificate never outlives the CA that vouches for it.
  const absl::Time not_after = std::min(now + validity, certificate_.NotAfter());
  if (not_after <= now) return absl::FailedPreconditionError("the federation CA has expired");

  X509Ptr certificate(X509_new());
  X509* cert = certificate.get();
  if (cert == nullptr || X509_set_version(cert, X509_VERSION_3) != 1 ||
      X509_set_pubkey(cert, subject_key) != 1 ||
      X509_set_issuer_name(cert, X509_get_subject_name(certificate_.get())) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "certificate setup");
  }
  const bool server = identity.kind == IdentityKind::kServer;
  std::vector<std::string> sans = extra_sans;
  sans.push_back(absl::StrCat("URI:", identity.ToUri()));

  absl::Status status = SetRandomSerial(cert);
  if (status.ok()) status = SetName(X509_get_subject_name(cert), federation_, identity.name);
  if (status.ok()) status = SetValidity(cert, now - kClockSkewAllowance, not_after);
  if (status.ok())
    status = AddExtension(cert, certificate_.get(), NID_basic_constraints, "critical,CA:FALSE");
  if (status.ok()) {
    status = AddExtension(cert, certificate_.get(), NID_key_usage,
                          "critical,digitalSignature,keyAgreement");
  }
  if (status.ok()) {
    status = AddExtension(cert, certificate_.get(), NID_ext_key_usage,
                          server ? "serverAuth" : "clientAuth");
  }
  if (status.ok()) {
    status = AddExtension(cert, certificate_.get(), NID_subject_key_identifier, "hash");
  }
  if (status.ok()) {
    status = AddExtension(cert, certificate_.get(), NID_authority_key_identifier, "keyid:always");
  }
  if (status.ok()) {
    status = AddExtension(cert, certificate_.get(), NID_subject_alt_name,
                          "critical," + absl::StrJoin(sans, ","));
  }
  if (status.ok()) status = Sign(cert, key_);
  if (!status.ok()) return status;
  return Certificate::Adopt(std::move(certificate));
}

}  // namespace fedmoe::pki
