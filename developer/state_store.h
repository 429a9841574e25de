// The developer's persistent state (`stip-developer serve|add-user --state DIR`):
//
//   DIR/                         0700
//     instances/<instance_id>/   0700, one model instance, made atomically
//       keys.safetensors         0600  all of Π (never leaves this machine)
//       instance.json            0600  {instance_id, model_fingerprint, model_type, ...}
//       server/                        the transformed checkpoint pushed to servers
//       client/                  0700  the client bundle streamed to users
//     current_instance           0600  the instance of the default group (text): users
//                                      without a group or pinned instance
//     groups.json                0600  named and exclusive instance groups, rotations
//                                      (instance_groups.h)
//     users.json                 0600  the user records (user_registry.h)
//     revoked.json               0600  revoked access token ids (user_registry.h)
//     token_signing_key.pem      0600  Ed25519 key that signs access tokens (made on
//                                      first use; its public half goes to the servers)
//     token_keys_previous.json   0600  public halves of the keys it replaced
//                                      (rotate-token-key) and until when their
//                                      tokens are accepted
//
// An instance is built in "instances/<id>.tmp-XXXXXX" and renamed into place,
// so a crash never leaves a half-made instance under its final name; leftover
// temporary directories are removed the next time an instance is made.
// An instance that a rotation retired is removed the same way (renamed to
// "<id>.deleting-XXXXXX", then removed): its keys are deleted, not archived.
// Concurrent processes (serve, add-user, rotate) coordinate with flock(2) on
// lock files in DIR; `serve` holds DIR/.serve.lock while it runs (one serve
// per state). Torch-free apart from the transform it calls.
#pragma once

#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/auth/access_token.h"
#include "common/transform/transform_checkpoint.h"
#include "common/util/file_lock.h"

namespace stip {

struct InstanceInfo {
  std::string instance_id;
  std::string model_fingerprint;
  std::string model_type;
  std::string model_dir;   // where the plaintext model was read from (informational)
  std::string created_at;  // RFC 3339, UTC
};

// The current UTC time as RFC 3339 ("2024-05-01T12:00:00Z").
std::string NowRfc3339();

class StateStore {
 public:
  // Opens (creating, mode 0700) the state directory and its instances/.
  explicit StateStore(std::string dir);

  const std::string& dir() const { return dir_; }
  std::string users_path() const;
  std::string users_lock_path() const;
  std::string revoked_path() const;
  std::string token_key_path() const;
  std::string serve_lock_path() const;  // held by a running `serve`
  // True iff a `stip-developer serve` holds this state now.
  bool ServeRunning() const;

  // The key that signs access tokens: loaded, or made (0600) on first use.
  auth::SigningKey TokenSigningKey() const;
  std::string previous_token_keys_path() const;
  // Keys the signing key replaced whose tokens are still accepted at `now`.
  std::vector<auth::PreviousTokenKey> PreviousTokenKeys(int64_t now) const;

  struct TokenKeyRotation {
    std::string old_key_id, new_key_id;
    int64_t old_accepted_until = 0;  // == the rotation's time when it was revoked at once
    int dropped_previous = 0;  // earlier keys dropped early (at most 16 are kept)
  };
  // Replaces the token signing key with a fresh one; tokens of the old key
  // stay accepted for `keep_previous_s` seconds. 0 (a compromise): tokens of
  // the old key and of every earlier one are refused at once. The old
  // private key is deleted. Refuses
  // (kFailedPrecondition) while a `serve` runs on the state: the next serve
  // registers the new key (and the previous ones) with every server.
  TokenKeyRotation RotateTokenSigningKey(int64_t keep_previous_s);

  // Paths of one instance (the id must be a plain hex id: kInvalidArgument).
  std::string InstanceDir(const std::string& instance_id) const;
  std::string ServerDir(const std::string& instance_id) const;
  std::string ClientDir(const std::string& instance_id) const;
  std::string KeysPath(const std::string& instance_id) const;

  bool HasInstance(const std::string& instance_id) const;
  // kNotFound if the instance does not exist.
  InstanceInfo GetInstance(const std::string& instance_id) const;
  // Every complete instance, oldest first.
  std::vector<InstanceInfo> ListInstances() const;

  std::optional<std::string> CurrentInstance() const;
  // kNotFound unless the instance exists.
  void SetCurrentInstance(const std::string& instance_id) const;

  struct Ensured {
    InstanceInfo info;
    bool created = false;  // false: an instance for this model already existed
    TransformStats stats;  // of the transform, when created
  };
  // The instance for the plaintext model in `model_dir` (matched by
  // fingerprint; the current instance is preferred, then the newest match
  // not in `reserved` -- instances of other groups and rotations), made
  // (fresh keys, transform) if there is none; it becomes the current one.
  Ensured EnsureInstanceForModel(const std::string& model_dir, const TransformOptions& options = {},
                                 const std::set<std::string>& reserved = {});

  // A new instance of the model in `model_dir`: fresh keys, the transformed
  // checkpoint and the client bundle, made atomically. It is not current.
  Ensured MakeInstance(const std::string& model_dir, const TransformOptions& options = {});

  // Removes an instance (keys, checkpoint, bundle): renamed out of sight,
  // then deleted. kNotFound if it does not exist.
  void RemoveInstance(const std::string& instance_id);

 private:
  std::string instances_dir() const;
  // MakeInstance with .instances.lock held.
  Ensured MakeInstanceLocked(const std::string& model_dir, const ModelConfig& config,
                             const std::string& fingerprint, const TransformOptions& options);
  std::optional<InstanceInfo> ReadInstance(const std::string& instance_id) const;

  std::string dir_;
};

// True iff `id` looks like an instance id (1-64 lowercase hex digits).
bool IsValidInstanceId(const std::string& id);

}  // namespace stip
