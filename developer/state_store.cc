#include "developer/state_store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <nlohmann/json.hpp>

#include "common/arch/model_config.h"
#include "common/error.h"
#include "common/keys/model_keys.h"
#include "common/util/files.h"

namespace stip {

namespace {

constexpr char kTempMarker[] = ".tmp-";

std::string Trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

}  // namespace

FileLock::FileLock(const std::string& path) {
  fd_ = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd_ < 0) throw Internal(path + ": cannot open lock file (" + std::strerror(errno) + ")");
  while (flock(fd_, LOCK_EX) != 0) {
    if (errno == EINTR) continue;
    int err = errno;
    close(fd_);
    fd_ = -1;
    throw Internal(path + ": cannot lock (" + std::strerror(err) + ")");
  }
}

FileLock::~FileLock() {
  if (fd_ >= 0) close(fd_);  // releases the lock
}

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

auth::SigningKey StateStore::TokenSigningKey() const {
  return auth::SigningKey::LoadOrCreate(token_key_path());
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

void StateStore::SetCurrentInstance(const std::string& instance_id) {
  if (!HasInstance(instance_id)) {
    throw NotFound("instance " + instance_id.substr(0, 80) + " is not in " + dir_);
  }
  WriteFileAtomic(JoinPath(dir_, "current_instance"), instance_id + "\n", 0600);
  SyncDirectory(dir_);
}

StateStore::Ensured StateStore::EnsureInstanceForModel(const std::string& model_dir,
                                                       const TransformOptions& options) {
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
    if (it->model_fingerprint == fingerprint) {
      SetCurrentInstance(it->instance_id);
      result.info = *it;
      return result;
    }
  }

  // Leftovers of an interrupted build are never used: remove them.
  for (const std::string& name : ListDirectory(instances_dir())) {
    if (name.find(kTempMarker) != std::string::npos) RemoveAll(JoinPath(instances_dir(), name));
  }

  ModelKeys keys = GenerateKeys(config, fingerprint);
  ValidateKeys(keys, config);
  std::string final_dir = InstanceDir(keys.instance_id);
  if (PathExists(final_dir)) throw Internal("instance id collision: " + keys.instance_id);
  std::string tmp = MakeTempDirectoryBeside(final_dir, 0700);
  try {
    SaveKeys(JoinPath(tmp, "keys.safetensors"), keys);
    result.stats = TransformCheckpoint(model_dir, tmp, keys, options);
    InstanceInfo info;
    info.instance_id = keys.instance_id;
    info.model_fingerprint = fingerprint;
    info.model_type = keys.model_type;
    info.model_dir = model_dir;
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
  SetCurrentInstance(result.info.instance_id);
  result.created = true;
  return result;
}

}  // namespace stip
