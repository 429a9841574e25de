#include "developer/key_rotation.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>

#include "common/error.h"
#include "developer/state_store.h"

namespace stip {

namespace {

// The plaintext model of `instance` (recorded when it was made).
std::string ModelOf(const StateStore& state, const std::string& instance) {
  InstanceInfo info = state.GetInstance(instance);
  if (info.model_dir.empty()) {
    throw FailedPrecondition("instance " + instance +
                             " does not record its plaintext model; pass --model DIR");
  }
  return info.model_dir;
}

}  // namespace

std::vector<Rotation> StartRotations(StateStore& state, const RotateRequest& request) {
  if (request.drain_seconds < 0) throw InvalidArgument("--drain-seconds must not be negative");
  InstanceGroups groups(state);
  // The groups and the instances they replace.
  std::vector<std::pair<std::string, std::string>> targets;
  if (request.all) {
    if (std::optional<std::string> current = state.CurrentInstance()) {
      targets.push_back({kDefaultGroup, *current});
    }
    for (const GroupRecord& g : groups.Groups()) {
      if (!g.instance.empty()) targets.push_back({g.name, g.instance});
    }
    if (targets.empty()) throw FailedPrecondition("there is no instance to rotate yet");
  } else {
    if (request.groups.empty()) throw InvalidArgument("name a --group to rotate, or --all");
    for (const std::string& name : request.groups) {
      if (!groups.HasGroup(name))
        throw NotFound("no instance group \"" + name.substr(0, 80) + "\"");
      std::optional<std::string> instance = groups.InstanceOf(name);
      if (!instance) {
        throw FailedPrecondition("group \"" + name +
                                 "\" has no instance yet (its first one is being deployed)");
      }
      targets.push_back({name, *instance});
    }
  }
  for (const Rotation& r : groups.Rotations()) {
    for (const auto& [name, instance] : targets) {
      if (r.group == name && r.phase == Rotation::Phase::kDeploying) {
        throw FailedPrecondition("a rotation of group \"" + name + "\" to instance " + r.to +
                                 " is still being deployed (is `stip-developer serve` running?)");
      }
    }
  }

  std::vector<Rotation> started;
  std::vector<std::string> made;
  try {
    for (const auto& [name, old] : targets) {
      const InstanceInfo old_info = state.GetInstance(old);
      const std::string model = request.model_dir.empty() ? ModelOf(state, old) : request.model_dir;
      std::fprintf(stderr, "group \"%s\": making a new instance of %s (fresh keys) ...\n",
                   name.c_str(), model.c_str());
      StateStore::Ensured fresh = state.MakeInstance(model, request.transform);
      made.push_back(fresh.info.instance_id);
      if (fresh.info.model_fingerprint != old_info.model_fingerprint) {
        throw FailedPrecondition(model + " is not the model of instance " + old +
                                 " (fingerprint mismatch): a rotation changes the keys, not the "
                                 "model");
      }
      started.push_back(groups.Begin(name, fresh.info.instance_id, request.drain_seconds));
    }
  } catch (...) {
    // Nothing half done: instances without a recorded rotation go again.
    for (const std::string& id : made) {
      bool recorded = std::any_of(started.begin(), started.end(),
                                  [&](const Rotation& r) { return r.to == id; });
      if (!recorded && state.HasInstance(id)) state.RemoveInstance(id);
    }
    throw;
  }
  return started;
}

Rotation CreateGroup(StateStore& state, const std::string& group, const std::string& model_dir,
                     const TransformOptions& transform) {
  InstanceGroups groups(state);
  if (!IsValidGroupName(group) || group == kDefaultGroup) {
    throw InvalidArgument("\"" + group.substr(0, 80) +
                          "\" is not a name for a new group (1-64 of A-Z a-z 0-9 . _ @ -)");
  }
  if (groups.HasGroup(group)) throw FailedPrecondition("group \"" + group + "\" exists already");
  std::string model = model_dir;
  if (model.empty()) {
    std::optional<std::string> current = state.CurrentInstance();
    if (!current) {
      throw FailedPrecondition(
          "the developer has no instance yet to take the model from; pass --model DIR");
    }
    model = ModelOf(state, *current);
  }
  std::fprintf(stderr, "group \"%s\": making its instance of %s (fresh keys) ...\n", group.c_str(),
               model.c_str());
  StateStore::Ensured fresh = state.MakeInstance(model, transform);
  try {
    return groups.Begin(group, fresh.info.instance_id, 0);
  } catch (...) {
    state.RemoveInstance(fresh.info.instance_id);
    throw;
  }
}

WaitOutcome WaitForRotations(const StateStore& state, const std::vector<std::string>& ids,
                             bool until_done, double timeout_s) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  InstanceGroups groups(state);
  for (;;) {
    bool all = true;
    for (const Rotation& r : groups.Rotations()) {
      if (std::find(ids.begin(), ids.end(), r.id) == ids.end()) continue;
      const bool ready =
          until_done ? r.phase == Rotation::Phase::kDone : r.phase != Rotation::Phase::kDeploying;
      all = all && ready;
    }
    if (all) return WaitOutcome::kSwitched;
    if (!state.ServeRunning()) return WaitOutcome::kNoServe;
    if (std::chrono::steady_clock::now() >= deadline) return WaitOutcome::kTimeout;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

}  // namespace stip
