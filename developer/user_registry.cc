#include "developer/user_registry.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/util/files.h"
#include "common/util/random.h"
#include "developer/instance_groups.h"
#include "developer/state_store.h"

namespace stip {

namespace {

UserRecord FromJson(const nlohmann::json& j) {
  UserRecord u;
  u.name = j.value("name", "");
  u.enrolment_token_sha256 = j.value("enrolment_token_sha256", "");
  u.enrolled = j.value("enrolled", false);
  u.access_token_id = j.value("access_token_id", "");
  u.access_token_expires_at = j.value("access_token_expires_at", int64_t{0});
  u.revoked = j.value("revoked", false);
  u.revoked_at = j.value("revoked_at", "");
  u.instance = j.value("instance", "");
  u.group = j.value("group", "");
  u.bundle_instance = j.value("bundle_instance", "");
  u.created_at = j.value("created_at", "");
  u.enrolled_at = j.value("enrolled_at", "");
  return u;
}

nlohmann::json ToJson(const UserRecord& u) {
  return {{"name", u.name},
          {"enrolment_token_sha256", u.enrolment_token_sha256},
          {"enrolled", u.enrolled},
          {"access_token_id", u.access_token_id},
          {"access_token_expires_at", u.access_token_expires_at},
          {"revoked", u.revoked},
          {"revoked_at", u.revoked_at},
          {"instance", u.instance},
          {"group", u.group},
          {"bundle_instance", u.bundle_instance},
          {"created_at", u.created_at},
          {"enrolled_at", u.enrolled_at}};
}

// A hash that no token hashes to, compared against when the user is unknown so
// that both paths do the same work.
const std::string kNoHash(64, 'x');

}  // namespace

std::string NewSecretToken() { return RandomHex(32); }

bool ConstantTimeEquals(const std::string& a, const std::string& b) {
  if (a.size() != b.size() || a.empty()) return false;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

bool IsValidUserName(const std::string& name) {
  if (name.empty() || name.size() > 64 || name[0] == '.' || name[0] == '-') return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '@' || c == '-';
  });
}

UserRegistry::UserRegistry(const StateStore& state)
    : state_(state),
      path_(state.users_path()),
      lock_path_(state.users_lock_path()),
      revoked_path_(state.revoked_path()) {}

std::vector<UserRecord> UserRegistry::Load() const {
  std::vector<UserRecord> users;
  if (!PathExists(path_)) return users;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(ReadFile(path_));
  } catch (const nlohmann::json::exception& e) {
    throw DataLoss(path_ + ": not valid JSON (" + e.what() + ")");
  }
  if (!j.is_object() || j.value("version", 0) != 1 || !j.contains("users") ||
      !j["users"].is_array()) {
    throw DataLoss(path_ + ": not a version 1 users file");
  }
  for (const auto& u : j["users"]) {
    if (!u.is_object()) throw DataLoss(path_ + ": a user record is not an object");
    users.push_back(FromJson(u));
  }
  return users;
}

void UserRegistry::Save(const std::vector<UserRecord>& users) const {
  std::vector<UserRecord> sorted = users;
  std::sort(sorted.begin(), sorted.end(),
            [](const UserRecord& a, const UserRecord& b) { return a.name < b.name; });
  nlohmann::json list = nlohmann::json::array();
  for (const auto& u : sorted) list.push_back(ToJson(u));
  nlohmann::json j = {{"version", 1}, {"users", list}};
  WriteFileAtomic(path_, j.dump(2) + "\n", 0600);
}

std::string UserRegistry::AddUser(const std::string& name, const std::string& instance,
                                  bool reissue, const std::string& group) {
  if (!IsValidUserName(name)) {
    throw InvalidArgument("user name \"" + name.substr(0, 80) +
                          "\" is not 1-64 characters of A-Z a-z 0-9 . _ @ - "
                          "(not starting with '.' or '-')");
  }
  if (!instance.empty() && !IsValidInstanceId(instance)) {
    throw InvalidArgument("\"" + instance.substr(0, 80) + "\" is not an instance id");
  }
  if (!group.empty() && !IsValidGroupName(group)) {
    throw InvalidArgument("\"" + group.substr(0, 80) + "\" is not a group name");
  }
  FileLock lock(lock_path_);
  std::vector<UserRecord> users = Load();
  auto it =
      std::find_if(users.begin(), users.end(), [&](const UserRecord& u) { return u.name == name; });
  if (it != users.end() && !reissue) {
    throw FailedPrecondition("user \"" + name +
                             "\" already exists (pass --reissue for a new enrolment token)");
  }
  std::string token = NewSecretToken();
  if (it == users.end()) {
    UserRecord u;
    u.name = name;
    u.created_at = NowRfc3339();
    users.push_back(u);
    it = users.end() - 1;
  } else {
    RevokeCurrentToken(*it);  // before the record forgets it
  }
  it->enrolment_token_sha256 = Sha256Hex(token);
  it->enrolled = false;
  it->access_token_id.clear();
  it->access_token_expires_at = 0;
  it->revoked = false;
  it->revoked_at.clear();
  it->enrolled_at.clear();
  it->instance = instance;
  it->group = group == kDefaultGroup ? "" : group;
  Save(users);
  return token;
}

int UserRegistry::MoveInstance(const std::string& from, const std::string& to) {
  if (from.empty() || to.empty()) return 0;
  FileLock lock(lock_path_);
  std::vector<UserRecord> users = Load();
  int moved = 0;
  for (UserRecord& u : users) {
    if (u.instance == from) {
      u.instance = to;
      ++moved;
    }
  }
  if (moved > 0) Save(users);
  return moved;
}

std::optional<UserRecord> UserRegistry::Find(const std::string& name) const {
  FileLock lock(lock_path_);
  for (const UserRecord& u : Load()) {
    if (u.name == name) return u;
  }
  return std::nullopt;
}

std::vector<UserRecord> UserRegistry::List() const {
  FileLock lock(lock_path_);
  return Load();
}

UserRegistry::Enrolment UserRegistry::Issue(UserRecord& user, const TokenIssue& issue) const {
  if (!issue.key) throw Internal("no token signing key");
  if (issue.ttl_s <= 0) throw InvalidArgument("the access token lifetime must be positive");
  Enrolment e;
  e.instance = InstanceGroups(state_).InstanceFor(user.instance, user.group);
  auth::TokenClaims claims;
  claims.user = user.name;
  claims.instance = e.instance;
  claims.token_id = auth::NewTokenId();
  claims.issued_at = auth::NowUnix();
  claims.expires_at = claims.issued_at + issue.ttl_s;
  e.access_token = auth::IssueToken(*issue.key, claims);
  e.expires_at = claims.expires_at;
  user.access_token_id = claims.token_id;
  user.access_token_expires_at = claims.expires_at;
  return e;
}

std::optional<UserRegistry::Enrolment> UserRegistry::Enrol(const std::string& name,
                                                           const std::string& enrolment_token,
                                                           const TokenIssue& issue) {
  std::string presented = Sha256Hex(enrolment_token);
  FileLock lock(lock_path_);
  std::vector<UserRecord> users = Load();
  auto it =
      std::find_if(users.begin(), users.end(), [&](const UserRecord& u) { return u.name == name; });
  bool known = it != users.end();
  bool match = ConstantTimeEquals(presented, known ? it->enrolment_token_sha256 : kNoHash);
  if (!known || !match || it->enrolled || it->revoked) return std::nullopt;
  Enrolment e = Issue(*it, issue);
  it->enrolled = true;
  it->enrolled_at = NowRfc3339();
  Save(users);  // the token is used before anything is sent
  e.user = *it;
  return e;
}

bool UserRegistry::CheckEnrolmentToken(const std::string& name,
                                       const std::string& enrolment_token) const {
  std::string presented = Sha256Hex(enrolment_token);
  std::optional<UserRecord> u = Find(name);
  bool match = ConstantTimeEquals(presented, u ? u->enrolment_token_sha256 : kNoHash);
  return u && match && !u->enrolled && !u->revoked;
}

UserRegistry::AccessCheck UserRegistry::Authenticate(
    const std::string& name, const std::string& access_token, const auth::PublicKey& key,
    const std::vector<auth::PreviousTokenKey>& previous) const {
  AccessCheck check;
  std::vector<auth::RevokedToken> revoked = RevokedTokens();
  auto is_revoked = [&](const std::string& id) {
    return std::any_of(revoked.begin(), revoked.end(),
                       [&](const auth::RevokedToken& r) { return r.token_id == id; });
  };
  auth::TokenCheck t =
      auth::VerifyTokenWithKeys(key, previous, access_token, "", auth::NowUnix(), is_revoked);
  if (t.verdict == auth::TokenVerdict::kMalformed ||
      t.verdict == auth::TokenVerdict::kBadSignature || t.claims.user != name) {
    return check;  // kInvalid: says nothing about who exists
  }
  std::optional<UserRecord> u = Find(name);
  if (!u || !u->enrolled) return check;
  if (u->revoked || t.verdict == auth::TokenVerdict::kRevoked) {
    check.outcome = AccessCheck::kRevoked;
    return check;
  }
  if (!ConstantTimeEquals(t.claims.token_id, u->access_token_id)) return check;  // replaced
  if (t.verdict == auth::TokenVerdict::kExpired) {
    check.outcome = AccessCheck::kExpired;
    check.message = t.message;
    return check;
  }
  if (!t.ok()) return check;
  check.outcome = AccessCheck::kOk;
  check.user = *u;
  check.claims = t.claims;
  return check;
}

std::optional<UserRegistry::Enrolment> UserRegistry::RenewAccessToken(
    const std::string& name, const std::string& current_token_id, const TokenIssue& issue) {
  FileLock lock(lock_path_);
  std::vector<UserRecord> users = Load();
  auto it =
      std::find_if(users.begin(), users.end(), [&](const UserRecord& u) { return u.name == name; });
  if (it == users.end() || it->revoked || !it->enrolled ||
      !ConstantTimeEquals(current_token_id, it->access_token_id)) {
    return std::nullopt;
  }
  RevokeCurrentToken(*it);
  Enrolment e = Issue(*it, issue);
  Save(users);
  e.user = *it;
  return e;
}

std::string UserRegistry::Revoke(const std::string& name) {
  FileLock lock(lock_path_);
  std::vector<UserRecord> users = Load();
  auto it =
      std::find_if(users.begin(), users.end(), [&](const UserRecord& u) { return u.name == name; });
  if (it == users.end()) throw NotFound("no user \"" + name.substr(0, 80) + "\"");
  RevokeCurrentToken(*it);  // the list first: a crash in between leaves more revoked, not less
  const std::string id = it->access_token_id;
  it->revoked = true;
  it->revoked_at = NowRfc3339();
  it->enrolment_token_sha256.clear();
  Save(users);
  return id;
}

std::vector<UserRegistry::RevokedEntry> UserRegistry::LoadRevoked() const {
  std::vector<RevokedEntry> out;
  if (!PathExists(revoked_path_)) return out;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(ReadFile(revoked_path_));
  } catch (const nlohmann::json::exception& e) {
    throw DataLoss(revoked_path_ + ": not valid JSON (" + e.what() + ")");
  }
  if (!j.is_object() || j.value("version", 0) != 1 || !j.contains("tokens") ||
      !j["tokens"].is_array()) {
    throw DataLoss(revoked_path_ + ": not a version 1 revocation list");
  }
  for (const auto& t : j["tokens"]) {
    if (!t.is_object()) throw DataLoss(revoked_path_ + ": an entry is not an object");
    RevokedEntry e;
    e.token_id = t.value("token_id", "");
    e.user = t.value("user", "");
    e.revoked_at = t.value("revoked_at", "");
    e.expires_at = t.value("expires_at", int64_t{0});
    if (!auth::IsValidTokenId(e.token_id)) {
      throw DataLoss(revoked_path_ + ": an entry has no valid token id");
    }
    out.push_back(e);
  }
  return out;
}

void UserRegistry::SaveRevoked(const std::vector<RevokedEntry>& entries) const {
  const int64_t now = auth::NowUnix();
  nlohmann::json list = nlohmann::json::array();
  for (const RevokedEntry& e : entries) {
    if (e.expires_at <= now) continue;  // expired anyway
    list.push_back({{"token_id", e.token_id},
                    {"user", e.user},
                    {"expires_at", e.expires_at},
                    {"revoked_at", e.revoked_at}});
  }
  nlohmann::json j = {{"version", 1}, {"tokens", list}};
  WriteFileAtomic(revoked_path_, j.dump(2) + "\n", 0600);
}

void UserRegistry::RevokeCurrentToken(const UserRecord& user) const {
  if (user.access_token_id.empty() || user.access_token_expires_at <= auth::NowUnix()) return;
  std::vector<RevokedEntry> entries = LoadRevoked();
  for (const RevokedEntry& e : entries) {
    if (e.token_id == user.access_token_id) return;
  }
  RevokedEntry e;
  e.token_id = user.access_token_id;
  e.user = user.name;
  e.expires_at = user.access_token_expires_at;
  e.revoked_at = NowRfc3339();
  entries.push_back(e);
  SaveRevoked(entries);
}

std::vector<auth::RevokedToken> UserRegistry::RevokedTokens() const {
  FileLock lock(lock_path_);
  const int64_t now = auth::NowUnix();
  std::vector<auth::RevokedToken> out;
  for (const RevokedEntry& e : LoadRevoked()) {
    if (e.expires_at > now) out.push_back({e.token_id, e.expires_at});
  }
  return out;
}

void UserRegistry::RecordBundle(const std::string& name, const std::string& instance) {
  FileLock lock(lock_path_);
  std::vector<UserRecord> users = Load();
  for (UserRecord& u : users) {
    if (u.name == name && u.bundle_instance != instance) {
      u.bundle_instance = instance;
      Save(users);
      return;
    }
  }
}

}  // namespace stip
