#include "developer/access_sync.h"

#include <spdlog/spdlog.h>

#include <set>

#include "common/error.h"
#include "developer/model_pusher.h"
#include "developer/state_store.h"
#include "developer/user_registry.h"

namespace stip {

AccessSync::AccessSync(const StateStore& state, const UserRegistry& users, std::string key_pem,
                       std::vector<std::string> servers, TlsOptions tls)
    : state_(state),
      users_(users),
      key_pem_(std::move(key_pem)),
      servers_(std::move(servers)),
      tls_(std::move(tls)) {}

AccessSync::~AccessSync() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void AccessSync::SyncServer(const std::string& server, const std::string& digest,
                            const std::vector<auth::PreviousTokenKey>& previous,
                            const std::vector<auth::RevokedToken>& revoked) {
  std::set<std::string> ours;
  for (const InstanceInfo& i : state_.ListInstances()) ours.insert(i.instance_id);
  auto channel = MakeChannel(server, tls_, "stip-developer");
  for (const v1::ModelInfo& m : ListServerModels(channel)) {
    if (!ours.count(m.instance_id())) continue;
    v1::AccessInfo info = PushAccess(channel, m.instance_id(), key_pem_, previous, revoked);
    spdlog::info("server {}: instance {} accepts tokens of key {}; {} revoked token(s)", server,
                 info.instance_id(), info.token_key_id(), info.revoked_tokens());
  }
  synced_[server] = digest;
}

int AccessSync::SyncOnce(bool strict) {
  // What the servers should hold: the key, the previous keys still accepted
  // (one drops out when its time is up) and the revocation list, read once
  // per round: what is pushed is what the digest names.
  const std::vector<auth::PreviousTokenKey> previous = state_.PreviousTokenKeys(auth::NowUnix());
  const std::vector<auth::RevokedToken> revoked = users_.RevokedTokens();
  std::string digest = key_pem_;
  for (const auth::PreviousTokenKey& p : previous) {
    digest += "\nprevious " + p.key.key_id() + " " + std::to_string(p.accepted_until);
  }
  for (const auth::RevokedToken& r : revoked) {
    digest += "\n" + r.token_id + " " + std::to_string(r.expires_at);
  }
  digest = Sha256Hex(digest);
  int failed = 0;
  for (const std::string& server : servers_) {
    auto it = synced_.find(server);
    if (it != synced_.end() && it->second == digest) continue;
    try {
      SyncServer(server, digest, previous, revoked);
    } catch (const Error& e) {
      if (strict) throw Error(e.code(), "registering access with " + server + ": " + e.what());
      spdlog::warn("server {}: cannot register access (will retry): {}", server, e.what());
      ++failed;
    }
  }
  return failed;
}

void AccessSync::Start(double interval_s) {
  const auto period = std::chrono::milliseconds(static_cast<int64_t>(interval_s * 1000));
  thread_ = std::thread([this, period] {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      cv_.wait_for(lock, period, [this] { return stop_; });
      if (stop_) break;
      lock.unlock();
      try {
        SyncOnce();
      } catch (const std::exception& e) {
        spdlog::error("access sync: {}", e.what());
      }
      lock.lock();
    }
  });
}

}  // namespace stip
