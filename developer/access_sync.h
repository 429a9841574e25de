// Keeps the servers' access records of the developer's instances in step with
// its state (ModelStore.SetAccess): the public half of the token signing key,
// and the revocation list (STATE/revoked.json) that `revoke-user` and
// `add-user --reissue` change while `serve` runs. A server is sent the record
// of every instance of the state that it stores, again whenever the list
// changes or the previous attempt failed.
#pragma once

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/auth/access_token.h"
#include "common/rpc/tls.h"

namespace stip {

class StateStore;
class UserRegistry;

class AccessSync {
 public:
  AccessSync(const StateStore& state, const UserRegistry& users, std::string key_pem,
             std::vector<std::string> servers, TlsOptions tls);
  ~AccessSync();  // stops the thread
  AccessSync(const AccessSync&) = delete;
  AccessSync& operator=(const AccessSync&) = delete;

  // One round. Returns how many servers could not be brought up to date (each
  // logged), or with `strict` throws (stip::Error) at the first failure.
  int SyncOnce(bool strict = false);
  // SyncOnce every `interval_s` seconds on a thread until destruction.
  void Start(double interval_s);

 private:
  void SyncServer(const std::string& server, const std::string& digest,
                  const std::vector<auth::PreviousTokenKey>& previous,
                  const std::vector<auth::RevokedToken>& revoked);

  const StateStore& state_;
  const UserRegistry& users_;
  const std::string key_pem_;
  const std::vector<std::string> servers_;
  const TlsOptions tls_;
  std::map<std::string, std::string> synced_;  // server -> digest of what it holds

  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace stip
