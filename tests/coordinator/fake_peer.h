// The auth context gRPC builds from a verified TLS peer, reduced to what CallerAuthorizer reads:
// the peer certificate's PEM (none for a peer without one). For driving CoordinatorApi without
// a network: its unit tests and the request fuzzer.
#ifndef FEDMOE_TESTS_COORDINATOR_FAKE_PEER_H_
#define FEDMOE_TESTS_COORDINATOR_FAKE_PEER_H_

#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/auth_context.h>

#include <string>
#include <utility>
#include <vector>

namespace fedmoe::testing {

class PeerCertificate final : public grpc::AuthContext {
 public:
  explicit PeerCertificate(std::string pem) : pem_(std::move(pem)) {}
  bool IsPeerAuthenticated() const override { return !pem_.empty(); }
  std::vector<grpc::string_ref> GetPeerIdentity() const override { return {}; }
  std::string GetPeerIdentityPropertyName() const override { return ""; }
  std::vector<grpc::string_ref> FindPropertyValues(const std::string& name) const override {
    if (pem_.empty() || name != GRPC_X509_PEM_CERT_PROPERTY_NAME) return {};
    return {grpc::string_ref(pem_)};
  }
  grpc::AuthPropertyIterator begin() const override { return NoProperties(); }
  grpc::AuthPropertyIterator end() const override { return NoProperties(); }
  void AddProperty(const std::string& /*key*/, const grpc::string_ref& /*value*/) override {}
  bool SetPeerIdentityPropertyName(const std::string& /*name*/) override { return false; }
  void set_pem(std::string pem) { pem_ = std::move(pem); }

 private:
  // The iterator's only public way to exist is a copy.
  struct NoProperties : grpc::AuthPropertyIterator {};
  std::string pem_;
};

}  // namespace fedmoe::testing

#endif  // FEDMOE_TESTS_COORDINATOR_FAKE_PEER_H_
