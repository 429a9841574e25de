// The developer's users (STATE/users.json, mode 0600, replaced atomically).
//
// A user is created by `stip-developer add-user` with a one-time enrolment
// token; registering with it (Registry.Register) consumes the token and issues
// an access token, which the user presents to fetch bundles again. Only
// SHA-256 hashes of tokens are stored; the raw tokens exist once, on the
// wire or on the terminal of whoever ran add-user.
//
// users.json:
//   {"version": 1, "users": [
//     {"name": "alice",
//      "enrolment_token_sha256": "<hex>",   // of the one-time token
//      "enrolled": true,                    // the enrolment token has been used
//      "access_token_sha256": "<hex>|",     // of the access token issued at enrolment
//      "instance": "<id>|",                 // pinned instance ("" = the current one)
//      "bundle_instance": "<id>|",          // the instance of the last bundle sent
//      "created_at": "...Z", "enrolled_at": "...Z|"}]}
//
// Every operation re-reads the file under an exclusive flock (the state's
// .users.lock), so `add-user` works while `serve` is running.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace stip {

class StateStore;

struct UserRecord {
  std::string name;
  std::string enrolment_token_sha256;
  bool enrolled = false;
  std::string access_token_sha256;  // "" until enrolled
  std::string instance;             // pinned instance id, "" = follow the current instance
  std::string bundle_instance;      // instance of the last bundle sent, "" = none yet
  std::string created_at;
  std::string enrolled_at;
};

// 32 bytes from OpenSSL RAND_bytes as 64 lowercase hex characters.
std::string NewSecretToken();
// Lowercase hex SHA-256 of `text`.
std::string Sha256Hex(const std::string& text);
// Constant-time equality of two strings of equal length (false otherwise).
bool ConstantTimeEquals(const std::string& a, const std::string& b);
// Names: 1-64 characters of [A-Za-z0-9._@-], not starting with '.' or '-'.
bool IsValidUserName(const std::string& name);

class UserRegistry {
 public:
  explicit UserRegistry(const StateStore& state);

  // Creates `name` with a fresh enrolment token and returns the token (the
  // only time it exists in clear). An existing name is kFailedPrecondition
  // unless `reissue`: then the user gets a new enrolment token, the old one
  // and any access token issued before stop working, and the user must
  // register again. `instance` pins the user to an instance ("" = current).
  std::string AddUser(const std::string& name, const std::string& instance, bool reissue);

  std::optional<UserRecord> Find(const std::string& name) const;
  std::vector<UserRecord> List() const;

  struct Enrolment {
    UserRecord user;
    std::string access_token;  // fresh; only its hash is stored
  };
  // Consumes the enrolment token and issues an access token, persisted before
  // returning. nullopt for an unknown user, a wrong token or one already
  // used (indistinguishable on purpose).
  std::optional<Enrolment> Enrol(const std::string& name, const std::string& enrolment_token);

  // True iff `enrolment_token` would enrol `name` now (nothing changes).
  bool CheckEnrolmentToken(const std::string& name, const std::string& enrolment_token) const;

  // The user iff `access_token` is the one issued at their enrolment.
  std::optional<UserRecord> Authenticate(const std::string& name,
                                         const std::string& access_token) const;

  // Records which instance the user's last bundle was for.
  void RecordBundle(const std::string& name, const std::string& instance);

 private:
  std::vector<UserRecord> Load() const;  // caller holds the lock
  void Save(const std::vector<UserRecord>& users) const;

  std::string path_;
  std::string lock_path_;
};

}  // namespace stip
