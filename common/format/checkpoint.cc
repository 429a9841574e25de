#include "common/format/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

#include "common/error.h"

namespace stip {
namespace {

using json = nlohmann::json;

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";
// Real indexes are a few hundred KiB at most.
constexpr uint64_t kMaxIndexSize = 64ull << 20;

std::string Join(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  if (dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

// True if `path` exists (whatever it is); errors other than ENOENT count as
// existing so that opening it reports the real problem.
bool Exists(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) return true;
  return errno != ENOENT && errno != ENOTDIR;
}

std::string ReadIndex(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    std::string msg = path + ": cannot open: " + std::strerror(err);
    if (err == ENOENT || err == ENOTDIR) throw NotFound(msg);
    if (err == EACCES || err == EPERM) throw Error(ErrorCode::kPermissionDenied, msg);
    throw Internal(msg);
  }
  std::string text;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      throw Internal(path + ": read failed: " + std::strerror(err));
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    if (text.size() > kMaxIndexSize) {
      ::close(fd);
      throw DataLoss(path + ": index larger than " + std::to_string(kMaxIndexSize) + " bytes");
    }
  }
  ::close(fd);
  return text;
}

// Parses JSON, rejecting duplicate keys (which nlohmann::json would resolve
// silently by keeping the last): a tensor listed twice in weight_map is
// ambiguous.
json ParseJsonStrict(const std::string& text, const std::string& source) {
  std::vector<std::set<std::string>> keys;
  std::string duplicate;
  auto callback = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) {
      keys.emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (event == json::parse_event_t::key && !keys.empty() && parsed.is_string()) {
      if (!keys.back().insert(parsed.get<std::string>()).second && duplicate.empty()) {
        duplicate = parsed.get<std::string>();
      }
    }
    return true;
  };
  json j;
  try {
    j = json::parse(text, callback, /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const json::exception& e) {
    throw DataLoss(source + ": not valid JSON: " + e.what());
  }
  if (!duplicate.empty())
    throw DataLoss(source + ": duplicate key " + QuoteForMessage(duplicate, 200));
  return j;
}

// A shard must be a plain file name inside the checkpoint directory.
void CheckShardName(const std::string& shard, const std::string& tensor,
                    const std::string& source) {
  const std::string what = source + ": tensor " + QuoteForMessage(tensor, 200) + " maps to shard " +
                           QuoteForMessage(shard, 200);
  if (shard.empty()) throw InvalidArgument(what + ": empty file name");
  if (shard.find('/') != std::string::npos || shard.find('\\') != std::string::npos) {
    throw InvalidArgument(what + ": shard names must not contain a path separator");
  }
  if (shard.find("..") != std::string::npos || shard == ".") {
    throw InvalidArgument(what + ": shard names must not contain \"..\" or be \".\"");
  }
  if (shard.find('\0') != std::string::npos) {
    throw InvalidArgument(what + ": shard name contains a NUL byte");
  }
}

}  // namespace

Checkpoint Checkpoint::Open(const std::string& dir) {
  Checkpoint c;
  c.dir_ = dir;
  const std::string single = Join(dir, kSingleFile);
  const std::string index_path = Join(dir, kIndexFile);

  // Like transformers, prefer the single file when both are present.
  if (Exists(single)) {
    auto file = SafetensorsFile::Open(single);
    c.shards_.push_back(file);
    c.index_.reserve(file->tensors().size());
    for (const TensorInfo& t : file->tensors()) c.index_.emplace_back(t.name, 0);
    std::sort(c.index_.begin(), c.index_.end());
    return c;
  }
  if (!Exists(index_path)) {
    throw NotFound(dir + ": no " + kSingleFile + " or " + kIndexFile);
  }

  c.sharded_ = true;
  const json index = ParseJsonStrict(ReadIndex(index_path), index_path);
  if (!index.is_object()) {
    throw DataLoss(index_path + ": is a JSON " + std::string(index.type_name()) +
                   ", expected an object");
  }
  auto meta = index.find("metadata");
  if (meta != index.end() && !meta->is_object() && !meta->is_null()) {
    throw DataLoss(index_path + ": \"metadata\" is a JSON " + std::string(meta->type_name()) +
                   ", expected an object");
  }
  auto wm = index.find("weight_map");
  if (wm == index.end()) throw DataLoss(index_path + ": missing \"weight_map\"");
  if (!wm->is_object()) {
    throw DataLoss(index_path + ": \"weight_map\" is a JSON " + std::string(wm->type_name()) +
                   ", expected an object");
  }
  if (wm->empty()) throw DataLoss(index_path + ": \"weight_map\" is empty");

  // tensor -> shard file name; json objects iterate sorted by key.
  std::vector<std::pair<std::string, std::string>> entries;
  std::set<std::string> shard_names;
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it.value().is_string()) {
      throw DataLoss(index_path + ": \"weight_map\" entry for tensor " +
                     QuoteForMessage(it.key(), 200) + " is a JSON " +
                     std::string(it.value().type_name()) + ", expected a string");
    }
    const std::string shard = it.value().get<std::string>();
    CheckShardName(shard, it.key(), index_path);
    shard_names.insert(shard);
    entries.emplace_back(it.key(), shard);
  }

  // Open every referenced shard, in file-name order.
  std::map<std::string, size_t> shard_pos;
  for (const std::string& name : shard_names) {
    std::shared_ptr<const SafetensorsFile> file;
    try {
      file = SafetensorsFile::Open(Join(dir, name));
    } catch (const Error& e) {
      throw Error(e.code(), index_path + ": shard " + QuoteForMessage(name, 200) + ": " + e.what());
    }
    shard_pos.emplace(name, c.shards_.size());
    c.shards_.push_back(std::move(file));
  }

  // A tensor stored in two shards is ambiguous, whatever weight_map says.
  std::map<std::string_view, size_t> owner;
  for (size_t i = 0; i < c.shards_.size(); ++i) {
    for (const TensorInfo& t : c.shards_[i]->tensors()) {
      auto [it, inserted] = owner.emplace(t.name, i);
      if (!inserted) {
        throw DataLoss(index_path + ": tensor " + QuoteForMessage(t.name, 200) +
                       " is present in both shard " +
                       QuoteForMessage(c.shards_[it->second]->path(), 200) + " and shard " +
                       QuoteForMessage(c.shards_[i]->path(), 200));
      }
    }
  }

  c.index_.reserve(entries.size());
  for (auto& [tensor, shard] : entries) {
    size_t pos = shard_pos.at(shard);
    if (c.shards_[pos]->Find(tensor) == nullptr) {
      throw DataLoss(index_path + ": tensor " + QuoteForMessage(tensor, 200) +
                     " is mapped to shard " + QuoteForMessage(shard, 200) +
                     ", which does not contain it");
    }
    c.index_.emplace_back(std::move(tensor), pos);
  }
  std::sort(c.index_.begin(), c.index_.end());
  return c;
}

std::vector<std::string> Checkpoint::Names() const {
  std::vector<std::string> names;
  names.reserve(index_.size());
  for (const auto& [name, shard] : index_) names.push_back(name);
  return names;
}

bool Checkpoint::Has(std::string_view name) const {
  auto it = std::lower_bound(index_.begin(), index_.end(), name,
                             [](const auto& entry, std::string_view n) { return entry.first < n; });
  return it != index_.end() && it->first == name;
}

TensorRef Checkpoint::Get(std::string_view name) const {
  auto it = std::lower_bound(index_.begin(), index_.end(), name,
                             [](const auto& entry, std::string_view n) { return entry.first < n; });
  if (it == index_.end() || it->first != name) {
    throw NotFound("checkpoint " + dir_ + ": no tensor " + QuoteForMessage(name, 200));
  }
  const SafetensorsFile* file = shards_[it->second].get();
  TensorRef ref;
  ref.info = &file->Get(it->first);
  ref.data = file->Data(*ref.info);
  ref.file = file;
  return ref;
}

}  // namespace stip
