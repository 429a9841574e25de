#include "common/transform/transform_checkpoint.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "common/arch/architecture.h"
#include "common/engine/model_weights.h"
#include "common/engine/tensor_util.h"
#include "common/error.h"
#include "common/format/checkpoint.h"
#include "common/format/safetensors.h"
#include "common/transform/transform_rules.h"
#include "common/util/files.h"

namespace stip {

namespace {

using Clock = std::chrono::steady_clock;

std::string HumanBytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", b, units[u]);
  return buf;
}

class Progress {
 public:
  Progress(uint64_t total, bool enabled) : total_(total), on_(enabled && isatty(STDERR_FILENO)) {}
  void Update(uint64_t done) {
    if (!on_) return;
    const int width = 30;
    double f = total_ ? static_cast<double>(done) / static_cast<double>(total_) : 1.0;
    int fill = static_cast<int>(f * width);
    std::string bar(static_cast<size_t>(fill), '=');
    if (fill < width) bar += '>';
    bar.resize(width, ' ');
    double secs = std::chrono::duration<double>(Clock::now() - start_).count();
    std::fprintf(stderr, "\rtransform [%s] %3.0f%% %s / %s  %s/s ", bar.c_str(), f * 100,
                 HumanBytes(static_cast<double>(done)).c_str(),
                 HumanBytes(static_cast<double>(total_)).c_str(),
                 HumanBytes(secs > 0 ? static_cast<double>(done) / secs : 0).c_str());
    std::fflush(stderr);
  }
  void Done() {
    if (on_) std::fprintf(stderr, "\n");
  }

 private:
  uint64_t total_;
  bool on_;
  Clock::time_point start_ = Clock::now();
};

// Refuses to clobber existing output; returns a temporary directory to fill.
std::string BeginOutputDir(const std::string& final_dir, unsigned mode) {
  if (PathExists(final_dir)) {
    throw FailedPrecondition(final_dir + ": already exists; refusing to overwrite it");
  }
  return MakeTempDirectoryBeside(final_dir, mode);
}

void FinishOutputDir(const std::string& tmp, const std::string& final_dir, unsigned mode) {
  if (chmod(tmp.c_str(), static_cast<mode_t>(mode)) != 0) {
    throw Internal(tmp + ": cannot set mode");
  }
  SyncDirectory(tmp);
  RenamePath(tmp, final_dir);
}

// Removes the temporary directory unless released (on any error).
struct TempDirGuard {
  std::string path;
  ~TempDirGuard() {
    if (!path.empty()) RemoveAll(path);
  }
};

// sentence-transformers' modules (modules.json, 1_Pooling/, 2_Normalize/):
// what the encoder returns (pooled or not) and whether the client normalizes
// it, written flat into config.json's stip record ({"pooling": "mean" | "cls",
// "normalize": bool}; common/arch/bert.cc reads it back). Transformed
// checkpoints and client bundles are flat directories: uploads and bundle
// transfers carry plain file names only.
std::string WithPoolingRecord(const std::string& config_text, const std::string& model_dir) {
  if (!PathExists(JoinPath(model_dir, "modules.json"))) return config_text;
  const ModelConfig config = LoadModelConfig(model_dir);
  if (config.pooling == Pooling::kNone) return config_text;
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(config_text);
  j["stip"]["pooling"] = config.pooling == Pooling::kCls ? "cls" : "mean";
  j["stip"]["normalize"] = config.normalize;
  return j.dump(2) + "\n";
}

}  // namespace

TransformStats WriteServerCheckpoint(const std::string& model_dir, const std::string& server_dir,
                                     const ModelKeys& keys, const TransformOptions& options) {
  const auto start = Clock::now();
  ModelConfig config = LoadModelConfig(model_dir);
  ValidateKeys(keys, config);
  Checkpoint ckpt = Checkpoint::Open(model_dir);
  CheckpointSource source(ckpt);
  ValidateTensors(config, source, /*server_only=*/false);

  struct Item {
    TransformedTensor t;
    TensorRef src;
    uint64_t bytes;
  };
  std::vector<Item> items;
  uint64_t total = 0;
  for (const TransformedTensor& t : PlanServerTensors(config)) {
    TensorRef ref = ckpt.Get(SourceTensorName(t, config, keys));
    items.push_back({t, ref, ref.info->nbytes});
    total += ref.info->nbytes;
  }
  // Split into shards of at most max_shard_bytes (a larger tensor gets its own).
  std::vector<std::vector<size_t>> shards(1);
  uint64_t in_shard = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    if (options.max_shard_bytes > 0 && in_shard > 0 &&
        in_shard + items[i].bytes > options.max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(i);
    in_shard += items[i].bytes;
  }

  TempDirGuard tmp{BeginOutputDir(server_dir, 0700)};
  Progress progress(total, options.progress);
  TransformStats stats;
  stats.shards = static_cast<int>(shards.size());
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    char name[64];
    if (shards.size() == 1) {
      std::snprintf(name, sizeof name, "model.safetensors");
    } else {
      std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
    }
    SafetensorsWriter writer(JoinPath(tmp.path, name), {{"format", "pt"}}, 0644);
    for (size_t i : shards[s]) {
      writer.Declare(items[i].t.name, items[i].src.info->dtype, items[i].t.shape);
      weight_map[items[i].t.name] = name;
    }
    for (size_t i : shards[s]) {
      const Item& it = items[i];
      // A view of the mapped bytes (no copy); the gathers make the only copies.
      at::Tensor view = at::from_blob(const_cast<uint8_t*>(it.src.data), it.src.info->shape,
                                      at::TensorOptions().dtype(ToScalarType(it.src.info->dtype)));
      uint64_t written = 0;
      PermuteTensorChunked(view, it.t.layout, PermutationsFor(it.t, config, keys), 64u << 20,
                           [&](const void* data, size_t nbytes) {
                             writer.Write(it.t.name, data, nbytes);
                             written += nbytes;
                           });
      it.src.file->Evict(*it.src.info);
      stats.bytes_read += it.bytes;
      stats.bytes_written += written;
      ++stats.tensors;
      progress.Update(stats.bytes_read);
    }
    writer.Commit();
  }
  progress.Done();
  if (shards.size() > 1) {
    nlohmann::ordered_json index = {{"metadata", {{"total_size", stats.bytes_written}}},
                                    {"weight_map", weight_map}};
    WriteFileAtomic(JoinPath(tmp.path, "model.safetensors.index.json"), index.dump(2) + "\n");
  }
  std::string config_text = ReadFile(JoinPath(model_dir, "config.json"));
  WriteFileAtomic(JoinPath(tmp.path, "config.json"),
                  WithPoolingRecord(TransformedConfigJson(config_text, keys.instance_id),
                                    model_dir));  // the server pools (sentence-transformers)
  FinishOutputDir(tmp.path, server_dir, 0755);
  tmp.path.clear();
  stats.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return stats;
}

void WriteClientBundle(const std::string& model_dir, const std::string& client_dir,
                       const ModelKeys& keys) {
  ModelConfig config = LoadModelConfig(model_dir);
  ValidateKeys(keys, config);
  Checkpoint ckpt = Checkpoint::Open(model_dir);
  TempDirGuard tmp{BeginOutputDir(client_dir, 0700)};
  // The embedding side, bytes as they are in the checkpoint.
  std::vector<TensorBytes> tensors;
  for (const TensorEntry& e : ExpectedTensors(config)) {
    if (!IsClientRole(e.role)) continue;
    TensorRef ref = ckpt.Get(e.name);
    tensors.push_back({e.name, ref.info->dtype, ref.info->shape, ref.data});
  }
  WriteSafetensors(JoinPath(tmp.path, "model.safetensors"), tensors, {{"format", "pt"}}, 0600);
  SaveClientKeys(JoinPath(tmp.path, "client_keys.safetensors"), ClientShare(keys));
  nlohmann::json stip = {{"stip", {{"format", "stip-client-v1"}, {"instance", keys.instance_id}}}};
  WriteFileAtomic(
      JoinPath(tmp.path, "config.json"),
      WithPoolingRecord(PatchConfigJson(ReadFile(JoinPath(model_dir, "config.json")), stip.dump()),
                        model_dir),  // the client normalizes (2_Normalize)
      0600);
  for (const char* f : {"generation_config.json", "tokenizer.json", "tokenizer_config.json",
                        "tokenizer.model", "vocab.json", "merges.txt", "special_tokens_map.json",
                        "added_tokens.json", "vocab.txt", "preprocessor_config.json",
                        "chat_template.jinja", "chat_template.json"}) {
    std::string from = JoinPath(model_dir, f);
    if (PathExists(from)) CopyFile(from, JoinPath(tmp.path, f), 0600);
  }
  FinishOutputDir(tmp.path, client_dir, 0700);
  tmp.path.clear();
}

TransformStats TransformCheckpoint(const std::string& model_dir, const std::string& out_dir,
                                   const ModelKeys& keys, const TransformOptions& options) {
  if (PathExists(JoinPath(out_dir, "server")) || PathExists(JoinPath(out_dir, "client"))) {
    throw FailedPrecondition(out_dir +
                             ": already holds a transformed model; refusing to overwrite");
  }
  if (!IsDirectory(out_dir)) MakeDirectories(out_dir, 0700);
  TransformStats stats =
      WriteServerCheckpoint(model_dir, JoinPath(out_dir, "server"), keys, options);
  WriteClientBundle(model_dir, JoinPath(out_dir, "client"), keys);
  return stats;
}

}  // namespace stip
