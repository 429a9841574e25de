#include "developer/instance_groups.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "common/auth/access_token.h"
#include "common/error.h"
#include "common/util/files.h"
#include "common/util/random.h"
#include "developer/state_store.h"
#include "developer/user_registry.h"

namespace stip {

namespace {

constexpr char kExclusivePrefix[] = "user:";
constexpr size_t kDoneRotationsKept = 50;

Rotation::Phase ParsePhase(const std::string& s, const std::string& path) {
  if (s == "deploying") return Rotation::Phase::kDeploying;
  if (s == "draining") return Rotation::Phase::kDraining;
  if (s == "done") return Rotation::Phase::kDone;
  throw DataLoss(path + ": unknown rotation phase \"" + s.substr(0, 40) + "\"");
}

std::string Shown(const std::string& group) { return "\"" + group + "\""; }

}  // namespace

const char* PhaseName(Rotation::Phase phase) {
  switch (phase) {
    case Rotation::Phase::kDeploying:
      return "deploying";
    case Rotation::Phase::kDraining:
      return "draining";
    case Rotation::Phase::kDone:
      return "done";
  }
  return "?";
}

bool IsValidGroupName(const std::string& name) {
  if (name.compare(0, sizeof(kExclusivePrefix) - 1, kExclusivePrefix) == 0) {
    return IsValidUserName(name.substr(sizeof(kExclusivePrefix) - 1));
  }
  return IsValidUserName(name);  // the same alphabet
}

std::string ExclusiveGroup(const std::string& user) { return kExclusivePrefix + user; }

InstanceGroups::InstanceGroups(const StateStore& state)
    : state_(state),
      path_(JoinPath(state.dir(), "groups.json")),
      lock_path_(JoinPath(state.dir(), ".groups.lock")) {}

InstanceGroups::File InstanceGroups::Load() const {
  File f;
  if (!PathExists(path_)) return f;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(ReadFile(path_));
  } catch (const nlohmann::json::exception& e) {
    throw DataLoss(path_ + ": not valid JSON (" + e.what() + ")");
  }
  if (!j.is_object() || j.value("version", 0) != 1) {
    throw DataLoss(path_ + ": not a version 1 groups file");
  }
  try {
    for (const auto& g : j.value("groups", nlohmann::json::array())) {
      GroupRecord r;
      r.name = g.at("name").get<std::string>();
      r.instance = g.value("instance", "");
      r.created_at = g.value("created_at", "");
      if (!IsValidGroupName(r.name)) throw DataLoss(path_ + ": a group has an invalid name");
      f.groups.push_back(r);
    }
    for (const auto& x : j.value("rotations", nlohmann::json::array())) {
      Rotation r;
      r.id = x.at("id").get<std::string>();
      r.group = x.at("group").get<std::string>();
      r.from = x.value("from", "");
      r.to = x.at("to").get<std::string>();
      r.drain_seconds = x.value("drain_seconds", int64_t{0});
      r.phase = ParsePhase(x.at("phase").get<std::string>(), path_);
      r.requested_at = x.value("requested_at", "");
      r.switched_at = x.value("switched_at", int64_t{0});
      r.drain_deadline = x.value("drain_deadline", int64_t{0});
      r.done_at = x.value("done_at", "");
      if (!IsValidInstanceId(r.to) || (!r.from.empty() && !IsValidInstanceId(r.from))) {
        throw DataLoss(path_ + ": a rotation names an invalid instance id");
      }
      f.rotations.push_back(r);
    }
  } catch (const nlohmann::json::exception& e) {
    throw DataLoss(path_ + ": malformed (" + e.what() + ")");
  }
  return f;
}

void InstanceGroups::Save(const File& f) const {
  nlohmann::json groups = nlohmann::json::array();
  for (const GroupRecord& g : f.groups) {
    groups.push_back({{"name", g.name}, {"instance", g.instance}, {"created_at", g.created_at}});
  }
  // Done rotations are history: the last few are kept.
  size_t done = std::count_if(f.rotations.begin(), f.rotations.end(),
                              [](const Rotation& r) { return r.phase == Rotation::Phase::kDone; });
  nlohmann::json rotations = nlohmann::json::array();
  for (const Rotation& r : f.rotations) {
    if (r.phase == Rotation::Phase::kDone && done > kDoneRotationsKept) {
      --done;
      continue;
    }
    rotations.push_back({{"id", r.id},
                         {"group", r.group},
                         {"from", r.from},
                         {"to", r.to},
                         {"drain_seconds", r.drain_seconds},
                         {"phase", PhaseName(r.phase)},
                         {"requested_at", r.requested_at},
                         {"switched_at", r.switched_at},
                         {"drain_deadline", r.drain_deadline},
                         {"done_at", r.done_at}});
  }
  nlohmann::json j = {{"version", 1}, {"groups", groups}, {"rotations", rotations}};
  WriteFileAtomic(path_, j.dump(2) + "\n", 0600);
  SyncDirectory(state_.dir());
}

std::vector<GroupRecord> InstanceGroups::Groups() const {
  FileLock lock(lock_path_);
  return Load().groups;
}

bool InstanceGroups::HasGroup(const std::string& name) const {
  if (name == kDefaultGroup) return true;
  for (const GroupRecord& g : Groups()) {
    if (g.name == name) return true;
  }
  return false;
}

std::optional<std::string> InstanceGroups::InstanceOf(const std::string& group) const {
  if (group.empty() || group == kDefaultGroup) return state_.CurrentInstance();
  for (const GroupRecord& g : Groups()) {
    if (g.name == group) {
      if (g.instance.empty()) return std::nullopt;
      return g.instance;
    }
  }
  return std::nullopt;
}

std::string InstanceGroups::InstanceFor(const std::string& pinned, const std::string& group) const {
  if (!pinned.empty()) return pinned;
  if (group.empty() || group == kDefaultGroup) {
    std::optional<std::string> current = state_.CurrentInstance();
    if (!current) throw FailedPrecondition("the developer has no model instance yet");
    return *current;
  }
  for (const GroupRecord& g : Groups()) {
    if (g.name != group) continue;
    if (g.instance.empty()) {
      throw FailedPrecondition("the model instance of group " + Shown(group) +
                               " is being deployed to the servers; try again shortly");
    }
    return g.instance;
  }
  throw NotFound("no instance group " + Shown(group));
}

std::vector<Rotation> InstanceGroups::Rotations() const {
  FileLock lock(lock_path_);
  return Load().rotations;
}

std::set<std::string> InstanceGroups::ReservedInstances() const {
  FileLock lock(lock_path_);
  File f = Load();
  std::set<std::string> out;
  for (const GroupRecord& g : f.groups) {
    if (!g.instance.empty()) out.insert(g.instance);
  }
  for (const Rotation& r : f.rotations) {
    if (r.phase == Rotation::Phase::kDone) continue;
    if (!r.from.empty()) out.insert(r.from);
    out.insert(r.to);
  }
  return out;
}

std::set<std::string> InstanceGroups::RetiringInstances() const {
  std::set<std::string> out;
  for (const Rotation& r : Rotations()) {
    if (r.phase != Rotation::Phase::kDone && !r.from.empty()) out.insert(r.from);
  }
  return out;
}

Rotation InstanceGroups::Begin(const std::string& group, const std::string& to,
                               int64_t drain_seconds) {
  if (!IsValidGroupName(group)) {
    throw InvalidArgument("group name \"" + group.substr(0, 80) +
                          "\" is not 1-64 characters of A-Z a-z 0-9 . _ @ - (or user:NAME)");
  }
  if (drain_seconds < 0) throw InvalidArgument("the drain time must not be negative");
  if (!state_.HasInstance(to)) throw NotFound("instance " + to + " is not in " + state_.dir());
  FileLock lock(lock_path_);
  File f = Load();
  for (const Rotation& r : f.rotations) {
    if (r.group == group && r.phase == Rotation::Phase::kDeploying) {
      throw FailedPrecondition("a rotation of group " + Shown(group) + " to instance " + r.to +
                               " is still being deployed (is `stip-developer serve` running?)");
    }
  }
  Rotation r;
  r.id = RandomHex(8);
  r.group = group;
  r.to = to;
  r.drain_seconds = drain_seconds;
  r.requested_at = NowRfc3339();
  if (group == kDefaultGroup) {
    std::optional<std::string> current = state_.CurrentInstance();
    if (!current) throw FailedPrecondition("the default group has no instance to rotate yet");
    r.from = *current;
  } else {
    auto it = std::find_if(f.groups.begin(), f.groups.end(),
                           [&](const GroupRecord& g) { return g.name == group; });
    if (it == f.groups.end()) {
      GroupRecord g;
      g.name = group;
      g.created_at = NowRfc3339();
      f.groups.push_back(g);
    } else {
      r.from = it->instance;
    }
  }
  f.rotations.push_back(r);
  Save(f);
  return r;
}

Rotation InstanceGroups::Switch(const std::string& rotation_id) {
  FileLock lock(lock_path_);
  File f = Load();
  auto it = std::find_if(f.rotations.begin(), f.rotations.end(),
                         [&](const Rotation& r) { return r.id == rotation_id; });
  if (it == f.rotations.end()) throw NotFound("no rotation " + rotation_id);
  if (it->phase != Rotation::Phase::kDeploying) return *it;
  if (it->group == kDefaultGroup) {
    state_.SetCurrentInstance(it->to);
  } else {
    auto g = std::find_if(f.groups.begin(), f.groups.end(),
                          [&](const GroupRecord& x) { return x.name == it->group; });
    if (g == f.groups.end()) {
      GroupRecord added;
      added.name = it->group;
      added.created_at = NowRfc3339();
      f.groups.push_back(added);
      g = f.groups.end() - 1;
    }
    g->instance = it->to;
  }
  it->switched_at = auth::NowUnix();
  it->drain_deadline = it->switched_at + it->drain_seconds;
  if (it->from.empty()) {
    it->phase = Rotation::Phase::kDone;
    it->done_at = NowRfc3339();
  } else {
    it->phase = Rotation::Phase::kDraining;
  }
  Rotation out = *it;
  Save(f);
  return out;
}

void InstanceGroups::MarkDone(const std::string& rotation_id) {
  FileLock lock(lock_path_);
  File f = Load();
  for (Rotation& r : f.rotations) {
    if (r.id == rotation_id && r.phase != Rotation::Phase::kDone) {
      r.phase = Rotation::Phase::kDone;
      r.done_at = NowRfc3339();
      Save(f);
      return;
    }
  }
}

}  // namespace stip
