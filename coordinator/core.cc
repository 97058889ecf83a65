#include "coordinator/core.h"

namespace fedmoe::coordinator {

absl::StatusOr<std::unique_ptr<CoordinatorCore>> CoordinatorCore::Open(CoordinatorConfig config) {
  std::unique_ptr<CoordinatorCore> core(new CoordinatorCore());
  core->config_ = std::move(config);
  core->started_at_ = absl::Now();
  const CoordinatorConfig& cfg = core->config_;
  absl::StatusOr<FederationTrust> trust = LoadFederationTrust(cfg);
  if (!trust.ok()) return trust.status();
  core->trust_bundle_ = trust->bundle;
  core->ca_rotation_phase_ = trust->phase;
  absl::StatusOr<std::unique_ptr<Store>> store =
      Store::OpenExisting(cfg.state_dir.store(), cfg.federation);
  if (!store.ok()) return store.status();
  core->store_ = *std::move(store);
  core->authority_ = std::make_unique<EnrollmentAuthority>(
      std::move(trust->issuer), trust->bundle, core->store_.get(), cfg.client_certificate_validity);
  core->authorizer_ = std::make_unique<CallerAuthorizer>(trust->bundle, core->store_.get());
  core->presence_ = std::make_unique<ClientPresence>(cfg.online_window());
  core->polls_ = std::make_unique<PollHub>(static_cast<size_t>(cfg.parked_polls));
  absl::StatusOr<std::unique_ptr<RoundEngine>> rounds =
      RoundEngine::Create(&cfg, core->store_.get(), core->presence_.get(), core->polls_.get());
  if (!rounds.ok()) return rounds.status();
  core->rounds_ = *std::move(rounds);
  return core;
}

CoordinatorCore::~CoordinatorCore() {
  if (rounds_ != nullptr) rounds_->Stop();
  if (polls_ != nullptr) polls_->Shutdown();
}

ServiceContext CoordinatorCore::context() {
  return ServiceContext{&config_,        store_.get(), authority_.get(), authorizer_.get(),
                        presence_.get(), polls_.get(), rounds_.get(),    started_at_};
}

}  // namespace fedmoe::coordinator
