#include "server/model_store.h"

#include <openssl/rand.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>
#include <optional>

#include "common/arch/architecture.h"
#include "common/engine/causal_lm.h"
#include "common/engine/encoder.h"
#include "common/engine/model_weights.h"
#include "common/engine/tensor_util.h"
#include "common/format/checkpoint.h"
#include "common/rpc/file_transfer.h"
#include "common/rpc/tensor_wire.h"  // WireDataType
#include "common/util/files.h"
#include "common/util/random.h"
#include "server/batch_scheduler.h"

namespace stip {

namespace {

constexpr const char* kConfigFile = "config.json";
constexpr const char* kIndexFile = "model.safetensors.index.json";
constexpr const char* kGenerationConfigFile = "generation_config.json";
constexpr const char* kAccessFile = "access.json";
constexpr const char* kRetiredFile = "retired.json";

std::string BaseName(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

uint64_t DirectoryBytes(const std::string& dir) {
  uint64_t total = 0;
  for (const std::string& name : ListDirectory(dir)) {
    struct stat st;
    if (stat(JoinPath(dir, name).c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      total += static_cast<uint64_t>(st.st_size);
    }
  }
  return total;
}

// Leftovers of interrupted uploads and deletions.
bool IsTemporaryName(const std::string& name) {
  return name.find(".tmp-") != std::string::npos || name.find(".deleting-") != std::string::npos;
}

// A validated access record; entries of tokens expired at `now` are dropped.
std::shared_ptr<const InstanceAccess> MakeAccess(
    const std::string& key_pem, const std::vector<auth::RevokedToken>& revoked,
    const std::vector<auth::PreviousTokenKey>& previous, int64_t now) {
  auto access = std::make_shared<InstanceAccess>();
  try {
    access->key = std::make_shared<const auth::PublicKey>(auth::PublicKey::FromPem(key_pem));
  } catch (const Error& e) {
    throw InvalidArgument(std::string("token key: ") + e.what());
  }
  if (previous.size() > kMaxPreviousTokenKeys) {
    throw InvalidArgument(std::to_string(previous.size()) + " previous token keys, at most " +
                          std::to_string(kMaxPreviousTokenKeys));
  }
  for (const auth::PreviousTokenKey& p : previous) {
    if (p.accepted_until <= now || p.key.key_id() == access->key->key_id()) continue;
    access->previous.push_back(p);
  }
  if (revoked.size() > kMaxRevokedTokens) {
    throw ResourceExhausted("revocation list of " + std::to_string(revoked.size()) +
                            " entries is beyond the limit of " + std::to_string(kMaxRevokedTokens));
  }
  for (const auth::RevokedToken& r : revoked) {
    if (!auth::IsValidTokenId(r.token_id)) {
      throw InvalidArgument("revocation list: " + QuoteForMessage(r.token_id, 40) +
                            " is not a token id (32 lowercase hex digits)");
    }
    if (r.expires_at <= now || access->revoked_ids.count(r.token_id)) continue;
    access->revoked.push_back(r);
    access->revoked_ids.insert(r.token_id);
  }
  return access;
}

std::string AccessJson(const InstanceAccess& access) {
  nlohmann::json list = nlohmann::json::array();
  for (const auth::RevokedToken& r : access.revoked) {
    list.push_back({{"token_id", r.token_id}, {"expires_at", r.expires_at}});
  }
  nlohmann::json previous = nlohmann::json::array();
  for (const auth::PreviousTokenKey& p : access.previous) {
    previous.push_back({{"pem", p.key.pem()}, {"accepted_until", p.accepted_until}});
  }
  nlohmann::json j = {{"version", 1},
                      {"token_key_pem", access.key->pem()},
                      {"previous_token_keys", previous},
                      {"revoked", list}};
  return j.dump(1) + "\n";
}

// The access record stored with a model; null if there is none. kDataLoss.
std::shared_ptr<const InstanceAccess> ReadAccess(const std::string& model_dir) {
  const std::string path = JoinPath(model_dir, kAccessFile);
  if (!PathExists(path)) return nullptr;
  try {
    nlohmann::json j = nlohmann::json::parse(ReadFile(path));
    if (!j.is_object() || j.value("version", 0) != 1) throw InvalidArgument("not version 1");
    std::vector<auth::RevokedToken> revoked;
    for (const auto& r : j.at("revoked")) {
      revoked.push_back({r.at("token_id").get<std::string>(), r.at("expires_at").get<int64_t>()});
    }
    std::vector<auth::PreviousTokenKey> previous;
    if (j.contains("previous_token_keys")) {  // records before key rotation have none
      for (const auto& p : j.at("previous_token_keys")) {
        previous.push_back({auth::PublicKey::FromPem(p.at("pem").get<std::string>()),
                            p.at("accepted_until").get<int64_t>()});
      }
    }
    return MakeAccess(j.at("token_key_pem").get<std::string>(), revoked, previous, auth::NowUnix());
  } catch (const std::exception& e) {
    throw DataLoss(path + ": not a valid access record (" + e.what() + ")");
  }
}

struct Retirement {
  int64_t retired_at = 0, drain_deadline = 0;
};

// The retirement record stored with a model; nullopt if it is not retired.
// An unreadable record counts as retired now, with no drain (fail closed).
std::optional<Retirement> ReadRetirement(const std::string& model_dir) {
  const std::string path = JoinPath(model_dir, kRetiredFile);
  if (!PathExists(path)) return std::nullopt;
  Retirement r;
  try {
    nlohmann::json j = nlohmann::json::parse(ReadFile(path));
    r.retired_at = j.at("retired_at").get<int64_t>();
    r.drain_deadline = j.at("drain_deadline").get<int64_t>();
  } catch (const std::exception& e) {
    spdlog::error("{}: unreadable ({}); the instance is treated as retired, without drain", path,
                  e.what());
    r.retired_at = r.drain_deadline = auth::NowUnix();
  }
  return r;
}

}  // namespace

bool IsValidInstanceId(const std::string& id) {
  if (id.empty() || id.size() > 64) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
}

void ValidateServerCheckpoint(const std::string& dir, const std::string& instance_id, bool stored) {
  ModelConfig config = LoadModelConfig(dir);
  if (config.stip_instance.empty()) {
    throw InvalidArgument(
        "config.json has no STIP instance record: not a transformed checkpoint (make it with "
        "`stip-developer transform`)");
  }
  if (config.stip_instance != instance_id) {
    throw InvalidArgument("config.json belongs to instance " + config.stip_instance + ", not to " +
                          instance_id);
  }
  if (config.tie_word_embeddings) {
    throw InvalidArgument(
        "config.json ties the LM head to the embeddings; a transformed checkpoint has an untied "
        "head and no embedding table");
  }
  Checkpoint ckpt = Checkpoint::Open(dir);
  std::set<std::string> server_names, client_names;
  for (const TensorEntry& e : ExpectedTensors(config)) {
    (IsClientRole(e.role) ? client_names : server_names).insert(e.name);
  }
  for (const std::string& name : ckpt.Names()) {
    if (client_names.count(name)) {
      throw InvalidArgument("refused: the checkpoint carries the embedding table (tensor \"" +
                            name +
                            "\"); the server must never hold plaintext embeddings -- upload "
                            "the transformed server checkpoint only");
    }
    if (!server_names.count(name)) {
      throw InvalidArgument("unexpected tensor " + QuoteForMessage(name, 128) +
                            ": not part of a transformed " + config.model_type + " checkpoint");
    }
  }
  // Weights are floating point: integer or boolean bytes of the right shape
  // would load as garbage weights and silently wrong logits for every user.
  for (const std::string& name : ckpt.Names()) {
    const DType dtype = ckpt.Get(name).info->dtype;
    if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16 &&
        dtype != DType::kF64) {
      throw InvalidArgument("tensor " + QuoteForMessage(name, 128) + " has dtype " +
                            DTypeName(dtype) +
                            "; model weights must be floating point (F32, F16, BF16 or F64)");
    }
  }
  CheckpointSource source(ckpt);
  ValidateTensors(config, source, /*server_only=*/true);
  std::set<std::string> allowed = {kConfigFile, kIndexFile, kGenerationConfigFile};
  for (const auto& shard : ckpt.shards()) allowed.insert(BaseName(shard->path()));
  if (stored) {
    allowed.insert(kAccessFile);
    allowed.insert(kRetiredFile);
  }
  for (const std::string& name : ListDirectory(dir)) {
    if ((name == kAccessFile || name == kRetiredFile) && !stored) {
      throw InvalidArgument("unexpected file \"" + name +
                            "\": access and retirement are set with ModelStore.SetAccess and "
                            "Retire, not uploaded");
    }
    if (!allowed.count(name)) {
      throw InvalidArgument("unexpected file " + QuoteForMessage(name, 128) +
                            ": a server checkpoint holds config.json and its safetensors only");
    }
  }
}

// ---- LoadedModel / SessionLease --------------------------------------------

LoadedModel::~LoadedModel() {
  scheduler_.reset();  // stop the thread before the weights go
  model_.reset();
  encoder_.reset();
}

SessionLease::SessionLease(std::shared_ptr<LoadedModel> model) : model_(std::move(model)) {
  model_->sessions_++;
  model_->scheduler().SessionOpened();
}

SessionLease& SessionLease::operator=(SessionLease&& other) noexcept {
  if (this != &other) {
    Reset();
    model_ = std::move(other.model_);
  }
  return *this;
}

void SessionLease::Reset() {
  if (!model_) return;
  model_->scheduler().SessionClosed();
  model_->sessions_--;
  model_.reset();
}

// ---- PendingUpload -----------------------------------------------------------

PendingUpload::PendingUpload(ModelStore* store, std::string id, bool load)
    : store_(store), id_(std::move(id)), load_(load) {}

PendingUpload::~PendingUpload() {
  receiver_.reset();  // removes the temporary directory unless committed
  store_->EndUpload(id_);
}

void PendingUpload::Accept(const TransferChunk& chunk) { receiver_->Accept(chunk); }

uint64_t PendingUpload::bytes_received() const { return receiver_->bytes_received(); }

// ---- ModelStore --------------------------------------------------------------

ModelStore::ModelStore(ModelStoreOptions options) : options_(std::move(options)) {
  if (options_.dir.empty()) throw InvalidArgument("model store: no directory given (--store)");
  MakeDirectories(options_.dir, 0700);
  models_dir_ = JoinPath(options_.dir, "models");
  MakeDirectories(models_dir_, 0700);
  Scan();
  if (options_.load_all) {
    std::vector<std::string> ids;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& [id, entry] : models_) ids.push_back(id);
    }
    for (const std::string& id : ids) {
      try {
        Load(id);
      } catch (const std::exception& e) {
        spdlog::error("model {}: cannot load: {} (stored, not loaded)", id, e.what());
      }
    }
  }
}

ModelStore::~ModelStore() {
  std::lock_guard<std::mutex> lock(mu_);
  models_.clear();
}

void ModelStore::Scan() {
  for (const std::string& name : ListDirectory(models_dir_)) {
    const std::string path = JoinPath(models_dir_, name);
    if (IsTemporaryName(name)) {
      spdlog::info("model store: removing leftover {}", path);
      RemoveAll(path);
      continue;
    }
    if (!IsDirectory(path)) continue;
    if (!IsValidInstanceId(name)) {
      spdlog::warn("model store: ignoring {}: not an instance id", path);
      continue;
    }
    try {
      ValidateServerCheckpoint(path, name, /*stored=*/true);
      Entry e;
      e.id = name;
      e.dir = path;
      e.config = LoadModelConfig(path);
      e.stored_bytes = DirectoryBytes(path);
      try {
        e.access = ReadAccess(path);
        if (!e.access) {
          spdlog::warn(
              "model {}: no token key registered; no sessions until the developer "
              "registers one (ModelStore.SetAccess)",
              name);
        }
      } catch (const std::exception& ex) {
        spdlog::error("model {}: {}; no sessions until the developer registers access again", name,
                      ex.what());
      }
      if (std::optional<Retirement> r = ReadRetirement(path)) {
        e.retired = true;
        e.retired_at = r->retired_at;
        e.drain_deadline = r->drain_deadline;
        spdlog::info("model {}: retired (no new sessions; the developer deletes it)", name);
      }
      std::lock_guard<std::mutex> lock(mu_);
      models_[name] = std::move(e);
    } catch (const std::exception& ex) {
      spdlog::error("model store: skipping corrupted model {}: {}", path, ex.what());
    }
  }
  spdlog::info("model store {}: {} model(s)", models_dir_, models_.size());
}

ModelInfo ModelStore::InfoLocked(const Entry& e) const {
  ModelInfo info;
  info.instance_id = e.id;
  info.model_type = e.config.model_type;
  info.loaded = e.loaded != nullptr;
  info.stored_bytes = e.stored_bytes;
  info.hidden_size = e.config.hidden_size;
  info.vocab_size = e.config.vocab_size;
  if (e.access) info.token_key_id = e.access->key->key_id();
  info.retired = e.retired;
  if (e.retired) info.drain_deadline = e.drain_deadline;
  if (e.loaded) {
    info.max_context = e.loaded->max_context();
    info.datatype = e.loaded->datatype();
    info.active_sessions = e.loaded->active_sessions();
  } else {
    int64_t max_context = e.config.max_positions;
    if (options_.max_context > 0 && (max_context <= 0 || options_.max_context < max_context)) {
      max_context = options_.max_context;
    }
    info.max_context = max_context;
  }
  return info;
}

std::vector<ModelInfo> ModelStore::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<ModelInfo> out;
  for (const auto& [id, e] : models_) out.push_back(InfoLocked(e));
  return out;
}

ModelInfo ModelStore::Info(const std::string& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = models_.find(id);
  if (it == models_.end())
    throw NotFound("model instance " + QuoteForMessage(id) + " is not stored");
  return InfoLocked(it->second);
}

std::shared_ptr<LoadedModel> ModelStore::LoadEntry(const Entry& e) const {
  const auto start = std::chrono::steady_clock::now();
  LoadOptions lo;
  lo.device = ParseDevice(options_.device);
  lo.dtype = ParseComputeDType(options_.dtype, e.config.dtype, lo.device);
  std::shared_ptr<LoadedModel> m(new LoadedModel());
  m->id_ = e.id;
  m->config_ = e.config;
  if (e.config.encoder) {
    m->encoder_ = std::make_unique<EncoderServer>(EncoderServer::Load(e.dir, lo));
  } else {
    m->model_ = ServerModel::Load(e.dir, lo);
  }
  m->datatype_ = WireDataType(lo.dtype);
  m->max_context_ = e.config.max_positions;
  if (options_.max_context > 0 &&
      (m->max_context_ <= 0 || options_.max_context < m->max_context_)) {
    m->max_context_ = options_.max_context;
  }
  if (options_.kv_pool_sequences > 0 && !m->encoder_) {
    if (m->max_context_ <= 0) {
      throw InvalidArgument(
          "a KV pool needs a context limit: the model has none, give --max-context");
    }
    m->kv_pool_ = m->model_->NewPool(options_.kv_pool_sequences, m->max_context_);
  }
  SchedulerOptions so;
  so.max_batch = options_.max_batch;
  so.batch_wait_us = options_.batch_wait_us;
  if (m->encoder_) {
    m->scheduler_ = std::make_unique<BatchScheduler>(*m->encoder_, so, options_.counters,
                                                     "model " + e.id.substr(0, 12));
  } else {
    m->scheduler_ = std::make_unique<BatchScheduler>(*m->model_, so, options_.counters,
                                                     "model " + e.id.substr(0, 12));
  }
  m->drain_deadline_ = e.drain_deadline;
  m->retired_ = e.retired;
  spdlog::info("model {} ({}) loaded on {} as {} in {:.2f} s", e.id, e.config.model_type,
               lo.device.str(), m->datatype_,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return m;
}

ModelInfo ModelStore::Load(const std::string& id) {
  std::lock_guard<std::mutex> admin(admin_mu_);
  Entry copy;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = models_.find(id);
    if (it == models_.end())
      throw NotFound("model instance " + QuoteForMessage(id) + " is not stored");
    if (it->second.loaded) return InfoLocked(it->second);
    copy = it->second;
  }
  std::shared_ptr<LoadedModel> loaded = LoadEntry(copy);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = models_.find(id);
  if (it == models_.end())
    throw NotFound("model instance " + QuoteForMessage(id) + " is not stored");
  it->second.loaded = std::move(loaded);
  return InfoLocked(it->second);
}

ModelInfo ModelStore::Unload(const std::string& id) {
  std::lock_guard<std::mutex> admin(admin_mu_);
  std::shared_ptr<LoadedModel> dropped;
  ModelInfo info;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = models_.find(id);
    if (it == models_.end())
      throw NotFound("model instance " + QuoteForMessage(id) + " is not stored");
    if (it->second.loaded) {
      const int sessions = it->second.loaded->active_sessions();
      if (sessions > 0) {
        throw FailedPrecondition("model " + id + " has " + std::to_string(sessions) +
                                 " open session(s); it can be unloaded once they end");
      }
      dropped = std::move(it->second.loaded);
    }
    info = InfoLocked(it->second);
  }
  if (dropped) {
    dropped.reset();  // joins the scheduler, frees the weights
    spdlog::info("model {} unloaded", id);
  }
  return info;
}

void ModelStore::Delete(const std::string& id) {
  std::lock_guard<std::mutex> admin(admin_mu_);
  std::shared_ptr<LoadedModel> dropped;
  std::string dir;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = models_.find(id);
    if (it == models_.end())
      throw NotFound("model instance " + QuoteForMessage(id) + " is not stored");
    if (it->second.loaded && it->second.loaded->active_sessions() > 0) {
      throw FailedPrecondition("model " + id + " has " +
                               std::to_string(it->second.loaded->active_sessions()) +
                               " open session(s); it can be deleted once they end");
    }
    dropped = std::move(it->second.loaded);
    dir = it->second.dir;
    models_.erase(it);
  }
  dropped.reset();
  // Out of sight first (atomic), then removed.
  const std::string doomed = dir + ".deleting-" + RandomHex(6);
  RenamePath(dir, doomed);
  SyncDirectory(models_dir_);
  RemoveAll(doomed);
  spdlog::info("model {} deleted", id);
}

std::unique_ptr<PendingUpload> ModelStore::BeginUpload(const UploadSpec& spec) {
  const std::string& id = spec.instance_id;
  if (!IsValidInstanceId(id)) {
    throw InvalidArgument("upload: instance id " + QuoteForMessage(id) +
                          " is not valid (1 to 64 of [A-Za-z0-9_-])");
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (models_.count(id)) throw AlreadyExists("model instance " + id + " is already stored");
    if (uploading_.count(id)) {
      throw FailedPrecondition("an upload of model instance " + id + " is already in progress");
    }
    uploading_.insert(id);
  }
  std::unique_ptr<PendingUpload> upload(new PendingUpload(this, id, spec.load));
  ReceiveLimits limits;
  limits.max_total_bytes = options_.max_upload_bytes;
  const std::string final_dir = JoinPath(models_dir_, id);
  if (PathExists(final_dir)) {
    // On disk but not registered: a model skipped as corrupted at start-up.
    throw AlreadyExists(final_dir +
                        " exists (a model that failed validation at start-up?); remove it "
                        "first");
  }
  upload->receiver_ = std::make_unique<DirectoryReceiver>(final_dir, spec.files, limits, 0700);
  return upload;
}

ModelInfo ModelStore::FinishUpload(std::unique_ptr<PendingUpload> upload,
                                   const std::string& sha256_hex) {
  const std::string id = upload->instance_id();
  upload->receiver_->VerifyDigest(sha256_hex);
  const std::string tmp = upload->receiver_->temp_dir();
  try {
    ValidateServerCheckpoint(tmp, id);
  } catch (const Error& e) {
    // A tensor or file the config implies but the upload lacks is a bad
    // upload (INVALID_ARGUMENT), not a missing resource of the server.
    const ErrorCode code =
        e.code() == ErrorCode::kNotFound ? ErrorCode::kInvalidArgument : e.code();
    throw Error(code, "upload of " + id + " refused: " + e.what() + "; nothing was stored");
  }
  Entry e;
  e.id = id;
  e.dir = JoinPath(models_dir_, id);
  e.config = LoadModelConfig(tmp);
  e.stored_bytes = DirectoryBytes(tmp);
  {
    std::lock_guard<std::mutex> admin(admin_mu_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (models_.count(id)) throw AlreadyExists("model instance " + id + " is already stored");
    }
    upload->receiver_->Commit();
    std::lock_guard<std::mutex> lock(mu_);
    models_[id] = e;
  }
  spdlog::info("model {} ({}, {:.1f} MiB) stored", id, e.config.model_type,
               static_cast<double>(e.stored_bytes) / 1048576.0);
  const bool load = upload->load_;
  upload.reset();
  if (load) {
    try {
      return Load(id);
    } catch (const std::exception& ex) {
      spdlog::error("model {}: stored, but cannot load: {}", id, ex.what());
    }
  }
  return Info(id);
}

void ModelStore::EndUpload(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  uploading_.erase(id);
}

SessionLease ModelStore::OpenSession(const std::string& id) { return Lease(id, false); }

SessionLease ModelStore::OpenEncode(const std::string& id) { return Lease(id, true); }

SessionLease ModelStore::Lease(const std::string& id, bool encode) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = models_.find(id);
  if (it == models_.end()) {
    throw NotFound("model instance " + QuoteForMessage(id) + " is not on this server");
  }
  if (it->second.retired) {
    throw FailedPrecondition("model instance " + id +
                                 " is retired (instance retired: the developer rotated its keys); "
                                 "fetch the new client bundle from the developer",
                             kReasonInstanceRetired);
  }
  if (!it->second.loaded) {
    throw FailedPrecondition("model instance " + id +
                             " is stored but not loaded (ModelStore.Load it first)");
  }
  const ModelConfig& c = it->second.config;
  if (encode && !c.encoder) {
    throw FailedPrecondition("model instance " + id + " is a causal language model (" +
                             c.model_type +
                             "): it serves sessions (Inference.Session), not Encode");
  }
  if (!encode && c.encoder) {
    throw FailedPrecondition("model instance " + id + " is an encoder (" + c.model_type +
                             "): it serves Encode calls, not sessions (no KV cache, no "
                             "generation); use `stip-client embed`, `fill-mask` or `classify`");
  }
  return SessionLease(it->second.loaded);
}

ModelInfo ModelStore::Retire(const std::string& id, int64_t drain_seconds) {
  if (drain_seconds < 0) throw InvalidArgument("retire: drain_seconds is negative");
  drain_seconds = std::min<int64_t>(drain_seconds, int64_t{366} * 24 * 3600);
  std::lock_guard<std::mutex> serial(access_mu_);  // one writer of the model's records
  const int64_t now = auth::NowUnix();
  std::string dir;
  Retirement r;
  r.retired_at = now;
  r.drain_deadline = now + drain_seconds;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = models_.find(id);
    if (it == models_.end()) {
      throw NotFound("model instance " + id.substr(0, 64) + " is not stored");
    }
    if (it->second.retired) {
      r.retired_at = it->second.retired_at;
      r.drain_deadline = std::min(r.drain_deadline, it->second.drain_deadline);
    }
    dir = it->second.dir;
  }
  nlohmann::json j = {
      {"version", 1}, {"retired_at", r.retired_at}, {"drain_deadline", r.drain_deadline}};
  WriteFileAtomic(JoinPath(dir, kRetiredFile), j.dump() + "\n", 0600);
  SyncDirectory(dir);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = models_.find(id);
  if (it == models_.end()) throw NotFound("model instance " + id.substr(0, 64) + " is not stored");
  Entry& e = it->second;
  e.retired = true;
  e.retired_at = r.retired_at;
  e.drain_deadline = r.drain_deadline;
  if (e.loaded) {
    e.loaded->drain_deadline_ = r.drain_deadline;
    e.loaded->retired_ = true;
  }
  spdlog::info("model {} retired: no new sessions; {} open session(s) end by {}", id,
               e.loaded ? e.loaded->active_sessions() : 0, auth::FormatUnixUtc(r.drain_deadline));
  return InfoLocked(e);
}

AccessInfo ModelStore::SetAccess(const std::string& id, const std::string& key_pem,
                                 const std::vector<auth::RevokedToken>& revoked,
                                 const std::vector<auth::PreviousTokenKey>& previous) {
  std::shared_ptr<const InstanceAccess> access =
      MakeAccess(key_pem, revoked, previous, auth::NowUnix());
  // One SetAccess at a time, so that the file and the memory agree. (A Delete
  // racing with it makes the write fail: the directory is gone.)
  std::lock_guard<std::mutex> serial(access_mu_);
  std::string dir;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = models_.find(id);
    if (it == models_.end()) {
      throw NotFound("model instance " + QuoteForMessage(id) + " is not stored");
    }
    dir = it->second.dir;
  }
  WriteFileAtomic(JoinPath(dir, kAccessFile), AccessJson(*access), 0600);
  SyncDirectory(dir);
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = models_.find(id);
    if (it != models_.end()) it->second.access = access;
  }
  AccessInfo info;
  info.instance_id = id;
  info.token_key_id = access->key->key_id();
  info.revoked_tokens = static_cast<int>(access->revoked.size());
  std::string previous_ids;
  for (const auth::PreviousTokenKey& p : access->previous) {
    info.previous_token_key_ids.push_back(p.key.key_id());
    previous_ids +=
        ", previous key " + p.key.key_id() + " until " + auth::FormatUnixUtc(p.accepted_until);
  }
  spdlog::info("model {}: token key {} registered{}, {} revoked token(s)", id,
               access->key->key_id(), previous_ids, access->revoked.size());
  return info;
}

std::shared_ptr<const InstanceAccess> ModelStore::Access(const std::string& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = models_.find(id);
  if (it == models_.end()) {
    throw NotFound("model instance " + QuoteForMessage(id) + " is not on this server");
  }
  return it->second.access;
}

}  // namespace stip
