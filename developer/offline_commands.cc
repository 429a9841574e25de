// The bodies of stip-developer's offline subcommands (developer/main.cc has
// the command line): transform, verify, audit, keygen, and the state
// directory's users, instance groups, rotations and token keys.
#include "developer/offline_commands.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <optional>

#include "common/arch/model_config.h"
#include "common/audit/audit_report.h"
#include "common/auth/access_token.h"
#include "common/error.h"
#include "common/keys/model_keys.h"
#include "common/transform/transform_checkpoint.h"
#include "common/util/files.h"
#include "developer/instance_groups.h"
#include "developer/state_store.h"
#include "developer/user_registry.h"

namespace stip {

namespace {

// Loads a key file, checking that it belongs to this model.
ModelKeys LoadKeysFor(const std::string& model_dir, const ModelConfig& config,
                      const std::string& fingerprint, const std::string& key_file) {
  ModelKeys keys = LoadKeys(key_file);
  if (keys.model_fingerprint != fingerprint) {
    throw FailedPrecondition(key_file +
                             ": these keys were made for a different model (fingerprint "
                             "mismatch); refusing to apply them to " +
                             model_dir);
  }
  ValidateKeys(keys, config);
  return keys;
}

// Loads the key file if it exists (checking it belongs to this model), else
// draws fresh keys and saves them (0600).
ModelKeys KeysFor(const std::string& model_dir, const std::string& key_file, bool* created) {
  ModelConfig config = LoadModelConfig(model_dir);
  std::string fingerprint = FingerprintModel(model_dir);
  if (PathExists(key_file)) {
    *created = false;
    return LoadKeysFor(model_dir, config, fingerprint, key_file);
  }
  ModelKeys keys = GenerateKeys(config, fingerprint);
  SaveKeys(key_file, keys);
  *created = true;
  return keys;
}

TransformOptions ShardOptions(double shard_gib) {
  TransformOptions opt;
  opt.max_shard_bytes = shard_gib > 0 ? static_cast<uint64_t>(shard_gib * (1ull << 30)) : 0;
  opt.progress = false;
  return opt;
}

// Waits (if a serve owns the state) for the rotations to switch, telling the
// operator what happens. Returns false on a timeout.
bool WaitForServe(const StateStore& state, const std::vector<Rotation>& rotations, double timeout_s,
                  bool no_wait) {
  if (rotations.empty()) return true;
  std::vector<std::string> ids;
  for (const Rotation& r : rotations) ids.push_back(r.id);
  if (no_wait) {
    std::fprintf(stderr,
                 "not waiting: `stip-developer serve` deploys it (list-instances shows "
                 "the progress)\n");
    return true;
  }
  if (!state.ServeRunning()) {
    std::fprintf(stderr,
                 "no `stip-developer serve` runs on %s: it deploys the new instance(s) "
                 "when it starts, before its Registry answers\n",
                 state.dir().c_str());
    return true;
  }
  std::fprintf(stderr, "waiting for `stip-developer serve` to deploy it to the servers ...\n");
  switch (WaitForRotations(state, ids, /*until_done=*/false, timeout_s)) {
    case WaitOutcome::kSwitched:
      return true;
    case WaitOutcome::kNoServe:
      std::fprintf(stderr, "`stip-developer serve` stopped; it resumes when it starts again\n");
      return true;
    case WaitOutcome::kTimeout:
      std::fprintf(stderr,
                   "stip-developer: warning: not deployed after %.0f s (are the servers "
                   "reachable? see serve's log); serve keeps trying\n",
                   timeout_s);
      return false;
  }
  return false;
}

}  // namespace

int RunTransform(const std::string& model, const std::string& out, const std::string& key_file,
                 double shard_gib, bool quiet) {
  bool created = false;
  ModelKeys keys = KeysFor(model, key_file, &created);
  std::fprintf(stderr, "%s keys for instance %s (%s)\n", created ? "created" : "loaded",
               keys.instance_id.c_str(), key_file.c_str());
  TransformOptions opt;
  opt.max_shard_bytes = shard_gib > 0 ? static_cast<uint64_t>(shard_gib * (1ull << 30)) : 0;
  opt.progress = !quiet;
  TransformStats s = TransformCheckpoint(model, out, keys, opt);
  std::fprintf(stderr,
               "transformed %llu tensors: read %.1f MiB, wrote %.1f MiB in %d shard(s), %.2f s "
               "(%.1f MiB/s) -> %s/server, %s/client\n",
               static_cast<unsigned long long>(s.tensors), s.bytes_read / 1048576.0,
               s.bytes_written / 1048576.0, s.shards, s.seconds,
               s.seconds > 0 ? s.bytes_read / 1048576.0 / s.seconds : 0.0, out.c_str(),
               out.c_str());
  return 0;
}

int RunVerify(const std::string& model, const VerifyOptions& opt, bool json) {
  VerifyReport r = VerifyModel(model, opt);
  if (json) {
    std::cout << r.ToJson() << std::endl;
  } else {
    std::printf(
        "arch %s: plain vs reference %s, STIP vs plain %.3g (tolerance %.0e), top-1 %.4f, "
        "greedy %s, batch %s -> %s\n",
        r.arch.c_str(),
        r.max_abs_diff_plain_vs_reference
            ? std::to_string(*r.max_abs_diff_plain_vs_reference).c_str()
            : "n/a",
        r.max_abs_diff_stip_vs_plain, r.tolerance, r.top1_agreement,
        r.greedy_match ? (*r.greedy_match ? "match" : "MISMATCH") : "n/a",
        r.greedy_batch_match ? (*r.greedy_batch_match ? "match" : "MISMATCH") : "n/a",
        r.passed ? "PASS" : ("FAIL: " + r.failure).c_str());
  }
  return r.passed ? 0 : 1;
}

int RunAudit(AuditCommand cmd) {
  ModelConfig config = LoadModelConfig(cmd.options.model_dir);
  std::string fingerprint = FingerprintModel(cmd.options.model_dir);
  ModelKeys keys;
  if (cmd.keys.empty()) {
    keys = GenerateKeys(config, fingerprint);
  } else {
    if (!PathExists(cmd.keys)) throw NotFound(cmd.keys + ": no such key file");
    keys = LoadKeysFor(cmd.options.model_dir, config, fingerprint, cmd.keys);
    cmd.options.keys_origin = "the instance keys in " + cmd.keys;
  }
  if (!cmd.prompts.empty()) cmd.options.prompts = LoadAuditPrompts(cmd.prompts);
  if (!cmd.options.base_weights.base_dir.empty() &&
      !IsDirectory(cmd.options.base_weights.base_dir)) {
    throw NotFound(cmd.options.base_weights.base_dir + ": no such base model directory");
  }
  cmd.options.progress = !cmd.quiet;
  nlohmann::ordered_json result = RunAudit(cmd.options, std::move(keys));
  if (!cmd.report.empty()) {
    AuditReportFiles files = WriteAuditReport(result, cmd.report);
    std::fprintf(stderr, "wrote %s%s%s\n", files.markdown.c_str(),
                 files.plots.empty() ? "" : " with plots",
                 files.plot_note.empty() ? "" : (" (" + files.plot_note + ")").c_str());
  }
  if (cmd.json) {
    std::cout << AuditJson(result) << std::endl;
  } else {
    std::cout << AuditSummaryText(result);
  }
  return 0;
}

int RunAddUser(const AddUserCommand& c) {
  StateStore state(c.state_dir);
  if (!c.instance.empty() && !state.HasInstance(c.instance)) {
    throw NotFound("instance " + c.instance + " is not in " + c.state_dir);
  }
  if (c.exclusive + !c.group.empty() + !c.instance.empty() > 1) {
    throw InvalidArgument("give at most one of --instance, --instance-group, --exclusive");
  }
  if (!IsValidUserName(c.name)) {
    throw InvalidArgument("user name \"" + c.name.substr(0, 80) +
                          "\" is not 1-64 characters of A-Z a-z 0-9 . _ @ - "
                          "(not starting with '.' or '-')");
  }
  UserRegistry users(state);
  if (!c.reissue && users.Find(c.name)) {
    throw FailedPrecondition("user \"" + c.name +
                             "\" already exists (pass --reissue for a new enrolment token)");
  }
  InstanceGroups groups(state);
  const std::string group = c.exclusive ? ExclusiveGroup(c.name) : c.group;
  std::vector<Rotation> pending;
  if (!group.empty() && !groups.HasGroup(group)) {
    pending.push_back(CreateGroup(state, group, c.model, ShardOptions(c.shard_gib)));
    std::fprintf(stderr, "made group \"%s\" with instance %s\n", group.c_str(),
                 pending.back().to.c_str());
  } else if (!group.empty()) {
    for (const Rotation& r : groups.Rotations()) {
      if (r.group == group && r.phase == Rotation::Phase::kDeploying && r.from.empty()) {
        pending.push_back(r);  // its first instance is on its way
      }
    }
  }
  std::string token = users.AddUser(c.name, c.instance, c.reissue, group);
  std::fprintf(stderr, "%s user \"%s\"%s; the enrolment token (stdout) works once\n",
               c.reissue ? "reissued" : "created", c.name.c_str(),
               !c.instance.empty() ? (" pinned to instance " + c.instance).c_str()
               : !group.empty()    ? (" in group \"" + group + "\"").c_str()
                                   : "");
  WaitForServe(state, pending, c.wait_timeout_s, c.no_wait);
  std::printf("%s\n", token.c_str());
  std::fflush(stdout);
  return 0;
}

int RunRotate(RotateCommand c) {
  StateStore state(c.state_dir);
  c.request.transform = ShardOptions(c.shard_gib);
  std::vector<Rotation> rotations = StartRotations(state, c.request);
  bool ok = WaitForServe(state, rotations, c.wait_timeout_s, c.no_wait);
  if (ok && c.wait_drained && !c.no_wait && state.ServeRunning()) {
    std::vector<std::string> ids;
    for (const Rotation& r : rotations) ids.push_back(r.id);
    std::fprintf(stderr, "waiting for the old instance(s) to drain and be deleted ...\n");
    ok = WaitForRotations(state, ids, /*until_done=*/true,
                          c.wait_timeout_s + static_cast<double>(c.request.drain_seconds)) !=
         WaitOutcome::kTimeout;
  }
  InstanceGroups groups(state);
  for (const Rotation& r : groups.Rotations()) {
    for (const Rotation& mine : rotations) {
      if (r.id != mine.id) continue;
      std::printf("rotation %s: group %s: instance %s -> %s: %s", r.id.c_str(), r.group.c_str(),
                  r.from.c_str(), r.to.c_str(), PhaseName(r.phase));
      if (r.phase == Rotation::Phase::kDraining) {
        std::printf(" (the old instance drains until %s, then is deleted)",
                    auth::FormatUnixUtc(r.drain_deadline).c_str());
      }
      std::printf("\n");
    }
  }
  std::fflush(stdout);
  return ok ? 0 : 4;
}

int RunListInstances(const std::string& state_dir) {
  StateStore state(state_dir);
  InstanceGroups groups(state);
  UserRegistry users(state);
  std::optional<std::string> current = state.CurrentInstance();
  std::vector<GroupRecord> named = groups.Groups();
  std::vector<Rotation> rotations = groups.Rotations();
  std::vector<UserRecord> all_users = users.List();
  for (const InstanceInfo& i : state.ListInstances()) {
    std::string role;
    auto add = [&](const std::string& what) { role += (role.empty() ? "" : ",") + what; };
    if (current && *current == i.instance_id) add("serves:default");
    for (const GroupRecord& g : named) {
      if (g.instance == i.instance_id) add("serves:" + g.name);
    }
    for (const Rotation& r : rotations) {
      if (r.phase == Rotation::Phase::kDone) continue;
      if (r.to == i.instance_id && r.phase == Rotation::Phase::kDeploying) {
        add("deploying:" + r.group);
      }
      if (r.from == i.instance_id) {
        add(r.phase == Rotation::Phase::kDraining
                ? "retiring:" + r.group + ":until=" + auth::FormatUnixUtc(r.drain_deadline)
                : "to-retire:" + r.group);
      }
    }
    const long pinned = std::count_if(all_users.begin(), all_users.end(), [&](const UserRecord& u) {
      return u.instance == i.instance_id;
    });
    if (pinned > 0) add("pinned-users:" + std::to_string(pinned));
    std::printf("%s\t%s\t%s\tcreated=%s\n", i.instance_id.c_str(), i.model_type.c_str(),
                role.empty() ? "unused" : role.c_str(), i.created_at.c_str());
  }
  return 0;
}

int RunRotateTokenKey(const std::string& state_dir, double keep_previous_hours) {
  if (!std::isfinite(keep_previous_hours) || keep_previous_hours < 0) {
    throw InvalidArgument("--keep-previous-hours must be a number of hours >= 0");
  }
  StateStore state(state_dir);
  const int64_t keep_s = static_cast<int64_t>(keep_previous_hours * 3600);
  StateStore::TokenKeyRotation r = state.RotateTokenSigningKey(keep_s);
  if (r.dropped_previous > 0) {
    std::fprintf(stderr,
                 "%d earlier token key(s) no longer accepted: servers keep at most 16 previous "
                 "keys\n",
                 r.dropped_previous);
  }
  std::printf("%s\n", r.new_key_id.c_str());
  if (keep_s > 0) {
    std::fprintf(stderr,
                 "token signing key %s replaced by %s; tokens of %s stay accepted until %s "
                 "(clients renew onto the new key on their own). Start `stip-developer serve` "
                 "to register the new key with the servers.\n",
                 r.old_key_id.c_str(), r.new_key_id.c_str(), r.old_key_id.c_str(),
                 auth::FormatUnixUtc(r.old_accepted_until).c_str());
  } else {
    std::fprintf(stderr,
                 "token signing key %s replaced by %s; tokens of %s are refused as soon as the "
                 "servers have the new key (start `stip-developer serve`). Every user needs a "
                 "new enrolment token: `stip-developer add-user NAME --reissue`.\n",
                 r.old_key_id.c_str(), r.new_key_id.c_str(), r.old_key_id.c_str());
  }
  return 0;
}

int RunRevokeUser(const std::string& name, const std::string& state_dir) {
  StateStore state(state_dir);
  UserRegistry users(state);
  std::string token_id = users.Revoke(name);
  std::fprintf(stderr,
               "revoked user \"%s\"%s; a running `stip-developer serve` pushes the revocation to "
               "its servers (--access-sync-s); `add-user --reissue` lets the user enrol again\n",
               name.c_str(), token_id.empty() ? " (no access token issued yet)" : "");
  return 0;
}

int RunListUsers(const std::string& state_dir) {
  StateStore state(state_dir);
  UserRegistry users(state);
  InstanceGroups groups(state);
  for (const UserRecord& u : users.List()) {
    std::string instance;
    if (!u.instance.empty()) {
      instance = u.instance;
    } else {
      std::optional<std::string> of = groups.InstanceOf(u.group.empty() ? kDefaultGroup : u.group);
      instance = (u.group.empty() ? "default(" : u.group + "(") + of.value_or("none") + ")";
    }
    std::printf("%s\t%s\tinstance=%s\tbundle=%s\tcreated=%s\tenrolled=%s\n", u.name.c_str(),
                u.revoked ? "revoked" : (u.enrolled ? "enrolled" : "pending"), instance.c_str(),
                u.bundle_instance.empty() ? "-" : u.bundle_instance.c_str(), u.created_at.c_str(),
                u.enrolled_at.empty() ? "-" : u.enrolled_at.c_str());
  }
  return 0;
}

int RunKeygen(const std::string& model, const std::string& key_file) {
  if (PathExists(key_file)) {
    throw FailedPrecondition(key_file + ": already exists; refusing to overwrite keys");
  }
  bool created = false;
  ModelKeys k = KeysFor(model, key_file, &created);
  std::fprintf(stderr, "created keys for instance %s in %s\n", k.instance_id.c_str(),
               key_file.c_str());
  return 0;
}

}  // namespace stip
