// The serving side of key rotation and instance groups (instance_groups.h):
// `stip-developer serve` runs RunOnce at start-up, before the Registry
// serves, and then every --access-sync-s. Each rotation not yet done moves on
// as far as it can:
//
//   deploying  push the new instance to every server (upload and load, or
//              just load if it is stored) and register its token key and the
//              revocation list (SetAccess); once every server has it: Switch
//              (the group now points to it, so the Registry hands out its
//              bundle and tokens) and re-pin the users of the old instance
//   draining   Retire the old instance on every server (new sessions get
//              FAILED_PRECONDITION / INSTANCE_RETIRED, open ones run until the
//              drain deadline); once a server reports no open session on it,
//              or the deadline has passed, Delete it there; once it is gone
//              from every server, remove it from the state (its keys are
//              deleted): done
//
// A server that cannot be reached (or still has sessions) holds the rotation
// where it is, logged, until a later round; a restarted serve resumes from
// the phase recorded in groups.json.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/rpc/tls.h"
#include "developer/instance_groups.h"

namespace stip {

class StateStore;
class UserRegistry;

class InstanceRollout {
 public:
  InstanceRollout(StateStore& state, UserRegistry& users, std::string key_pem,
                  std::vector<std::string> servers, TlsOptions tls);

  // One round. Returns how many rotations are not done yet.
  int RunOnce();

 private:
  bool Deploy(const Rotation& r);  // true once the new instance is on every server
  bool Drain(const Rotation& r);   // true once the old instance is gone everywhere

  StateStore& state_;
  UserRegistry& users_;
  const std::string key_pem_;
  const std::vector<std::string> servers_;
  const TlsOptions tls_;
  std::map<std::string, std::set<std::string>> deployed_;  // rotation id -> servers that have it
  std::map<std::string, std::set<std::string>> deleted_;   // rotation id -> servers rid of it
};

}  // namespace stip
