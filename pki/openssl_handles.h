// Owning handles for the OpenSSL objects pki uses, and the error text of OpenSSL's queue.
// Internal to pki: callers see Certificate, PrivateKey and the functions of pki's headers.
#ifndef FEDMOE_PKI_OPENSSL_HANDLES_H_
#define FEDMOE_PKI_OPENSSL_HANDLES_H_

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace fedmoe::pki::internal {

template <auto Free>
struct Deleter {
  template <typename T>
  void operator()(T* pointer) const {
    Free(pointer);
  }
};

using BioPtr = std::unique_ptr<BIO, Deleter<BIO_free_all>>;
using EvpPkeyPtr = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY_free>>;
using EvpMdCtxPtr = std::unique_ptr<EVP_MD_CTX, Deleter<EVP_MD_CTX_free>>;
using X509Ptr = std::unique_ptr<X509, Deleter<X509_free>>;
using X509ReqPtr = std::unique_ptr<X509_REQ, Deleter<X509_REQ_free>>;
using X509StorePtr = std::unique_ptr<X509_STORE, Deleter<X509_STORE_free>>;
using X509StoreCtxPtr = std::unique_ptr<X509_STORE_CTX, Deleter<X509_STORE_CTX_free>>;
using X509ExtensionPtr = std::unique_ptr<X509_EXTENSION, Deleter<X509_EXTENSION_free>>;
using GeneralNamesPtr = std::unique_ptr<GENERAL_NAMES, Deleter<GENERAL_NAMES_free>>;
using Asn1IntegerPtr = std::unique_ptr<ASN1_INTEGER, Deleter<ASN1_INTEGER_free>>;
using BignumPtr = std::unique_ptr<BIGNUM, Deleter<BN_free>>;

// `what` followed by the first error on OpenSSL's queue, which it then clears, so one failure
// does not leak into the next call's message.
absl::Status OpenSslError(absl::StatusCode code, std::string_view what);

// OK for an ECDSA P-256 key; InvalidArgument naming what the key is otherwise.
absl::Status RequireP256(EVP_PKEY* key);

// The bytes a memory BIO holds.
std::string BioContents(BIO* bio);

// The largest PEM file (certificate, key or CA bundle) pki reads: they are a few KiB.
inline constexpr uint64_t kMaxPemFileBytes = uint64_t{1} << 20;

// Lower-case hex of `size` bytes.
std::string Hex(const unsigned char* data, size_t size);

// SHA-256 of `bytes`, 64 lower-case hex digits.
std::string Sha256Hex(std::string_view bytes);

}  // namespace fedmoe::pki::internal

#endif  // FEDMOE_PKI_OPENSSL_HANDLES_H_
