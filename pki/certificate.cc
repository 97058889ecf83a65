#include "pki/certificate.h"

#include <arpa/inet.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <array>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "pki/private_key.h"
#include "storage/atomic_file.h"
#include "storage/read_file.h"

namespace fedmoe::pki {
namespace {

using internal::BioPtr;
using internal::GeneralNamesPtr;
using internal::Hex;
using internal::OpenSslError;
using internal::X509Ptr;
using internal::X509StoreCtxPtr;
using internal::X509StorePtr;

absl::Time FromAsn1Time(const ASN1_TIME* time) {
  struct tm parts {};
  if (ASN1_TIME_to_tm(time, &parts) != 1) return absl::InfinitePast();
  return absl::FromUnixSeconds(timegm(&parts));
}

}  // namespace

absl::StatusOr<Certificate> Certificate::FromPem(const std::string& pem) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  X509Ptr certificate(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (certificate == nullptr) {
    return OpenSslError(absl::StatusCode::kInvalidArgument, "not a PEM certificate");
  }
  return Certificate(std::move(certificate));
}

absl::StatusOr<Certificate> Certificate::FromDer(const std::string& der) {
  const auto* cursor = reinterpret_cast<const unsigned char*>(der.data());
  X509Ptr certificate(d2i_X509(nullptr, &cursor, static_cast<long>(der.size())));
  if (certificate == nullptr ||
      cursor != reinterpret_cast<const unsigned char*>(der.data()) + der.size()) {
    return OpenSslError(absl::StatusCode::kInvalidArgument, "not a DER certificate");
  }
  return Certificate(std::move(certificate));
}

absl::StatusOr<std::vector<Certificate>> Certificate::BundleFromPem(const std::string& pem) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  std::vector<Certificate> bundle;
  while (X509* next = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
    bundle.push_back(Certificate(X509Ptr(next)));
  }
  ERR_clear_error();  // The loop ends on "no start line", which is not an error here.
  if (bundle.empty()) return absl::InvalidArgumentError("no PEM certificate in the bundle");
  return bundle;
}

absl::StatusOr<Certificate> Certificate::ReadFile(const std::filesystem::path& path) {
  absl::StatusOr<std::string> contents = storage::ReadSmallFile(path, internal::kMaxPemFileBytes);
  if (!contents.ok()) return contents.status();
  absl::StatusOr<Certificate> certificate = FromPem(*contents);
  if (!certificate.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path.string(), ": ", certificate.status().message()));
  }
  return certificate;
}

Certificate::Certificate(const Certificate& other) : certificate_(other.certificate_.get()) {
  X509_up_ref(certificate_.get());
}

Certificate& Certificate::operator=(const Certificate& other) {
  if (this != &other) {
    X509_up_ref(other.certificate_.get());
    certificate_.reset(other.certificate_.get());
  }
  return *this;
}

std::string Certificate::ToPem() const {
  BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509(bio.get(), certificate_.get());
  return internal::BioContents(bio.get());
}

std::string Certificate::ToDer() const {
  unsigned char* der = nullptr;
  const int length = i2d_X509(certificate_.get(), &der);
  if (length <= 0) return {};
  std::string out(reinterpret_cast<const char*>(der), static_cast<size_t>(length));
  OPENSSL_free(der);
  return out;
}

absl::Status Certificate::WriteFile(const std::filesystem::path& path) const {
  using std::filesystem::perms;
  return storage::WriteFileAtomically(
      path, ToPem(),
      perms::owner_read | perms::owner_write | perms::group_read | perms::others_read);
}

std::string Certificate::Sha256Fingerprint() const { return internal::Sha256Hex(ToDer()); }

absl::StatusOr<SpiffeId> Certificate::Identity() const {
  GeneralNamesPtr names(static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(certificate_.get(), NID_subject_alt_name, nullptr, nullptr)));
  std::vector<std::string> uris;
  for (int i = 0; names != nullptr && i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names.get(), i);
    if (name->type != GEN_URI) continue;
    const ASN1_IA5STRING* uri = name->d.uniformResourceIdentifier;
    uris.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(uri)),
                      static_cast<size_t>(ASN1_STRING_length(uri)));
  }
  if (uris.empty()) return absl::NotFoundError("certificate has no SAN URI identity");
  if (uris.size() > 1) {
    return absl::InvalidArgumentError("certificate has more than one SAN URI identity");
  }
  return SpiffeId::Parse(uris.front());
}

absl::Time Certificate::NotBefore() const {
  return FromAsn1Time(X509_get0_notBefore(certificate_.get()));
}

absl::Time Certificate::NotAfter() const {
  return FromAsn1Time(X509_get0_notAfter(certificate_.get()));
}

std::string Certificate::SerialHex() const {
  const ASN1_INTEGER* serial = X509_get0_serialNumber(certificate_.get());
  return Hex(serial->data, static_cast<size_t>(serial->length));
}

std::vector<std::string> Certificate::ServerHosts() const {
  std::vector<std::string> hosts;
  auto* names = static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(certificate_.get(), NID_subject_alt_name, nullptr, nullptr));
  if (names == nullptr) return hosts;
  for (int i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names, i);
    if (name->type == GEN_DNS) {
      const ASN1_IA5STRING* dns = name->d.dNSName;
      hosts.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(dns)),
                         static_cast<size_t>(ASN1_STRING_length(dns)));
    } else if (name->type == GEN_IPADD) {
      const ASN1_OCTET_STRING* ip = name->d.iPAddress;
      const int length = ASN1_STRING_length(ip);
      char text[INET6_ADDRSTRLEN] = {};
      if ((length == 4 || length == 16) &&
          inet_ntop(length == 4 ? AF_INET : AF_INET6, ASN1_STRING_get0_data(ip), text,
                    sizeof text) != nullptr) {
        hosts.emplace_back(text);
      }
    }
  }
  GENERAL_NAMES_free(names);
  return hosts;
}

bool Certificate::IsCa() const { return X509_check_ca(certificate_.get()) != 0; }

std::string Certificate::PublicKeyDer() const {
  unsigned char* der = nullptr;
  const int length = i2d_PUBKEY(X509_get0_pubkey(certificate_.get()), &der);
  if (length <= 0) return {};
  std::string out(reinterpret_cast<const char*>(der), static_cast<size_t>(length));
  OPENSSL_free(der);
  return out;
}

absl::StatusOr<std::string> CaFederation(const Certificate& ca) {
  if (!ca.IsCa()) return absl::InvalidArgumentError("certificate is not a CA certificate");
  GeneralNamesPtr names(static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(ca.get(), NID_subject_alt_name, nullptr, nullptr)));
  constexpr std::string_view kScheme = "spiffe://";
  for (int i = 0; names != nullptr && i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names.get(), i);
    if (name->type != GEN_URI) continue;
    const ASN1_IA5STRING* uri = name->d.uniformResourceIdentifier;
    const std::string text(reinterpret_cast<const char*>(ASN1_STRING_get0_data(uri)),
                           static_cast<size_t>(ASN1_STRING_length(uri)));
    if (!text.starts_with(kScheme)) continue;
    const std::string federation = text.substr(kScheme.size());
    if (absl::Status status = ValidateName("CA federation", federation); !status.ok()) {
      return status;
    }
    return federation;
  }
  return absl::InvalidArgumentError("CA certificate names no federation (no spiffe:// SAN URI)");
}

bool CertificateMatchesHost(const Certificate& certificate, const std::string& host) {
  if (X509_check_ip_asc(certificate.get(), host.c_str(), 0) == 1) return true;
  return X509_check_host(certificate.get(), host.data(), host.size(), 0, nullptr) == 1;
}

absl::StatusOr<std::string> NormalizeFingerprint(std::string_view fingerprint) {
  // The digits gather in a fixed buffer: GCC 12 misreads the move of a std::string grown by
  // push_back into a StatusOr as an out-of-bounds copy (-Warray-bounds) once the standard
  // headers come first, as the precompiled ones do.
  std::array<char, 2 * SHA256_DIGEST_LENGTH> digits{};
  size_t count = 0;
  for (char c : fingerprint) {
    if (c == ':') continue;
    const char lower = absl::ascii_tolower(static_cast<unsigned char>(c));
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(lower))) {
      return absl::InvalidArgumentError(
          "CA fingerprint must be 64 hex digits (SHA-256), optionally separated by ':'");
    }
    if (count < digits.size()) digits[count] = lower;
    ++count;
  }
  if (count != digits.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("CA fingerprint has ", count, " hex digits; a SHA-256 fingerprint has 64"));
  }
  return std::string(digits.begin(), digits.end());
}

bool FingerprintsEqual(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

absl::StatusOr<SpiffeId> VerifyPeer(const Certificate& leaf, const Certificate& ca,
                                    std::string_view federation, Purpose purpose, absl::Time now) {
  return VerifyPeer(leaf, std::span<const Certificate>(&ca, 1), federation, purpose, now);
}

absl::StatusOr<SpiffeId> VerifyPeer(const Certificate& leaf, std::span<const Certificate> cas,
                                    std::string_view federation, Purpose purpose, absl::Time now) {
  X509StorePtr store(X509_STORE_new());
  X509StoreCtxPtr context(X509_STORE_CTX_new());
  bool ready = store != nullptr && context != nullptr;
  for (const Certificate& ca : cas) {
    ready = ready && X509_STORE_add_cert(store.get(), ca.get()) == 1;
  }
  if (!ready || X509_STORE_CTX_init(context.get(), store.get(), leaf.get(), nullptr) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "certificate verification setup");
  }
  X509_STORE_CTX_set_time(context.get(), 0, absl::ToTimeT(now));
  X509_STORE_CTX_set_flags(context.get(), X509_V_FLAG_X509_STRICT);
  X509_STORE_CTX_set_purpose(context.get(), purpose == Purpose::kClient ? X509_PURPOSE_SSL_CLIENT
                                                                        : X509_PURPOSE_SSL_SERVER);
  if (X509_verify_cert(context.get()) != 1) {
    const int error = X509_STORE_CTX_get_error(context.get());
    ERR_clear_error();
    return absl::UnauthenticatedError(
        absl::StrCat("certificate rejected: ", X509_verify_cert_error_string(error)));
  }
  absl::StatusOr<SpiffeId> identity = leaf.Identity();
  if (!identity.ok()) {
    return absl::UnauthenticatedError(
        absl::StrCat("certificate rejected: ", identity.status().message()));
  }
  if (identity->federation != federation) {
    return absl::UnauthenticatedError(absl::StrCat("certificate rejected: it names federation '",
                                                   identity->federation, "', not '",
                                                   std::string(federation), "'"));
  }
  return identity;
}

}  // namespace fedmoe::pki
