// stip-developer: the model developer's (P1) tool: its command line. The
// subcommands' bodies are in offline_commands.cc and rpc_commands.cc.
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
#include <cstdio>
#include <string>

#include "common/error.h"
#include "common/util/no_core_dumps.h"
#include "developer/offline_commands.h"
#ifdef STIP_DEVELOPER_WITH_GRPC
#include "developer/rpc_commands.h"
#endif

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
    if (*add_user) return stip::RunAddUser(au);
    if (*rotate) return stip::RunRotate(rot);
    if (*list_instances) return stip::RunListInstances(state_dir);
    if (*rotate_token_key) {
      return stip::RunRotateTokenKey(state_dir, revoke_previous ? 0.0 : keep_previous_hours);
    }
    if (*revoke_user) return stip::RunRevokeUser(user_name, state_dir);
    if (*list_users) return stip::RunListUsers(state_dir);
#ifdef STIP_DEVELOPER_WITH_GRPC
    if (*push) return stip::RunPush(push_cmd);
    if (*serve) return stip::RunServe(serve_cmd);
#endif
    if (*transform) return stip::RunTransform(model, out, keys, shard_gib, quiet);
    if (*verify) return stip::RunVerify(model, vopt, json);
    if (*audit) return stip::RunAudit(audit_cmd);
    if (*keygen) return stip::RunKeygen(model, keys);
  } catch (const stip::Error& e) {
    std::fprintf(stderr, "stip-developer: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "stip-developer: internal error: %s\n", e.what());
    return 3;
  }
  return 0;
}
