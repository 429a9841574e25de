// Instance groups and key rotations (paper §5.3: "each user may have an
// exclusive model instance", "periodically changing the set of permutation
// matrices").
//
// Every user is served by one model instance, chosen by the user's group:
//   "default"    the instance in STATE/current_instance (as before groups
//                existed): users added without a group
//   NAME         a named group (`add-user --instance-group NAME`): its users
//                share one instance, with keys of its own
//   user:NAME    the exclusive group of user NAME (`add-user --exclusive`)
// A user pinned to an instance (`add-user --instance ID`) uses that one.
//
// A rotation replaces a group's instance with a fresh one (new keys, new
// transform of the same plaintext model); making a new group is a rotation
// from no instance. Phases (the running `serve` moves them on,
// instance_rollout.h):
//   deploying  the new instance is in the state; serve pushes it to every
//              server and registers its token key there
//   draining   the group points to the new instance, users pinned to the old
//              one are re-pinned, and the servers have retired the old one:
//              new sessions on it are refused (clients fetch their new
//              bundle), open ones run until drain_deadline
//   done       the old instance is deleted from the servers and from the
//              state (its keys are gone)
//
// STATE/groups.json (0600, replaced atomically under STATE/.groups.lock):
//   {"version": 1,
//    "groups": [{"name": "team-a", "instance": "<id>|", "created_at": "...Z"}],
//    "rotations": [{"id": "<hex>", "group": "default", "from": "<id>|",
//      "to": "<id>", "drain_seconds": 300, "phase": "deploying",
//      "requested_at": "...Z", "switched_at": UNIX, "drain_deadline": UNIX,
//      "done_at": "...Z"}]}
// The default group is not listed there: its instance is current_instance.
// Torch-free.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace stip {

class StateStore;

inline constexpr char kDefaultGroup[] = "default";

struct GroupRecord {
  std::string name;
  std::string instance;  // "" while its first instance is being deployed
  std::string created_at;
};

struct Rotation {
  enum class Phase { kDeploying, kDraining, kDone };
  std::string id;     // 16 hex digits
  std::string group;  // kDefaultGroup or a group name
  std::string from;   // the replaced instance ("" for a new group)
  std::string to;     // the new instance
  int64_t drain_seconds = 0;
  Phase phase = Phase::kDeploying;
  std::string requested_at;    // RFC 3339
  int64_t switched_at = 0;     // unix seconds, from draining on
  int64_t drain_deadline = 0;  // unix seconds, from draining on
  std::string done_at;         // RFC 3339
};

const char* PhaseName(Rotation::Phase phase);

// Group names: 1-64 of [A-Za-z0-9._@-] not starting with '.' or '-', or
// "user:" + a user name (an exclusive group).
bool IsValidGroupName(const std::string& name);
// The exclusive group of `user`.
std::string ExclusiveGroup(const std::string& user);

class InstanceGroups {
 public:
  explicit InstanceGroups(const StateStore& state);

  std::vector<GroupRecord> Groups() const;  // named groups (not the default one)
  bool HasGroup(const std::string& name) const;
  // The group's deployed instance; nullopt if none yet (or no such group).
  std::optional<std::string> InstanceOf(const std::string& group) const;

  // The instance a user is served by: `pinned` if set, else the group's
  // ("" = default). kFailedPrecondition if there is none yet (the developer
  // has no instance, or the group's first one is being deployed); kNotFound
  // for an unknown group.
  std::string InstanceFor(const std::string& pinned, const std::string& group) const;

  std::vector<Rotation> Rotations() const;  // oldest first
  // Instances a group points to, or that a rotation not yet done deploys or
  // retires: never to be taken over by another group.
  std::set<std::string> ReservedInstances() const;
  // The instances that rotations not yet done are retiring.
  std::set<std::string> RetiringInstances() const;

  // Records a rotation of `group` to the instance `to` (already in the state),
  // which serve will deploy. A group that does not exist yet is created (with
  // no instance until the rotation switches). kFailedPrecondition if a
  // rotation of the group is still deploying, or the default group has no
  // instance; kInvalidArgument for a bad name or drain.
  Rotation Begin(const std::string& group, const std::string& to, int64_t drain_seconds);

  // The new instance is on every server: the group points to it from now on;
  // the rotation goes on to draining (or done, for a new group), with its
  // drain deadline from now. Returns the updated record. Idempotent.
  Rotation Switch(const std::string& rotation_id);
  // The old instance is gone from the servers and the state.
  void MarkDone(const std::string& rotation_id);

 private:
  struct File {
    std::vector<GroupRecord> groups;
    std::vector<Rotation> rotations;
  };
  File Load() const;  // caller holds the lock
  void Save(const File& file) const;

  const StateStore& state_;
  std::string path_, lock_path_;
};

}  // namespace stip
