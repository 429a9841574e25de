// stip-developer: the model developer's (P1) tool.
// Offline subcommands:
//   transform  draw (or load) the instance keys and write the server
//              checkpoint and the client bundle, tensor by tensor
//   verify     prove on this model that the STIP path equals the plain model
//   audit      measure what the cloud could learn from a deployment (attacks
//              on the server's view; JSON and a Markdown report with plots)
//   keygen     draw fresh keys for a model into a key file (0600)
//   add-user   create a user in a state directory (in the default group, a
//              named instance group, or an exclusive instance of its own);
//              prints the one-time enrolment token (only) on stdout
//   rotate     fresh keys for one or all instance groups: a new instance that
//              `serve` deploys, moving the users to it, then retiring,
//              draining and deleting the old one
//   rotate-token-key  a fresh key to sign access tokens; the old key's tokens
//              stay accepted for a grace period (users renew onto the new
//              key) or, after a compromise, are refused at once
//   list-instances  the instances of a state directory and what they serve
//   revoke-user  revoke a user's access (the token id goes on the revocation
//              list that `serve` pushes to the servers)
//   list-users the users of a state directory (no secrets)
// With gRPC (STIP_DEVELOPER_WITH_GRPC):
//   push       upload a transformed server checkpoint to a stip-server
//   serve      keep the instance in a state directory (transforming the model
//              on first start), push it to the servers, serve the Registry
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <optional>

#include "common/arch/model_config.h"
#include "common/audit/audit.h"
#include "common/audit/audit_report.h"
#include "common/auth/access_token.h"
#include "common/error.h"
#include "common/keys/model_keys.h"
#include "common/transform/transform_checkpoint.h"
#include "common/transform/verify.h"
#include "common/util/files.h"
#include "common/util/no_core_dumps.h"
#include "developer/instance_groups.h"
#include "developer/key_rotation.h"
#include "developer/state_store.h"
#include "developer/user_registry.h"
#ifdef STIP_DEVELOPER_WITH_GRPC
#include "developer/rpc_commands.h"
#endif

namespace stip {
namespace {

// Loads the key file if it exists (checking it belongs to this model), else
// draws fresh keys and saves them (0600).
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

int Transform(const std::string& model, const std::string& out, const std::string& key_file,
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

int Verify(const std::string& model, const VerifyOptions& opt, bool json) {
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

struct AuditCommand {
  AuditOptions options;
  std::string keys;     // key file to audit ("" : fresh keys)
  std::string prompts;  // prompts file ("" : built-in prompts)
  std::string report;   // Markdown report path
  bool json = false;
  bool quiet = false;
};

int Audit(AuditCommand cmd) {
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

struct AddUserCommand {
  std::string name, state_dir, instance, group, model;
  bool reissue = false, exclusive = false, no_wait = false;
  double wait_timeout_s = 600;
  double shard_gib = 4;
};

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

int AddUser(const AddUserCommand& c) {
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

struct RotateCommand {
  std::string state_dir;
  RotateRequest request;
  double shard_gib = 4;
  bool no_wait = false, wait_drained = false;
  double wait_timeout_s = 600;
};

int Rotate(RotateCommand c) {
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

int ListInstances(const std::string& state_dir) {
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

int RotateTokenKey(const std::string& state_dir, double keep_previous_hours) {
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

int RevokeUser(const std::string& name, const std::string& state_dir) {
  StateStore state(state_dir);
  UserRegistry users(state);
  std::string token_id = users.Revoke(name);
  std::fprintf(stderr,
               "revoked user \"%s\"%s; a running `stip-developer serve` pushes the revocation to "
               "its servers (--access-sync-s); `add-user --reissue` lets the user enrol again\n",
               name.c_str(), token_id.empty() ? " (no access token issued yet)" : "");
  return 0;
}

int ListUsers(const std::string& state_dir) {
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

}  // namespace
}  // namespace stip

int main(int argc, char** argv) {
  stip::DisableCoreDumps();  // keys and tokens stay out of core files
  CLI::App app{"stip-developer: transform, verify and deploy a model under STIP"};
  app.require_subcommand(1);

  std::string model, out, keys;
  double shard_gib = 4;
  bool quiet = false;
  auto* transform =
      app.add_subcommand("transform", "write the server checkpoint and client bundle");
  transform->add_option("--model", model, "Hugging Face model directory")->required();
  transform->add_option("--out", out, "output directory (gets server/ and client/)")->required();
  transform->add_option("--keys", keys, "instance key file (created 0600 if missing)")->required();
  transform->add_option("--shard-gib", shard_gib, "max shard size in GiB (0: one file)");
  transform->add_flag("--quiet", quiet, "no progress bar");

  stip::VerifyOptions vopt;
  bool json = false;
  auto* verify = app.add_subcommand("verify", "prove STIP == plain on this model");
  verify->add_option("--model", model, "Hugging Face model directory")->required();
  verify->add_option("--reference", vopt.reference, "reference.safetensors from transformers");
  verify->add_option("--samples", vopt.samples, "random prompts for the Table 5 figures");
  verify->add_option("--tolerance", vopt.tolerance, "max |STIP - plain| (fp32)");
  verify->add_flag("--json", json, "print one JSON object");

  stip::AuditCommand audit_cmd;
  auto* audit = app.add_subcommand(
      "audit", "measure what the cloud could learn from a deployment of this model");
  audit->add_option("--model", audit_cmd.options.model_dir, "Hugging Face model directory")
      ->required();
  audit->add_option("--keys", audit_cmd.keys,
                    "instance key file to audit (default: fresh keys, not saved)");
  audit->add_option("--base", audit_cmd.options.base_weights.base_dir,
                    "public base weights the model was fine-tuned from (attack 5)");
  audit->add_option("--prompts", audit_cmd.prompts,
                    "prompts, one per line (default: a few built-in sentences)");
  audit
      ->add_option("--max-new-tokens", audit_cmd.options.max_new_tokens,
                   "greedy tokens generated per prompt")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  audit->add_flag("--json", audit_cmd.json, "print every figure as one JSON object");
  audit->add_option("--report", audit_cmd.report,
                    "write a Markdown report here, with PNG plots beside it (gnuplot)");
  audit->add_flag("--quiet", audit_cmd.quiet, "no progress on stderr");

  auto* keygen = app.add_subcommand("keygen", "draw fresh instance keys for a model");
  keygen->add_option("--model", model, "Hugging Face model directory")->required();
  keygen->add_option("--keys", keys, "key file to create (0600)")->required();

  std::string user_name, state_dir;
  stip::AddUserCommand au;
  auto* add_user = app.add_subcommand(
      "add-user", "create a user; prints only the one-time enrolment token on stdout");
  add_user->add_option("name", au.name, "user name ([A-Za-z0-9._@-], at most 64)")->required();
  add_user->add_option("--state", au.state_dir, "the developer's state directory")->required();
  add_user->add_option("--instance", au.instance,
                       "pin the user to this instance (default: the group's)");
  add_user->add_option("--instance-group", au.group,
                       "serve the user from this group's instance (a new group gets an instance "
                       "with keys of its own; default: the default group)");
  add_user->add_flag("--exclusive", au.exclusive,
                     "serve the user from an instance of its own (the group user:NAME)");
  add_user->add_option("--model", au.model,
                       "plaintext model for a new group's instance (default: the default "
                       "group's)");
  add_user->add_flag("--no-wait", au.no_wait,
                     "do not wait for a running serve to deploy a new group's instance");
  add_user->add_option("--wait-timeout-s", au.wait_timeout_s, "how long to wait for serve")
      ->capture_default_str();
  add_user->add_option("--shard-gib", au.shard_gib, "max shard size in GiB (0: one file)");
  add_user->add_flag("--reissue", au.reissue,
                     "the user exists: issue a new enrolment token (the old one and the "
                     "user's access token stop working)");

  stip::RotateCommand rot;
  auto* rotate = app.add_subcommand(
      "rotate",
      "fresh keys: a new instance per group, deployed by `serve`, users moved to it, the old one "
      "retired, drained and deleted");
  rotate->add_option("--state", rot.state_dir, "the developer's state directory")->required();
  auto* rot_group = rotate->add_option("--group", rot.request.groups,
                                       "rotate this group (\"default\", a group name, "
                                       "user:NAME; repeatable)");
  rotate->add_flag("--all", rot.request.all, "rotate every group that has an instance")
      ->excludes(rot_group);
  rotate
      ->add_option("--drain-seconds", rot.request.drain_seconds,
                   "how long sessions already open on an old instance may go on")
      ->capture_default_str();
  rotate->add_option("--model", rot.request.model_dir,
                     "the plaintext model (default: the one recorded in the old instance)");
  rotate->add_flag("--no-wait", rot.no_wait, "do not wait for serve to deploy the new instances");
  rotate->add_flag("--wait-drained", rot.wait_drained,
                   "also wait until the old instances are drained and deleted");
  rotate->add_option("--wait-timeout-s", rot.wait_timeout_s, "how long to wait for serve")
      ->capture_default_str();
  rotate->add_option("--shard-gib", rot.shard_gib, "max shard size in GiB (0: one file)");

  double keep_previous_hours = 720;
  bool revoke_previous = false;
  auto* rotate_token_key = app.add_subcommand(
      "rotate-token-key",
      "replace the key that signs access tokens (stop `serve` first; it registers the new key "
      "with the servers when it starts)");
  rotate_token_key->add_option("--state", state_dir, "the developer's state directory")->required();
  auto* keep_opt =
      rotate_token_key
          ->add_option("--keep-previous-hours", keep_previous_hours,
                       "how long tokens of the old key stay accepted, so that users renew onto "
                       "the new one on their own (default: 720, the default token lifetime)")
          ->capture_default_str()
          ->check(CLI::Range(0.0, 24.0 * 3650));
  rotate_token_key
      ->add_flag("--revoke-previous", revoke_previous,
                 "refuse the old key's tokens at once (a compromised key): every user needs a "
                 "new enrolment token (add-user --reissue)")
      ->excludes(keep_opt);

  auto* list_instances =
      app.add_subcommand("list-instances", "list the instances of a state directory");
  list_instances->add_option("--state", state_dir, "the developer's state directory")->required();

  auto* revoke_user = app.add_subcommand(
      "revoke-user", "revoke a user's access (Registry at once, servers via `serve`)");
  revoke_user->add_option("name", user_name, "user name")->required();
  revoke_user->add_option("--state", state_dir, "the developer's state directory")->required();

  auto* list_users = app.add_subcommand("list-users", "list the users of a state directory");
  list_users->add_option("--state", state_dir, "the developer's state directory")->required();

#ifdef STIP_DEVELOPER_WITH_GRPC
  stip::PushCommand push_cmd;
  auto* push = app.add_subcommand("push", "upload a transformed server checkpoint to a server");
  push->add_option("--model-dir", push_cmd.model_dir, "transformed server directory")->required();
  push->add_option("--instance", push_cmd.instance_id,
                   "instance id (default: the one recorded in its config.json)");
  push->add_option("--server", push_cmd.server, "stip-server admin address HOST:PORT")->required();
  push->add_flag("!--no-load", push_cmd.load, "store only; do not ask the server to load it");
  push->add_option("--tls-ca", push_cmd.tls.ca_file, "CA that signed the server's certificate");
  push->add_option("--tls-cert", push_cmd.tls.cert_file, "our certificate (mutual TLS)");
  push->add_option("--tls-key", push_cmd.tls.key_file, "our private key (mutual TLS)");
  push->add_option("--tls-server-name", push_cmd.tls.server_name_override,
                   "expected name in the server's certificate");
  push->add_flag("--insecure", push_cmd.tls.insecure, "plaintext (no TLS)");
  push->add_option("--state", push_cmd.state_dir,
                   "register this state's token key and revocation list for the instance");

  stip::ServeCommand serve_cmd;
  auto* serve = app.add_subcommand(
      "serve", "keep a model instance, push it to the servers and serve the Registry");
  serve->add_option("--model", serve_cmd.model_dir, "plaintext Hugging Face model directory")
      ->required();
  serve->add_option("--state", serve_cmd.state_dir, "state directory (created 0700)")->required();
  serve->add_option("--listen", serve_cmd.listen, "Registry address HOST:PORT (port 0: any)")
      ->required();
  serve->add_option("--metrics-listen", serve_cmd.metrics_listen,
                    "HOST:PORT to serve Prometheus metrics at /metrics (no user data)");
  serve
      ->add_option("--server", serve_cmd.servers,
                   "a stip-server's admin address HOST:PORT (its --admin-listen; repeatable)")
      ->required();
  serve
      ->add_option("--public-server-address", serve_cmd.public_server_address,
                   "the server address given to users (its --listen, as users reach it)")
      ->required();
  serve
      ->add_option("--token-ttl-hours", serve_cmd.token_ttl_hours,
                   "lifetime of the access tokens issued to users")
      ->capture_default_str();
  serve
      ->add_option("--access-sync-s", serve_cmd.access_sync_s,
                   "how often revocations (revoke-user, add-user --reissue) go to the servers")
      ->capture_default_str();
  serve->add_option("--tls-cert", serve_cmd.tls_cert, "our certificate (Registry; push mTLS)");
  serve->add_option("--tls-key", serve_cmd.tls_key, "our private key");
  serve->add_option("--tls-ca", serve_cmd.tls_ca,
                    "CA of the servers' certificates: verifies them when pushing and goes to "
                    "users in the bundle");
  serve->add_option("--tls-server-name", serve_cmd.tls_server_name,
                    "expected name in the servers' certificates when pushing");
  serve->add_flag("--insecure", serve_cmd.insecure, "plaintext everywhere (no TLS)");
  serve->add_option("--push-timeout", serve_cmd.push_timeout_s,
                    "seconds to keep trying to reach each server");
  serve->add_option("--shard-gib", serve_cmd.shard_gib, "max shard size in GiB (0: one file)");
#endif

  CLI11_PARSE(app, argc, argv);
  try {
    if (*add_user) return stip::AddUser(au);
    if (*rotate) return stip::Rotate(rot);
    if (*list_instances) return stip::ListInstances(state_dir);
    if (*rotate_token_key) {
      return stip::RotateTokenKey(state_dir, revoke_previous ? 0.0 : keep_previous_hours);
    }
    if (*revoke_user) return stip::RevokeUser(user_name, state_dir);
    if (*list_users) return stip::ListUsers(state_dir);
#ifdef STIP_DEVELOPER_WITH_GRPC
    if (*push) return stip::RunPush(push_cmd);
    if (*serve) return stip::RunServe(serve_cmd);
#endif
    if (*transform) return stip::Transform(model, out, keys, shard_gib, quiet);
    if (*verify) return stip::Verify(model, vopt, json);
    if (*audit) return stip::Audit(audit_cmd);
    if (*keygen) {
      if (stip::PathExists(keys)) {
        throw stip::FailedPrecondition(keys + ": already exists; refusing to overwrite keys");
      }
      bool created = false;
      stip::ModelKeys k = stip::KeysFor(model, keys, &created);
      std::fprintf(stderr, "created keys for instance %s in %s\n", k.instance_id.c_str(),
                   keys.c_str());
      return 0;
    }
  } catch (const stip::Error& e) {
    std::fprintf(stderr, "stip-developer: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "stip-developer: internal error: %s\n", e.what());
    return 3;
  }
  return 0;
}
