#include "developer/instance_rollout.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "common/auth/access_token.h"
#include "common/error.h"
#include "developer/model_pusher.h"
#include "developer/state_store.h"
#include "developer/user_registry.h"

namespace stip {

InstanceRollout::InstanceRollout(StateStore& state, UserRegistry& users, std::string key_pem,
                                 std::vector<std::string> servers, TlsOptions tls)
    : state_(state),
      users_(users),
      key_pem_(std::move(key_pem)),
      servers_(std::move(servers)),
      tls_(std::move(tls)) {}

int InstanceRollout::RunOnce() {
  InstanceGroups groups(state_);
  int pending = 0;
  for (Rotation r : groups.Rotations()) {
    if (r.phase == Rotation::Phase::kDone) continue;
    try {
      if (r.phase == Rotation::Phase::kDeploying) {
        if (!Deploy(r)) {
          ++pending;
          continue;
        }
        r = groups.Switch(r.id);
        const int moved = users_.MoveInstance(r.from, r.to);
        if (r.from.empty()) {
          spdlog::info("group \"{}\": instance {} is on every server and serves the group's users",
                       r.group, r.to);
        } else {
          spdlog::info(
              "rotation {} of group \"{}\": users move from instance {} to {} ({} pinned user(s) "
              "re-pinned); the old instance drains until {}",
              r.id, r.group, r.from, r.to, moved, auth::FormatUnixUtc(r.drain_deadline));
        }
        deployed_.erase(r.id);
      }
      if (r.phase == Rotation::Phase::kDraining) {
        users_.MoveInstance(r.from, r.to);  // whoever was pinned to it meanwhile
        if (!Drain(r)) {
          ++pending;
          continue;
        }
        if (state_.HasInstance(r.from)) state_.RemoveInstance(r.from);
        groups.MarkDone(r.id);
        deleted_.erase(r.id);
        spdlog::info(
            "rotation {} of group \"{}\" done: instance {} deleted from the servers, and its keys "
            "from the state",
            r.id, r.group, r.from);
      }
    } catch (const std::exception& e) {
      spdlog::error("rotation {} of group \"{}\" ({}): {} (will retry)", r.id, r.group,
                    PhaseName(r.phase), e.what());
      ++pending;
    }
  }
  return pending;
}

bool InstanceRollout::Deploy(const Rotation& r) {
  if (!state_.HasInstance(r.to)) {
    throw DataLoss("the new instance " + r.to + " is missing from the state");
  }
  std::set<std::string>& done = deployed_[r.id];
  const std::vector<auth::RevokedToken> revoked = users_.RevokedTokens();
  const std::vector<auth::PreviousTokenKey> previous = state_.PreviousTokenKeys(auth::NowUnix());
  for (const std::string& server : servers_) {
    if (done.count(server)) continue;
    try {
      RetryOptions retry;
      retry.max_seconds = 2;  // the next round tries again
      PushResult p = EnsureModelOnServer(server, tls_, r.to, state_.ServerDir(r.to), {}, retry);
      auto channel = MakeChannel(server, tls_, "stip-developer");
      PushAccess(channel, r.to, key_pem_, previous, revoked);
      spdlog::info("server {}: instance {} of group \"{}\" {}, token key registered", server, r.to,
                   r.group,
                   p.already_stored ? "already stored"
                                    : "pushed (" + std::to_string(p.bytes >> 20) + " MiB)");
      done.insert(server);
    } catch (const Error& e) {
      spdlog::warn("server {}: cannot deploy instance {} of group \"{}\" yet: {}", server, r.to,
                   r.group, e.what());
    }
  }
  return done.size() == servers_.size();
}

bool InstanceRollout::Drain(const Rotation& r) {
  std::set<std::string>& done = deleted_[r.id];
  const int64_t now = auth::NowUnix();
  for (const std::string& server : servers_) {
    if (done.count(server)) continue;
    try {
      auto channel = MakeChannel(server, tls_, "stip-developer");
      std::optional<v1::ModelInfo> info =
          RetireOnServer(channel, r.from, std::max<int64_t>(0, r.drain_deadline - now));
      if (!info) {
        done.insert(server);  // not (or no longer) stored there
        continue;
      }
      if (info->active_sessions() > 0 && now < r.drain_deadline) continue;  // draining
      if (DeleteFromServer(channel, r.from)) {
        spdlog::info("server {}: retired instance {} deleted", server, r.from);
        done.insert(server);
      }
    } catch (const Error& e) {
      spdlog::warn("server {}: cannot retire instance {} yet: {}", server, r.from, e.what());
    }
  }
  return done.size() == servers_.size();
}

}  // namespace stip
