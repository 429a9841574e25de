// The server's models, on disk and in memory.
//
// Disk: STORE/models/<instance_id>/ holds one STIP-transformed checkpoint
// (config.json with the instance record, safetensors, maybe sharded with the
// index). Uploads are received into "<instance_id>.tmp-XXXXXX" beside it,
// checked (digest, then that it is a loadable transformed checkpoint WITHOUT
// embedding tables), and only then renamed into place. At start-up leftover
// temporary directories are removed and corrupted models are skipped (logged).
//
// Access: STORE/models/<instance_id>/access.json (0600, replaced atomically by
// SetAccess) holds the developer's token public key and the revoked token ids
// for the instance; it is not part of an upload. A model without it is stored
// and loadable but serves no sessions.
//
// Retirement: STORE/models/<instance_id>/retired.json (0600, written by
// Retire) marks an instance the developer has replaced (key rotation): no new
// sessions (FAILED_PRECONDITION with the reason INSTANCE_RETIRED), open ones
// run until its drain deadline.
//
// Memory: a loaded model has its ServerModel and one BatchScheduler thread.
// Sessions hold a SessionLease on it; Unload and Delete refuse while a model
// has open sessions (FAILED_PRECONDITION); Delete of a loaded model without
// sessions unloads it first.
//
// The store speaks in plain structs (ModelInfo, AccessInfo, UploadSpec,
// TransferChunk) and throws stip::Error; the gRPC layer
// (model_store_service.h) only translates them to and from the wire.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "common/arch/model_config.h"
#include "common/auth/access_token.h"
#include "common/error.h"
#include "common/rpc/file_transfer.h"

namespace stip {
class EncoderServer;
class KvPool;
class ServerModel;

class BatchScheduler;
struct SchedulerCounters;

// [A-Za-z0-9_-]{1,64} (the developer's ids are 32 lowercase hex digits).
bool IsValidInstanceId(const std::string& id);

// What the store says about one model (ModelStore.List/Info/Load...).
struct ModelInfo {
  std::string instance_id;
  std::string model_type;
  bool loaded = false;
  uint64_t stored_bytes = 0;
  int64_t hidden_size = 0;
  int64_t vocab_size = 0;
  int64_t max_context = 0;   // positions a session may hold
  std::string datatype;      // wire name of the compute dtype (when loaded)
  int active_sessions = 0;   // when loaded
  std::string token_key_id;  // "" = no token key registered: no sessions
  bool retired = false;
  int64_t drain_deadline = 0;  // with retired: unix seconds
};

// What SetAccess registered.
struct AccessInfo {
  std::string instance_id;
  std::string token_key_id;
  int revoked_tokens = 0;  // entries kept (those of expired tokens are dropped)
  std::vector<std::string> previous_token_key_ids;
};

// The start of an upload: the instance and its files.
struct UploadSpec {
  std::string instance_id;
  std::vector<TransferFile> files;
  bool load = false;  // load into memory once stored
};

// Checks that `dir` holds a STIP-transformed server checkpoint of instance
// `instance_id`: config.json parses and names the instance with an untied
// head; the safetensors open and hold exactly the server tensors the config
// implies, with the right shapes -- no embedding table, nothing else; no
// other files than config.json, generation_config.json, the index and the
// shards (and, for a stored model, `stored`, its access.json and
// retired.json). Throws
// kInvalidArgument / kDataLoss / kNotFound naming the problem.
void ValidateServerCheckpoint(const std::string& dir, const std::string& instance_id,
                              bool stored = false);

// Who may open sessions on one instance: the key that signs its tokens and
// the ids of revoked tokens (immutable; replaced as a whole by SetAccess).
struct InstanceAccess {
  std::shared_ptr<const auth::PublicKey> key;
  std::vector<auth::PreviousTokenKey> previous;  // still accepted (after a key rotation)
  std::vector<auth::RevokedToken> revoked;
  std::set<std::string> revoked_ids;
  bool IsRevoked(const std::string& token_id) const { return revoked_ids.count(token_id) > 0; }
};

// At most this many revoked tokens per instance (RESOURCE_EXHAUSTED beyond).
inline constexpr size_t kMaxRevokedTokens = 1000000;
// At most this many previous token keys per instance (INVALID_ARGUMENT beyond).
inline constexpr size_t kMaxPreviousTokenKeys = 16;

struct ModelStoreOptions {
  std::string dir;              // STORE; models live in STORE/models/<instance_id>
  std::string device = "auto";  // auto | cpu | cuda | cuda:N
  std::string dtype = "auto";   // auto | float32 | float16 | bfloat16
  bool load_all = true;         // load every stored model at start-up
  int64_t max_context = 0;      // positions per session (0: the model's maximum)
  int max_batch = 16;
  int batch_wait_us = 0;
  // > 0: every loaded model preallocates a KV pool of this many sequences of
  // max_context positions; sessions take a slot (RESOURCE_EXHAUSTED when none
  // is free) and decode batches run one attention per layer (CUDA graphs on a
  // GPU). 0: a growing cache per session under --max-kv-gib.
  int64_t kv_pool_sequences = 0;
  uint64_t max_upload_bytes = uint64_t{1} << 40;
  std::shared_ptr<SchedulerCounters> counters;  // shared by all schedulers (may be null)
};

// A model in memory, shared by the sessions that run on it.
class LoadedModel {
 public:
  ~LoadedModel();
  const std::string& instance_id() const { return id_; }
  // Causal models (sessions); ModelStore::OpenSession refuses encoders.
  const ServerModel& model() const { return *model_; }
  // Encoders (BERT, ViT: Encode calls); ModelStore::OpenEncode refuses causal models.
  bool is_encoder() const { return encoder_ != nullptr; }
  const EncoderServer& encoder() const { return *encoder_; }
  const ModelConfig& config() const { return config_; }
  BatchScheduler& scheduler() { return *scheduler_; }
  // The model's KV pool (ModelStoreOptions::kv_pool_sequences), or null.
  KvPool* kv_pool() const { return kv_pool_.get(); }
  const std::string& datatype() const { return datatype_; }  // wire name of the compute dtype
  int64_t max_context() const { return max_context_; }       // positions a session may hold
  int active_sessions() const { return sessions_.load(); }
  // Retired (ModelStore::Retire): sessions end at drain_deadline() (unix s).
  bool retired() const { return retired_.load(); }
  int64_t drain_deadline() const { return drain_deadline_.load(); }
  // Retired and the drain deadline has passed at `now` (unix seconds).
  bool DrainOver(int64_t now) const { return retired() && now >= drain_deadline(); }

 private:
  friend class ModelStore;
  friend class SessionLease;
  LoadedModel() = default;

  std::string id_, datatype_;
  int64_t max_context_ = 0;
  ModelConfig config_;
  std::unique_ptr<ServerModel> model_;
  std::unique_ptr<EncoderServer> encoder_;
  std::shared_ptr<KvPool> kv_pool_;            // outlives its sessions' caches
  std::unique_ptr<BatchScheduler> scheduler_;  // destroyed before the model
  std::atomic<int> sessions_{0};
  std::atomic<bool> retired_{false};
  std::atomic<int64_t> drain_deadline_{0};
};

// Keeps a loaded model for one session.
class SessionLease {
 public:
  SessionLease() = default;
  ~SessionLease() { Reset(); }
  SessionLease(SessionLease&& other) noexcept : model_(std::move(other.model_)) {}
  SessionLease& operator=(SessionLease&& other) noexcept;
  SessionLease(const SessionLease&) = delete;
  SessionLease& operator=(const SessionLease&) = delete;

  LoadedModel* get() const { return model_.get(); }
  LoadedModel* operator->() const { return model_.get(); }
  explicit operator bool() const { return model_ != nullptr; }
  void Reset();

 private:
  friend class ModelStore;
  explicit SessionLease(std::shared_ptr<LoadedModel> model);
  std::shared_ptr<LoadedModel> model_;
};

class ModelStore;

// One upload in progress. Destroying it without FinishUpload (a broken or
// cancelled stream, a refused model) removes the temporary directory: nothing
// becomes visible.
class PendingUpload {
 public:
  ~PendingUpload();
  PendingUpload(const PendingUpload&) = delete;
  PendingUpload& operator=(const PendingUpload&) = delete;

  // Throws kInvalidArgument for out-of-order or oversized chunks.
  void Accept(const TransferChunk& chunk);
  const std::string& instance_id() const { return id_; }
  uint64_t bytes_received() const;

 private:
  friend class ModelStore;
  PendingUpload(ModelStore* store, std::string id, bool load);

  ModelStore* store_;
  std::string id_;
  bool load_;
  std::unique_ptr<DirectoryReceiver> receiver_;
};

class ModelStore {
 public:
  // Creates STORE/models if needed, removes leftover temporary directories,
  // registers every valid stored model (skipping and logging corrupted ones)
  // and, with load_all, loads them.
  explicit ModelStore(ModelStoreOptions options);
  ~ModelStore();
  ModelStore(const ModelStore&) = delete;
  ModelStore& operator=(const ModelStore&) = delete;

  std::vector<ModelInfo> List() const;
  ModelInfo Info(const std::string& id) const;  // kNotFound
  // Loads a stored model (no-op if loaded). kNotFound; load errors.
  ModelInfo Load(const std::string& id);
  // kNotFound; kFailedPrecondition while the model has open sessions.
  ModelInfo Unload(const std::string& id);
  // Removes a model from disk (unloading it first). kNotFound;
  // kFailedPrecondition while it has open sessions.
  void Delete(const std::string& id);

  // Validates the header (instance id, file list) and opens the temporary
  // directory. kInvalidArgument; kAlreadyExists if the instance is stored;
  // kFailedPrecondition if an upload of it is in progress.
  std::unique_ptr<PendingUpload> BeginUpload(const UploadSpec& spec);
  // Verifies the digest (kDataLoss), validates the checkpoint in the temporary
  // directory (ValidateServerCheckpoint), renames it into place, loads it if
  // the header asked (a load failure is logged; the info says loaded=false).
  ModelInfo FinishUpload(std::unique_ptr<PendingUpload> upload, const std::string& sha256_hex);

  // For a new session: kNotFound (unknown instance), kFailedPrecondition with
  // the reason kReasonInstanceRetired (retired), or kFailedPrecondition
  // (stored but not loaded).
  SessionLease OpenSession(const std::string& id);
  // For an Encode call: the same, with kFailedPrecondition for a causal model.
  SessionLease OpenEncode(const std::string& id);

  // Retires the instance: no new sessions; open ones may run `drain_seconds`
  // more (then the Inference service ends them). Persisted (retired.json)
  // before it takes effect. Again on a retired instance: the deadline only
  // moves forward in time if the new one is earlier. kNotFound;
  // kInvalidArgument for a negative drain.
  ModelInfo Retire(const std::string& id, int64_t drain_seconds);

  // Registers the instance's token key (Ed25519 SPKI PEM), the previous keys
  // still accepted (those past their accepted_until are dropped) and the
  // revocation list (entries of expired tokens are dropped), persisted before
  // it takes effect. kNotFound; kInvalidArgument (not an Ed25519 key, bad
  // token id, more than kMaxPreviousTokenKeys); kResourceExhausted (more than
  // kMaxRevokedTokens entries).
  AccessInfo SetAccess(const std::string& id, const std::string& key_pem,
                       const std::vector<auth::RevokedToken>& revoked,
                       const std::vector<auth::PreviousTokenKey>& previous = {});
  // The instance's access record; null if none is registered. kNotFound.
  std::shared_ptr<const InstanceAccess> Access(const std::string& id) const;

  const std::string& models_dir() const { return models_dir_; }

 private:
  friend class PendingUpload;
  struct Entry {
    std::string id, dir;
    ModelConfig config;
    uint64_t stored_bytes = 0;
    std::shared_ptr<LoadedModel> loaded;
    std::shared_ptr<const InstanceAccess> access;  // null: no key registered
    bool retired = false;
    int64_t retired_at = 0, drain_deadline = 0;  // unix seconds
  };

  void Scan();
  std::shared_ptr<LoadedModel> LoadEntry(const Entry& entry) const;
  ModelInfo InfoLocked(const Entry& entry) const;
  void EndUpload(const std::string& id);
  SessionLease Lease(const std::string& id, bool encode);

  const ModelStoreOptions options_;
  std::string models_dir_;
  std::mutex admin_mu_;    // serializes Load, Unload, Delete and upload commits
  std::mutex access_mu_;   // serializes SetAccess
  mutable std::mutex mu_;  // guards models_ and uploading_
  std::map<std::string, Entry> models_;
  std::set<std::string> uploading_;
};

}  // namespace stip
