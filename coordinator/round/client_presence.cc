#include "coordinator/round/client_presence.h"

#include <algorithm>

namespace fedmoe::coordinator {

void ClientPresence::PollStarted(const std::string& client_id, absl::Time now) {
  absl::MutexLock lock(&mutex_);
  Presence& presence = clients_[client_id];
  ++presence.outstanding_polls;
  presence.last_seen = now;
}

bool ClientPresence::TryStartPoll(const std::string& client_id, absl::Time now,
                                  int max_outstanding) {
  absl::MutexLock lock(&mutex_);
  Presence& presence = clients_[client_id];
  presence.last_seen = now;
  if (presence.outstanding_polls >= max_outstanding) return false;
  ++presence.outstanding_polls;
  return true;
}

void ClientPresence::PollFinished(const std::string& client_id, absl::Time now) {
  absl::MutexLock lock(&mutex_);
  auto it = clients_.find(client_id);
  if (it == clients_.end()) return;
  if (it->second.outstanding_polls > 0) --it->second.outstanding_polls;
  it->second.last_seen = now;
}

void ClientPresence::Forget(const std::string& client_id) {
  absl::MutexLock lock(&mutex_);
  clients_.erase(client_id);
}

bool ClientPresence::IsOnlineLocked(const Presence& presence, absl::Time now) const {
  return presence.outstanding_polls > 0 || now - presence.last_seen <= online_window_;
}

bool ClientPresence::IsOnline(const std::string& client_id, absl::Time now) const {
  absl::ReaderMutexLock lock(&mutex_);
  auto it = clients_.find(client_id);
  return it != clients_.end() && IsOnlineLocked(it->second, now);
}

int ClientPresence::CountOnline(absl::Time now) const {
  absl::ReaderMutexLock lock(&mutex_);
  int online = 0;
  for (const auto& [id, presence] : clients_) online += IsOnlineLocked(presence, now) ? 1 : 0;
  return online;
}

std::vector<std::string> ClientPresence::OnlineClients(absl::Time now) const {
  absl::ReaderMutexLock lock(&mutex_);
  std::vector<std::string> online;
  for (const auto& [client_id, presence] : clients_) {
    if (IsOnlineLocked(presence, now)) online.push_back(client_id);
  }
  std::sort(online.begin(), online.end());
  return online;
}

}  // namespace fedmoe::coordinator
