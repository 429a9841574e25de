#include "developer/user_registry.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/util/files.h"
#include "developer/state_store.h"

namespace stip {

namespace {

std::string Hex(const unsigned char* data, size_t n) {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  out.reserve(2 * n);
  for (size_t i = 0; i < n; ++i) {
    out += kHex[data[i] >> 4];
    out += kHex[data[i] & 15];
  }
  return out;
}

UserRecord FromJson(const nlohmann::json& j) {
  UserRecord u;
  u.name = j.value("name", "");
  u.enrolment_token_sha256 = j.value("enrolment_token_sha256", "");
  u.enrolled = j.value("enrolled", false);
  u.access_token_sha256 = j.value("access_token_sha256", "");
  u.instance = j.value("instance", "");
  u.bundle_instance = j.value("bundle_instance", "");
  u.created_at = j.value("created_at", "");
  u.enrolled_at = j.value("enrolled_at", "");
  return u;
}

nlohmann::json ToJson(const UserRecord& u) {
  return {{"name", u.name},
          {"enrolment_token_sha256", u.enrolment_token_sha256},
          {"enrolled", u.enrolled},
          {"access_token_sha256", u.access_token_sha256},
          {"instance", u.instance},
          {"bundle_instance", u.bundle_instance},
          {"created_at", u.created_at},
          {"enrolled_at", u.enrolled_at}};
}

// A hash that no token hashes to, compared against when the user is unknown so
// that both paths do the same work.
const std::string kNoHash(64, 'x');

}  // namespace

std::string NewSecretToken() {
  unsigned char bytes[32];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) {
    throw Internal("CSPRNG failure: OpenSSL RAND_bytes did not return random bytes");
  }
  std::string token = Hex(bytes, sizeof(bytes));
  OPENSSL_cleanse(bytes, sizeof(bytes));
  return token;
}

std::string Sha256Hex(const std::string& text) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_Digest(text.data(), text.size(), md, &n, EVP_sha256(), nullptr) != 1) {
    throw Internal("SHA-256 failed");
  }
  return Hex(md, n);
}

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
    : path_(state.users_path()), lock_path_(state.users_lock_path()) {}

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
                                  bool reissue) {
  if (!IsValidUserName(name)) {
    throw InvalidArgument("user name \"" + name.substr(0, 80) +
                          "\" is not 1-64 characters of A-Z a-z 0-9 . _ @ - "
                          "(not starting with '.' or '-')");
  }
  if (!instance.empty() && !IsValidInstanceId(instance)) {
    throw InvalidArgument("\"" + instance.substr(0, 80) + "\" is not an instance id");
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
  }
  it->enrolment_token_sha256 = Sha256Hex(token);
  it->enrolled = false;
  it->access_token_sha256.clear();
  it->enrolled_at.clear();
  it->instance = instance;
  Save(users);
  return token;
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

std::optional<UserRegistry::Enrolment> UserRegistry::Enrol(const std::string& name,
                                                           const std::string& enrolment_token) {
  std::string presented = Sha256Hex(enrolment_token);
  FileLock lock(lock_path_);
  std::vector<UserRecord> users = Load();
  auto it =
      std::find_if(users.begin(), users.end(), [&](const UserRecord& u) { return u.name == name; });
  bool known = it != users.end();
  bool match = ConstantTimeEquals(presented, known ? it->enrolment_token_sha256 : kNoHash);
  if (!known || !match || it->enrolled) return std::nullopt;
  Enrolment e;
  e.access_token = NewSecretToken();
  it->enrolled = true;
  it->enrolled_at = NowRfc3339();
  it->access_token_sha256 = Sha256Hex(e.access_token);
  Save(users);  // the token is used before anything is sent
  e.user = *it;
  return e;
}

bool UserRegistry::CheckEnrolmentToken(const std::string& name,
                                       const std::string& enrolment_token) const {
  std::string presented = Sha256Hex(enrolment_token);
  std::optional<UserRecord> u = Find(name);
  bool match = ConstantTimeEquals(presented, u ? u->enrolment_token_sha256 : kNoHash);
  return u && match && !u->enrolled;
}

std::optional<UserRecord> UserRegistry::Authenticate(const std::string& name,
                                                     const std::string& access_token) const {
  std::string presented = Sha256Hex(access_token);
  std::optional<UserRecord> u = Find(name);
  bool ok = ConstantTimeEquals(presented, u ? u->access_token_sha256 : kNoHash);
  if (!u || !u->enrolled || !ok) return std::nullopt;
  return u;
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
