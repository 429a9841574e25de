#include "developer/state_store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <nlohmann/json.hpp>

#include "common/arch/model_config.h"
#include "common/auth/access_token.h"
#include "common/error.h"
#include "common/keys/model_keys.h"
#include "common/util/file_lock.h"
#include "common/util/files.h"
#include "common/util/random.h"

namespace stip {

namespace {

constexpr char kTempMarker[] = ".tmp-";
constexpr char kDeletingMarker[] = ".deleting-";

std::string Trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

// `path` made absolute (recorded so that `rotate` finds the model from anywhere).
std::string AbsolutePath(const std::string& path) {
  char buf[PATH_MAX];
  if (realpath(path.c_str(), buf)) return buf;
  return path;
}

}  // namespace

std::string NowRfc3339() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

bool IsValidInstanceId(const std::string& id) {
  if (id.empty() || id.size() > 64) return false;
  return std::all_of(id.begin(), id.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

StateStore::StateStore(std::string dir) : dir_(std::move(dir)) {
  if (dir_.empty()) throw InvalidArgument("state directory not given");
  while (dir_.size() > 1 && dir_.back() == '/') dir_.pop_back();
  MakeDirectories(dir_, 0700);
  if (!IsDirectory(instances_dir())) MakeDirectories(instances_dir(), 0700);
}

std::string StateStore::users_path() const { return JoinPath(dir_, "users.json"); }
std::string StateStore::users_lock_path() const { return JoinPath(dir_, ".users.lock"); }
std::string StateStore::revoked_path() const { return JoinPath(dir_, "revoked.json"); }
std::string StateStore::token_key_path() const { return JoinPath(dir_, "token_signing_key.pem"); }
std::string StateStore::serve_lock_path() const { return JoinPath(dir_, ".serve.lock"); }

bool StateStore::ServeRunning() const { return FileLock::TryLock(serve_lock_path()) == nullptr; }

auth::SigningKey StateStore::TokenSigningKey() const {
  return auth::SigningKey::LoadOrCreate(token_key_path());
}

std::string StateStore::previous_token_keys_path() const {
  return JoinPath(dir_, "token_keys_previous.json");
}

namespace {

// token_keys_previous.json: [{"pem", "accepted_until"}], all of them (expired
// ones included: they are dropped when the next rotation rewrites the file).
std::vector<auth::PreviousTokenKey> ReadPreviousTokenKeys(const std::string& path) {
  std::vector<auth::PreviousTokenKey> keys;
  if (!PathExists(path)) return keys;
  try {
    nlohmann::json j = nlohmann::json::parse(ReadFile(path));
    for (const auto& k : j.at("previous_token_keys")) {
      keys.push_back({auth::PublicKey::FromPem(k.at("pem").get<std::string>()),
                      k.at("accepted_until").get<int64_t>()});
    }
  } catch (const std::exception& e) {
    throw DataLoss(path + ": not a valid list of previous token keys (" + e.what() + ")");
  }
  return keys;
}

}  // namespace

std::vector<auth::PreviousTokenKey> StateStore::PreviousTokenKeys(int64_t now) const {
  std::vector<auth::PreviousTokenKey> keys;
  for (auth::PreviousTokenKey& k : ReadPreviousTokenKeys(previous_token_keys_path())) {
    if (k.accepted_until > now) keys.push_back(std::move(k));
  }
  return keys;
}

StateStore::TokenKeyRotation StateStore::RotateTokenSigningKey(int64_t keep_previous_s) {
  if (keep_previous_s < 0) throw InvalidArgument("the previous key's grace period is negative");
  // Holding the serve lock: no serve runs (it would keep signing with the old
  // key) and none starts until the new key is in place.
  std::unique_ptr<FileLock> no_serve = FileLock::TryLock(serve_lock_path());
  if (!no_serve) {
    throw FailedPrecondition("`stip-developer serve` runs on " + dir_ +
                             ": stop it first; when it starts again it registers the new key "
                             "with every server");
  }
  const auth::SigningKey old_key = TokenSigningKey();
  const int64_t now = auth::NowUnix();
  TokenKeyRotation r;
  r.old_key_id = old_key.public_key().key_id();
  r.old_accepted_until = now + keep_previous_s;
  // The old public half joins the list first: a crash before the new key is
  // written leaves the current key in the list too, which verifiers ignore.
  // With no grace period (a compromise: which key leaked is unknown) every
  // earlier key goes too.
  nlohmann::json list = nlohmann::json::array();
  if (keep_previous_s > 0) {
    for (const auth::PreviousTokenKey& k : ReadPreviousTokenKeys(previous_token_keys_path())) {
      if (k.accepted_until <= now || k.key.key_id() == r.old_key_id) continue;
      list.push_back({{"pem", k.key.pem()}, {"accepted_until", k.accepted_until}});
    }
    list.push_back({{"pem", old_key.public_key().pem()}, {"accepted_until", r.old_accepted_until}});
    // Servers take at most kMaxPreviousTokenKeys (16): the ones that expire
    // first go.
    constexpr size_t kMaxPrevious = 16;
    if (list.size() > kMaxPrevious) {
      std::sort(list.begin(), list.end(), [](const nlohmann::json& a, const nlohmann::json& b) {
        return a["accepted_until"].get<int64_t>() > b["accepted_until"].get<int64_t>();
      });
      r.dropped_previous = static_cast<int>(list.size() - kMaxPrevious);
      list.erase(list.begin() + kMaxPrevious, list.end());
    }
  }
  WriteFileAtomic(previous_token_keys_path(),
                  nlohmann::json{{"version", 1}, {"previous_token_keys", list}}.dump(1) + "\n",
                  0600);
  const auth::SigningKey fresh = auth::SigningKey::Generate();
  WriteFileAtomic(token_key_path(), fresh.PrivatePem(), 0600);  // the old private key is gone
  SyncDirectory(dir_);
  r.new_key_id = fresh.public_key().key_id();
  return r;
}
std::string StateStore::instances_dir() const { return JoinPath(dir_, "instances"); }

std::string StateStore::InstanceDir(const std::string& instance_id) const {
  if (!IsValidInstanceId(instance_id)) {
    throw InvalidArgument("\"" + instance_id.substr(0, 80) +
                          "\" is not an instance id (lowercase hex)");
  }
  return JoinPath(instances_dir(), instance_id);
}
std::string StateStore::ServerDir(const std::string& id) const {
  return JoinPath(InstanceDir(id), "server");
}
std::string StateStore::ClientDir(const std::string& id) const {
  return JoinPath(InstanceDir(id), "client");
}
std::string StateStore::KeysPath(const std::string& id) const {
  return JoinPath(InstanceDir(id), "keys.safetensors");
}

std::optional<InstanceInfo> StateStore::ReadInstance(const std::string& instance_id) const {
  if (!IsValidInstanceId(instance_id)) return std::nullopt;
  std::string dir = InstanceDir(instance_id);
  if (!IsDirectory(dir)) return std::nullopt;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(ReadFile(JoinPath(dir, "instance.json")));
  } catch (const std::exception& e) {
    throw DataLoss(JoinPath(dir, "instance.json") + ": unreadable (" + e.what() + ")");
  }
  InstanceInfo info;
  info.instance_id = j.value("instance_id", "");
  info.model_fingerprint = j.value("model_fingerprint", "");
  info.model_type = j.value("model_type", "");
  info.model_dir = j.value("model_dir", "");
  info.created_at = j.value("created_at", "");
  if (info.instance_id != instance_id) {
    throw DataLoss(JoinPath(dir, "instance.json") + ": records instance \"" +
                   info.instance_id.substr(0, 80) + "\", not " + instance_id);
  }
  return info;
}

bool StateStore::HasInstance(const std::string& instance_id) const {
  return IsValidInstanceId(instance_id) &&
         PathExists(JoinPath(InstanceDir(instance_id), "instance.json"));
}

InstanceInfo StateStore::GetInstance(const std::string& instance_id) const {
  std::optional<InstanceInfo> info = ReadInstance(instance_id);
  if (!info) throw NotFound("instance " + instance_id.substr(0, 80) + " is not in " + dir_);
  return *info;
}

std::vector<InstanceInfo> StateStore::ListInstances() const {
  std::vector<InstanceInfo> out;
  for (const std::string& name : ListDirectory(instances_dir())) {
    if (name.find(kTempMarker) != std::string::npos || !IsValidInstanceId(name)) continue;
    if (!HasInstance(name)) continue;
    out.push_back(*ReadInstance(name));
  }
  std::stable_sort(out.begin(), out.end(), [](const InstanceInfo& a, const InstanceInfo& b) {
    return a.created_at < b.created_at;
  });
  return out;
}

std::optional<std::string> StateStore::CurrentInstance() const {
  std::string path = JoinPath(dir_, "current_instance");
  if (!PathExists(path)) return std::nullopt;
  std::string id = Trim(ReadFile(path));
  if (id.empty()) return std::nullopt;
  if (!IsValidInstanceId(id)) throw DataLoss(path + ": does not hold an instance id");
  return id;
}

void StateStore::SetCurrentInstance(const std::string& instance_id) const {
  if (!HasInstance(instance_id)) {
    throw NotFound("instance " + instance_id.substr(0, 80) + " is not in " + dir_);
  }
  WriteFileAtomic(JoinPath(dir_, "current_instance"), instance_id + "\n", 0600);
  SyncDirectory(dir_);
}

StateStore::Ensured StateStore::EnsureInstanceForModel(const std::string& model_dir,
                                                       const TransformOptions& options,
                                                       const std::set<std::string>& reserved) {
  FileLock lock(JoinPath(dir_, ".instances.lock"));
  ModelConfig config = LoadModelConfig(model_dir);
  std::string fingerprint = FingerprintModel(model_dir);

  Ensured result;
  std::optional<std::string> current = CurrentInstance();
  if (current && HasInstance(*current)) {
    InstanceInfo info = GetInstance(*current);
    if (info.model_fingerprint == fingerprint) {
      result.info = info;
      return result;
    }
  }
  std::vector<InstanceInfo> all = ListInstances();
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    if (it->model_fingerprint == fingerprint && !reserved.count(it->instance_id)) {
      SetCurrentInstance(it->instance_id);
      result.info = *it;
      return result;
    }
  }

  result = MakeInstanceLocked(model_dir, config, fingerprint, options);
  SetCurrentInstance(result.info.instance_id);
  return result;
}

StateStore::Ensured StateStore::MakeInstance(const std::string& model_dir,
                                             const TransformOptions& options) {
  FileLock lock(JoinPath(dir_, ".instances.lock"));
  ModelConfig config = LoadModelConfig(model_dir);
  std::string fingerprint = FingerprintModel(model_dir);
  return MakeInstanceLocked(model_dir, config, fingerprint, options);
}

StateStore::Ensured StateStore::MakeInstanceLocked(const std::string& model_dir,
                                                   const ModelConfig& config,
                                                   const std::string& fingerprint,
                                                   const TransformOptions& options) {
  Ensured result;
  // Leftovers of an interrupted build are never used: remove them.
  for (const std::string& name : ListDirectory(instances_dir())) {
    if (name.find(kTempMarker) != std::string::npos ||
        name.find(kDeletingMarker) != std::string::npos) {
      RemoveAll(JoinPath(instances_dir(), name));
    }
  }

  ModelKeys keys = GenerateKeys(config, fingerprint);
  ValidateKeys(keys, config);
  std::string final_dir = InstanceDir(keys.instance_id);
  if (PathExists(final_dir)) throw Internal("instance id collision: " + keys.instance_id);
  std::string tmp = MakeTempDirectoryBeside(final_dir, 0700);
  try {
    SaveKeys(JoinPath(tmp, "keys.safetensors"), keys);
    result.stats = TransformCheckpoint(model_dir, tmp, keys, options);
    // Everything in the state is the developer's alone.
    for (const char* sub : {"server", "client"}) {
      const std::string path = JoinPath(tmp, sub);
      if (IsDirectory(path) && chmod(path.c_str(), 0700) != 0) {
        throw Internal(path + ": cannot make it private (" + std::strerror(errno) + ")");
      }
    }
    InstanceInfo info;
    info.instance_id = keys.instance_id;
    info.model_fingerprint = fingerprint;
    info.model_type = keys.model_type;
    info.model_dir = AbsolutePath(model_dir);
    info.created_at = NowRfc3339();
    nlohmann::json j = {{"version", 1},
                        {"instance_id", info.instance_id},
                        {"model_fingerprint", info.model_fingerprint},
                        {"model_type", info.model_type},
                        {"model_dir", info.model_dir},
                        {"created_at", info.created_at}};
    WriteFileAtomic(JoinPath(tmp, "instance.json"), j.dump(2) + "\n", 0600);
    SyncDirectory(tmp);
    RenamePath(tmp, final_dir);
    SyncDirectory(instances_dir());
    result.info = info;
  } catch (...) {
    RemoveAll(tmp);
    throw;
  }
  result.created = true;
  return result;
}

void StateStore::RemoveInstance(const std::string& instance_id) {
  FileLock lock(JoinPath(dir_, ".instances.lock"));
  const std::string dir = InstanceDir(instance_id);
  if (!IsDirectory(dir)) throw NotFound("instance " + instance_id + " is not in " + dir_);
  const std::string doomed = dir + kDeletingMarker + RandomHex(6);
  RenamePath(dir, doomed);
  SyncDirectory(instances_dir());
  RemoveAll(doomed);
}

}  // namespace stip
