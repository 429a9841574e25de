// The offline subcommands of stip-developer (no gRPC): each returns the
// process' exit status and throws stip::Error for what it refuses. The
// command line is in developer/main.cc; `push` and `serve` are in
// developer/rpc_commands.h.
#pragma once

#include <string>

#include "common/audit/audit.h"
#include "common/transform/verify.h"
#include "developer/key_rotation.h"

namespace stip {

// transform: draws (or loads) the instance keys in `key_file` and writes
// OUT/server and OUT/client.
int RunTransform(const std::string& model, const std::string& out, const std::string& key_file,
                 double shard_gib, bool quiet);
// verify: STIP == plain on this model (0 if it passed, 1 if not).
int RunVerify(const std::string& model, const VerifyOptions& options, bool json);

struct AuditCommand {
  AuditOptions options;
  std::string keys;     // key file to audit ("" : fresh keys)
  std::string prompts;  // prompts file ("" : built-in prompts)
  std::string report;   // Markdown report path
  bool json = false;
  bool quiet = false;
};

// audit: what the cloud could learn from a deployment of the model.
int RunAudit(AuditCommand cmd);

// keygen: fresh instance keys in a new key file (0600).
int RunKeygen(const std::string& model, const std::string& key_file);

struct AddUserCommand {
  std::string name, state_dir, instance, group, model;
  bool reissue = false, exclusive = false, no_wait = false;
  double wait_timeout_s = 600;
  double shard_gib = 4;
};

// add-user: prints the one-time enrolment token (only) on stdout.
int RunAddUser(const AddUserCommand& c);

struct RotateCommand {
  std::string state_dir;
  RotateRequest request;
  double shard_gib = 4;
  bool no_wait = false, wait_drained = false;
  double wait_timeout_s = 600;
};

// rotate: 0, or 4 if a running serve did not deploy in time.
int RunRotate(RotateCommand c);

int RunListInstances(const std::string& state_dir);
int RunRotateTokenKey(const std::string& state_dir, double keep_previous_hours);
int RunRevokeUser(const std::string& name, const std::string& state_dir);
int RunListUsers(const std::string& state_dir);

}  // namespace stip
