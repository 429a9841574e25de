// The developer's users (STATE/users.json, mode 0600, replaced atomically).
//
// A user is created by `stip-developer add-user` with a one-time enrolment
// token; registering with it (Registry.Register) consumes the token and issues
// a signed access token (common/auth/access_token.h) bound to the user, the
// user's model instance and an expiry. The user presents it to the servers to
// open sessions and to the Registry to fetch bundles again. Only the SHA-256
// of the enrolment token and the id of the access token are stored; raw
// tokens exist once, on the wire or on the terminal of whoever ran add-user.
//
// users.json:
//   {"version": 1, "users": [
//     {"name": "alice",
//      "enrolment_token_sha256": "<hex>|",  // of the one-time token ("" once revoked)
//      "enrolled": true,                    // the enrolment token has been used
//      "access_token_id": "<32 hex>|",      // of the access token issued last
//      "access_token_expires_at": 0,        // its expiry (unix seconds)
//      "revoked": false, "revoked_at": "...Z|",
//      "instance": "<id>|",                 // pinned instance ("" = the group's)
//      "group": "<name>|",                  // instance group ("" = default; instance_groups.h)
//      "bundle_instance": "<id>|",          // the instance of the last bundle sent
//      "created_at": "...Z", "enrolled_at": "...Z|"}]}
//
// revoked.json (STATE/revoked.json, 0600): the access tokens that no longer
// work though they have not expired -- revoked users' and those replaced by
// `add-user --reissue` -- which `serve` pushes to the servers:
//   {"version": 1, "tokens": [{"token_id": "<32 hex>", "user": "alice",
//     "expires_at": UNIX, "revoked_at": "...Z"}]}
// Entries of tokens that have expired are dropped whenever the list is written.
//
// Every operation re-reads the files under an exclusive flock (the state's
// .users.lock), so `add-user` and `revoke-user` work while `serve` is running.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/auth/access_token.h"
#include "common/util/sha256.h"  // Sha256Hex: enrolment tokens are stored hashed

namespace stip {

class StateStore;

struct UserRecord {
  std::string name;
  std::string enrolment_token_sha256;
  bool enrolled = false;
  std::string access_token_id;  // "" until enrolled
  int64_t access_token_expires_at = 0;
  bool revoked = false;
  std::string revoked_at;
  std::string instance;         // pinned instance id, "" = the group's instance
  std::string group;            // instance group, "" = the default group
  std::string bundle_instance;  // instance of the last bundle sent, "" = none yet
  std::string created_at;
  std::string enrolled_at;
};

// 32 bytes from OpenSSL RAND_bytes as 64 lowercase hex characters.
std::string NewSecretToken();
// Constant-time equality of two strings of equal length (false otherwise).
bool ConstantTimeEquals(const std::string& a, const std::string& b);
// Names: 1-64 characters of [A-Za-z0-9._@-], not starting with '.' or '-'.
bool IsValidUserName(const std::string& name);

// How access tokens are issued.
struct TokenIssue {
  const auth::SigningKey* key = nullptr;
  int64_t ttl_s = int64_t{720} * 3600;
};

class UserRegistry {
 public:
  explicit UserRegistry(const StateStore& state);

  // Creates `name` with a fresh enrolment token and returns the token (the
  // only time it exists in clear). An existing name is kFailedPrecondition
  // unless `reissue`: then the user gets a new enrolment token, the old one
  // stops working, the access token issued before is revoked (revoked.json),
  // a revocation is lifted, and the user must register again. `instance`
  // pins the user to an instance ("" = the group's); `group` puts the user
  // in an instance group ("" = default; the group must exist or be created
  // by the caller).
  std::string AddUser(const std::string& name, const std::string& instance, bool reissue,
                      const std::string& group = "");

  // Re-pins the users pinned to instance `from` to `to` (after a rotation).
  // Returns how many were moved.
  int MoveInstance(const std::string& from, const std::string& to);

  std::optional<UserRecord> Find(const std::string& name) const;
  std::vector<UserRecord> List() const;

  struct Enrolment {
    UserRecord user;
    std::string access_token;  // fresh; only its id is stored
    std::string instance;      // the instance the token is for
    int64_t expires_at = 0;
  };
  // Consumes the enrolment token and issues an access token for the user's
  // instance (pinned, else the group's: kFailedPrecondition if none),
  // persisted before returning. nullopt for an unknown user, a wrong token,
  // one already used or a revoked user (indistinguishable on purpose).
  std::optional<Enrolment> Enrol(const std::string& name, const std::string& enrolment_token,
                                 const TokenIssue& issue);

  // True iff `enrolment_token` would enrol `name` now (nothing changes).
  bool CheckEnrolmentToken(const std::string& name, const std::string& enrolment_token) const;

  struct AccessCheck {
    enum Outcome { kOk, kInvalid, kExpired, kRevoked } outcome = kInvalid;
    UserRecord user;           // with kOk
    auth::TokenClaims claims;  // with kOk
    std::string message;       // with kExpired
  };
  // kOk iff `access_token` verifies with `key` (or a `previous` key still
  // accepted), names `name`, is the token
  // issued to the user last, has not expired and is not revoked.
  AccessCheck Authenticate(const std::string& name, const std::string& access_token,
                           const auth::PublicKey& key,
                           const std::vector<auth::PreviousTokenKey>& previous = {}) const;

  // Replaces the user's access token `current_token_id` with a fresh one for
  // the user's instance (the old one is revoked). nullopt if that token is no
  // longer the user's (or the user is revoked).
  std::optional<Enrolment> RenewAccessToken(const std::string& name,
                                            const std::string& current_token_id,
                                            const TokenIssue& issue);

  // Revokes the user: the access token goes on the revocation list, the
  // enrolment token (if unused) stops working, and Register/FetchBundle
  // refuse the user until `add-user --reissue`. kNotFound for an unknown
  // user. Returns the revoked token's id ("" if the user had none).
  std::string Revoke(const std::string& name);

  // The revocation list (entries of expired tokens left out).
  std::vector<auth::RevokedToken> RevokedTokens() const;

  // Records which instance the user's last bundle was for.
  void RecordBundle(const std::string& name, const std::string& instance);

 private:
  struct RevokedEntry {
    std::string token_id, user, revoked_at;
    int64_t expires_at = 0;
  };
  std::vector<UserRecord> Load() const;  // caller holds the lock
  void Save(const std::vector<UserRecord>& users) const;
  std::vector<RevokedEntry> LoadRevoked() const;  // caller holds the lock
  void SaveRevoked(const std::vector<RevokedEntry>& entries) const;
  // Adds the user's current access token (if any and unexpired) to the list.
  void RevokeCurrentToken(const UserRecord& user) const;  // caller holds the lock
  // Signs a token for `user`'s instance and records its id in `user`.
  Enrolment Issue(UserRecord& user, const TokenIssue& issue) const;

  const StateStore& state_;
  std::string path_;
  std::string lock_path_;
  std::string revoked_path_;
};

}  // namespace stip
