#include "common/keys/model_keys.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"
#include "common/format/checkpoint.h"
#include "common/format/safetensors.h"
#include "common/util/random.h"
#include "common/util/sha256.h"

namespace stip {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "key files store little-endian int64; this code copies them as host integers");

constexpr const char* kKeysFormat = "stip-keys";
constexpr const char* kClientKeysFormat = "stip-client-keys";
constexpr unsigned kKeyFileMode = 0600;
// Top-level config.json keys that describe how a checkpoint was saved rather
// than the model: left out of the fingerprint.
constexpr const char* kConfigKeysNotFingerprinted[] = {"transformers_version", "_name_or_path",
                                                       "_commit_hash", "stip"};

std::string Str(int64_t v) { return std::to_string(v); }
std::string Str(size_t v) { return std::to_string(v); }

// Quotes untrusted metadata text for an error message: bounded and escaped.
std::string Quote(const std::string& s) {
  constexpr size_t kMax = 64;
  std::string out = "\"";
  for (size_t i = 0; i < s.size() && i < kMax; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
      out += '?';
    } else {
      out += static_cast<char>(c);
    }
  }
  out += '"';
  if (s.size() > kMax) out += "...";
  return out;
}

// ---------------------------------------------------------------------------
// Checks. Every message names the vector and sizes, never a key value.

class Checker {
 public:
  Checker(std::string prefix, ErrorCode code) : prefix_(std::move(prefix)), code_(code) {}

  [[noreturn]] void Fail(const std::string& what, const std::string& problem) const {
    throw Error(code_, prefix_ + ": " + what + ": " + problem);
  }

  // `p` must be a permutation of [0, n); `why` explains where n comes from.
  void Perm(const Permutation& p, int64_t n, const std::string& what,
            const std::string& why = "") const {
    if (p.size() != static_cast<size_t>(n)) {
      Fail(what, "has " + Str(p.size()) + " entries, expected " + Str(n) +
                     (why.empty() ? "" : " (" + why + ")"));
    }
    if (!IsPermutation(p, n)) Fail(what, "not a permutation of " + Str(n));
  }

  // `count` rows, each a permutation of [0, n).
  void Rows(const std::vector<Permutation>& rows, int64_t count, int64_t n, const std::string& what,
            const std::string& count_why, const std::string& n_why = "") const {
    if (rows.size() != static_cast<size_t>(count)) {
      Fail(what,
           "has " + Str(rows.size()) + " vectors, expected " + Str(count) + " (" + count_why + ")");
    }
    for (size_t i = 0; i < rows.size(); ++i) {
      Perm(rows[i], n, what + "[" + Str(i) + "]", n_why);
    }
  }

 private:
  std::string prefix_;
  ErrorCode code_;
};

std::string LayerWhat(size_t layer) { return "layer " + Str(layer); }

// The config's sizes must make sense before keys can be drawn or checked.
void CheckConfig(const ModelConfig& c) {
  auto fail = [&](const std::string& problem) {
    throw InvalidArgument((c.source.empty() ? std::string("model config") : c.source) +
                          ": cannot make STIP keys: " + problem);
  };
  if (c.hidden_size <= 0) fail("hidden_size must be positive");
  if (c.output_size() < 0 || (c.head != HeadKind::kNone && c.output_size() == 0)) {
    fail(c.head == HeadKind::kClassifier ? "num_labels must be positive"
                                         : "vocab_size must be positive");
  }
  if (c.num_layers < 0) fail("num_layers is negative");
  if (c.num_heads <= 0 || c.num_kv_heads <= 0) fail("head counts must be positive");
  if (c.num_heads % c.num_kv_heads != 0) {
    fail("num_heads (" + Str(c.num_heads) + ") is not a multiple of num_kv_heads (" +
         Str(c.num_kv_heads) + ")");
  }
  if (c.head_dim <= 0) fail("head_dim must be positive");
  if (c.intermediate_size <= 0) fail("intermediate_size must be positive");
  if (c.ffn == FfnKind::kMoe && c.num_experts <= 0) fail("num_experts must be positive");
}

std::string ConfigWhy(const ModelConfig& c, const std::string& field) {
  return c.source.empty() ? "config " + field : field + " in " + c.source;
}

void CheckAttention(const AttentionKey& a, const ModelConfig& c, size_t layer, const Checker& ck) {
  const std::string what = LayerWhat(layer) + " attention ";
  const int64_t n_kv = c.num_kv_heads;
  const int64_t g = c.group_size();
  const int64_t dh = c.head_dim;
  ck.Perm(a.kv_heads, n_kv, what + "kv_heads", ConfigWhy(c, "num_kv_heads"));
  ck.Rows(a.q_in_group, n_kv, g, what + "q_in_group", "one per KV head",
          "query heads per KV head, num_heads / num_kv_heads");
  ck.Rows(a.qk_within, n_kv, dh, what + "qk_within", "one per KV head", ConfigWhy(c, "head_dim"));
  ck.Rows(a.v_within, n_kv, dh, what + "v_within", "one per KV head", ConfigWhy(c, "head_dim"));
  if (c.positions == PositionKind::kRope) {
    for (size_t m = 0; m < a.qk_within.size(); ++m) {
      if (a.qk_within[m] != IdentityPermutation(dh)) {
        ck.Fail(what + "qk_within[" + Str(m) + "]",
                "must be the identity: the model uses rotary position embeddings, which rotate "
                "fixed pairs of dimensions inside each head, so permuting query/key features "
                "within a head would change the model's output");
      }
    }
  }
}

// Checks without a config (what a key file alone can tell): every vector a
// permutation, matrices rectangular, sizes consistent within each layer, and
// each layer either dense or MoE.
void CheckStructure(const ModelKeys& k, const Checker& ck) {
  if (k.p.empty()) ck.Fail("p", "is empty");
  ck.Perm(k.p, static_cast<int64_t>(k.p.size()), "p");
  // p_c may be empty: an encoder without a head scores nothing (it returns hidden states).
  ck.Perm(k.p_c, static_cast<int64_t>(k.p_c.size()), "p_c");
  if (!k.p_h.empty()) ck.Perm(k.p_h, static_cast<int64_t>(k.p.size()), "p_h");
  for (size_t l = 0; l < k.layers.size(); ++l) {
    const LayerKey& layer = k.layers[l];
    const AttentionKey& a = layer.attention;
    const std::string what = LayerWhat(l) + " attention ";
    const auto n_kv = static_cast<int64_t>(a.kv_heads.size());
    if (n_kv == 0) ck.Fail(what + "kv_heads", "is empty");
    ck.Perm(a.kv_heads, n_kv, what + "kv_heads");
    if (a.q_in_group.empty() || a.q_in_group[0].empty()) ck.Fail(what + "q_in_group", "is empty");
    ck.Rows(a.q_in_group, n_kv, static_cast<int64_t>(a.q_in_group[0].size()), what + "q_in_group",
            "one per KV head", "the length of q_in_group[0]");
    if (a.qk_within.empty() || a.qk_within[0].empty()) ck.Fail(what + "qk_within", "is empty");
    const auto dh = static_cast<int64_t>(a.qk_within[0].size());
    ck.Rows(a.qk_within, n_kv, dh, what + "qk_within", "one per KV head",
            "the length of qk_within[0]");
    ck.Rows(a.v_within, n_kv, dh, what + "v_within", "one per KV head",
            "the head size of qk_within");

    const bool moe = !layer.expert_order.empty() || !layer.expert_ffn.empty();
    if (!layer.ffn.empty()) {
      if (moe) ck.Fail(LayerWhat(l), "has both a dense ffn and mixture-of-experts keys");
      ck.Perm(layer.ffn, static_cast<int64_t>(layer.ffn.size()), LayerWhat(l) + " ffn");
    } else {
      if (!moe) ck.Fail(LayerWhat(l), "has neither ffn nor mixture-of-experts keys");
      const auto e = static_cast<int64_t>(layer.expert_order.size());
      if (e == 0) ck.Fail(LayerWhat(l) + " moe expert_order", "is empty");
      ck.Perm(layer.expert_order, e, LayerWhat(l) + " moe expert_order");
      if (layer.expert_ffn.empty() || layer.expert_ffn[0].empty()) {
        ck.Fail(LayerWhat(l) + " moe expert_ffn", "is empty");
      }
      ck.Rows(layer.expert_ffn, e, static_cast<int64_t>(layer.expert_ffn[0].size()),
              LayerWhat(l) + " moe expert_ffn", "one per expert", "the length of expert_ffn[0]");
    }
  }
}

// The layer's attention key, checked against `c` (sizes and permutations), so
// that the derived index vectors never point outside a projection.
const AttentionKey& CheckedAttention(const ModelKeys& keys, const ModelConfig& c, int layer,
                                     const char* fn) {
  const std::string prefix = std::string("keys: ") + fn;
  if (layer < 0 || static_cast<size_t>(layer) >= keys.layers.size()) {
    throw InvalidArgument(prefix + ": layer " + Str(static_cast<int64_t>(layer)) +
                          " out of range (the keys have " + Str(keys.layers.size()) + " layers)");
  }
  CheckConfig(c);
  const AttentionKey& a = keys.layers[static_cast<size_t>(layer)].attention;
  CheckAttention(a, c, static_cast<size_t>(layer), Checker(prefix, ErrorCode::kInvalidArgument));
  return a;
}

// hq[j] = hk[m]*G + r_m[t] for the query slot j = m*G + t.
std::vector<int64_t> QueryHeads(const AttentionKey& a, int64_t g) {
  std::vector<int64_t> hq;
  hq.reserve(a.kv_heads.size() * static_cast<size_t>(g));
  for (size_t m = 0; m < a.kv_heads.size(); ++m) {
    for (int64_t t = 0; t < g; ++t) hq.push_back(a.kv_heads[m] * g + a.q_in_group[m][t]);
  }
  return hq;
}

// out[slot*dh + t] = heads[slot]*dh + within[slot / per_row][t].
Permutation Expand(const std::vector<int64_t>& heads, const std::vector<Permutation>& within,
                   int64_t per_row, int64_t dh) {
  Permutation out;
  out.reserve(heads.size() * static_cast<size_t>(dh));
  for (size_t slot = 0; slot < heads.size(); ++slot) {
    const Permutation& w = within[slot / static_cast<size_t>(per_row)];
    for (int64_t t = 0; t < dh; ++t) out.push_back(heads[slot] * dh + w[t]);
  }
  return out;
}

// ---------------------------------------------------------------------------
// Files.

std::string TensorName(size_t layer, const char* suffix) {
  return "layers." + Str(layer) + "." + suffix;
}

// Declares and then writes the tensors of a key file, row by row (no copies).
class KeyFileWriter {
 public:
  void Vector(const std::string& name, const Permutation& p) {
    items_.push_back({name, {&p}, {static_cast<int64_t>(p.size())}});
  }
  // Rows of equal length (checked by the caller).
  void Matrix(const std::string& name, const std::vector<Permutation>& rows) {
    Item item{name,
              {},
              {static_cast<int64_t>(rows.size()),
               static_cast<int64_t>(rows.empty() ? 0 : rows[0].size())}};
    for (const Permutation& r : rows) item.rows.push_back(&r);
    items_.push_back(std::move(item));
  }
  void Write(const std::string& path, std::map<std::string, std::string> metadata) const {
    SafetensorsWriter w(path, std::move(metadata), kKeyFileMode);
    for (const Item& item : items_) w.Declare(item.name, DType::kI64, item.shape);
    for (const Item& item : items_) {
      for (const Permutation* r : item.rows) {
        w.Write(item.name, r->data(), r->size() * sizeof(int64_t));
      }
    }
    w.Commit();
  }

 private:
  struct Item {
    std::string name;
    std::vector<const Permutation*> rows;
    std::vector<int64_t> shape;
  };
  std::vector<Item> items_;
};

// Reads the int64 tensors of a key file, remembering which names it used.
class KeyFileReader {
 public:
  explicit KeyFileReader(std::shared_ptr<const SafetensorsFile> file) : file_(std::move(file)) {}

  const SafetensorsFile& file() const { return *file_; }
  bool Has(const std::string& name) const { return file_->Find(name) != nullptr; }

  Permutation Vector(const std::string& name) {
    const TensorInfo& info = Info(name, 1);
    return Read(info, 0, info.shape[0]);
  }

  std::vector<Permutation> Matrix(const std::string& name) {
    const TensorInfo& info = Info(name, 2);
    const int64_t rows = info.shape[0], cols = info.shape[1];
    // A zero column count would let a tiny file declare billions of empty rows.
    if (cols == 0) Fail(name, "has shape " + ShapeString(info.shape) + ", rows are empty");
    std::vector<Permutation> out;
    out.reserve(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) out.push_back(Read(info, r * cols, cols));
    return out;
  }

  // Any tensor the format does not define is an error: the file is not what it claims.
  void CheckNoOthers() const {
    for (const TensorInfo& t : file_->tensors()) {
      if (used_.count(t.name) == 0) {
        throw DataLoss(file_->path() + ": unexpected tensor " + Quote(t.name) + " in a key file");
      }
    }
  }

 private:
  [[noreturn]] void Fail(const std::string& name, const std::string& problem) const {
    throw DataLoss(file_->path() + ": tensor " + Quote(name) + ": " + problem);
  }

  const TensorInfo& Info(const std::string& name, size_t ndim) {
    const TensorInfo* info = file_->Find(name);
    if (info == nullptr) {
      throw DataLoss(file_->path() + ": missing tensor " + Quote(name) +
                     " (the key file is incomplete)");
    }
    if (info->dtype != DType::kI64) {
      Fail(name, std::string("has dtype ") + DTypeName(info->dtype) + ", expected I64");
    }
    if (info->shape.size() != ndim) {
      Fail(name, "has shape " + ShapeString(info->shape) + ", expected " + Str(ndim) +
                     (ndim == 1 ? " dimension" : " dimensions"));
    }
    used_.insert(name);
    return *info;
  }

  Permutation Read(const TensorInfo& info, int64_t begin, int64_t count) const {
    Permutation out(static_cast<size_t>(count));
    if (count > 0) {
      std::memcpy(out.data(), file_->Data(info) + begin * static_cast<int64_t>(sizeof(int64_t)),
                  static_cast<size_t>(count) * sizeof(int64_t));
    }
    return out;
  }

  std::shared_ptr<const SafetensorsFile> file_;
  std::set<std::string> used_;
};

std::string RequiredMetadata(const SafetensorsFile& f, const std::string& key) {
  auto it = f.metadata().find(key);
  if (it == f.metadata().end()) {
    throw DataLoss(f.path() + ": metadata has no " + Quote(key) + " (the key file is incomplete)");
  }
  return it->second;
}

// Parses a small non-negative decimal integer from metadata; nullopt-like -1 on garbage.
int64_t ParseCount(const std::string& s) {
  if (s.empty() || s.size() > 9) return -1;
  int64_t v = 0;
  for (char ch : s) {
    if (ch < '0' || ch > '9') return -1;
    v = v * 10 + (ch - '0');
  }
  return v;
}

// Checks "format" and "version" of a key file.
void CheckFormat(const SafetensorsFile& f, const char* expected_format) {
  auto it = f.metadata().find("format");
  if (it == f.metadata().end()) {
    throw InvalidArgument(f.path() + ": not a STIP key file (no \"format\" in its metadata; " +
                          "expected " + Quote(expected_format) + ")");
  }
  const std::string& format = it->second;
  if (format != expected_format) {
    std::string hint;
    if (format == kClientKeysFormat) {
      hint = "; this is a user's key share (p and p_c only), not the developer's full keys";
    } else if (format == kKeysFormat) {
      hint =
          "; this is the developer's full key file, which must never go to a user: "
          "give the client its share (stip-developer client-keys)";
    }
    throw InvalidArgument(f.path() + ": format is " + Quote(format) + ", expected " +
                          Quote(expected_format) + hint);
  }
  const std::string version = RequiredMetadata(f, "version");
  const int64_t v = ParseCount(version);
  if (v < 0) {
    throw InvalidArgument(f.path() + ": " + format + " version " + Quote(version) +
                          " is not understood (this build reads version " +
                          Str(static_cast<int64_t>(ModelKeys::kVersion)) + ")");
  }
  if (v > ModelKeys::kVersion) {
    throw Unimplemented(f.path() + ": " + format + " version " + Str(v) +
                        " is newer than this build supports (version " +
                        Str(static_cast<int64_t>(ModelKeys::kVersion)) + "); upgrade stip");
  }
  if (v != ModelKeys::kVersion) {
    throw InvalidArgument(f.path() + ": " + format + " version " + Str(v) +
                          " is not supported (this build reads version " +
                          Str(static_cast<int64_t>(ModelKeys::kVersion)) + ")");
  }
}

void CheckClientKeys(const ClientKeys& k, const Checker& ck) {
  if (k.p.empty()) ck.Fail("p", "is empty");
  ck.Perm(k.p, static_cast<int64_t>(k.p.size()), "p");
  ck.Perm(k.p_c, static_cast<int64_t>(k.p_c.size()), "p_c");  // empty for encoders without a head
}

// ---------------------------------------------------------------------------
// Fingerprint.

// Length-prefixed fields over SHA-256, so that no two different sequences of
// fields hash alike.
class FingerprintHash {
 public:
  void Bytes(const void* data, size_t n) { sha_.Update(data, n); }
  void U64(uint64_t v) {
    uint8_t b[8];
    for (int i = 0; i < 8; ++i) b[i] = static_cast<uint8_t>(v >> (8 * i));
    Bytes(b, sizeof(b));
  }
  void Field(const std::string& s) {
    U64(s.size());
    Bytes(s.data(), s.size());
  }
  std::string HexDigest() { return sha_.HexDigest(); }

 private:
  Sha256 sha_;
};

std::string ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw NotFound(path + ": cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw DataLoss(path + ": read failed");
  return ss.str();
}

}  // namespace

// ---------------------------------------------------------------------------

Permutation ModelKeys::QPerm(const ModelConfig& c, int layer) const {
  const AttentionKey& a = CheckedAttention(*this, c, layer, "QPerm");
  const int64_t g = c.group_size();
  return Expand(QueryHeads(a, g), a.qk_within, g, c.head_dim);
}

Permutation ModelKeys::KPerm(const ModelConfig& c, int layer) const {
  const AttentionKey& a = CheckedAttention(*this, c, layer, "KPerm");
  return Expand(a.kv_heads, a.qk_within, 1, c.head_dim);
}

Permutation ModelKeys::VPerm(const ModelConfig& c, int layer) const {
  const AttentionKey& a = CheckedAttention(*this, c, layer, "VPerm");
  return Expand(a.kv_heads, a.v_within, 1, c.head_dim);
}

Permutation ModelKeys::OPerm(const ModelConfig& c, int layer) const {
  const AttentionKey& a = CheckedAttention(*this, c, layer, "OPerm");
  const int64_t g = c.group_size();
  return Expand(QueryHeads(a, g), a.v_within, g, c.head_dim);
}

ModelKeys GenerateKeys(const ModelConfig& config, const std::string& model_fingerprint) {
  CheckConfig(config);
  ModelKeys k;
  k.instance_id = NewInstanceId();
  k.model_fingerprint = model_fingerprint;
  k.model_type = config.model_type;
  k.p = RandomPermutation(config.hidden_size);
  k.p_c = RandomPermutation(config.output_size());
  if (config.head == HeadKind::kMaskedLm) k.p_h = RandomPermutation(config.hidden_size);
  const int64_t n_kv = config.num_kv_heads;
  const int64_t g = config.group_size();
  const int64_t dh = config.head_dim;
  const bool rope = config.positions == PositionKind::kRope;
  k.layers.resize(static_cast<size_t>(config.num_layers));
  for (LayerKey& layer : k.layers) {
    AttentionKey& a = layer.attention;
    a.kv_heads = RandomPermutation(n_kv);
    for (int64_t m = 0; m < n_kv; ++m) {
      a.q_in_group.push_back(RandomPermutation(g));
      a.qk_within.push_back(rope ? IdentityPermutation(dh) : RandomPermutation(dh));
      a.v_within.push_back(RandomPermutation(dh));
    }
    if (config.ffn == FfnKind::kMoe) {
      layer.expert_order = RandomPermutation(config.num_experts);
      for (int64_t e = 0; e < config.num_experts; ++e) {
        layer.expert_ffn.push_back(RandomPermutation(config.intermediate_size));
      }
    } else {
      layer.ffn = RandomPermutation(config.intermediate_size);
    }
  }
  ValidateKeys(k, config);
  return k;
}

void ValidateKeys(const ModelKeys& keys, const ModelConfig& config) {
  CheckConfig(config);
  const Checker ck("keys", ErrorCode::kInvalidArgument);
  if (!keys.model_type.empty() && !config.model_type.empty() &&
      keys.model_type != config.model_type) {
    ck.Fail("model_type", "the keys were made for " + Quote(keys.model_type) + ", the config (" +
                              config.source + ") is " + Quote(config.model_type));
  }
  ck.Perm(keys.p, config.hidden_size, "p", ConfigWhy(config, "hidden_size"));
  ck.Perm(keys.p_c, config.output_size(), "p_c",
          ConfigWhy(config, config.head == HeadKind::kClassifier ? "num_labels" : "vocab_size"));
  if (config.head == HeadKind::kMaskedLm) {
    ck.Perm(keys.p_h, config.hidden_size, "p_h", ConfigWhy(config, "hidden_size"));
  } else if (!keys.p_h.empty()) {
    ck.Fail("p_h", "must be empty: the model has no masked-LM head");
  }
  if (keys.layers.size() != static_cast<size_t>(config.num_layers)) {
    ck.Fail("layers", "the keys have " + Str(keys.layers.size()) + " layers, expected " +
                          Str(config.num_layers) + " (" + ConfigWhy(config, "num_layers") + ")");
  }
  for (size_t l = 0; l < keys.layers.size(); ++l) {
    const LayerKey& layer = keys.layers[l];
    CheckAttention(layer.attention, config, l, ck);
    const std::string what = LayerWhat(l);
    if (config.ffn == FfnKind::kMoe) {
      if (!layer.ffn.empty()) ck.Fail(what + " ffn", "must be empty in a mixture-of-experts model");
      ck.Perm(layer.expert_order, config.num_experts, what + " moe expert_order",
              ConfigWhy(config, "num_experts"));
      ck.Rows(layer.expert_ffn, config.num_experts, config.intermediate_size,
              what + " moe expert_ffn", "one per expert", ConfigWhy(config, "intermediate_size"));
    } else {
      ck.Perm(layer.ffn, config.intermediate_size, what + " ffn",
              ConfigWhy(config, "intermediate_size"));
      if (!layer.expert_order.empty() || !layer.expert_ffn.empty()) {
        ck.Fail(what + " moe", "must be empty: the model has no mixture-of-experts layers");
      }
    }
  }
}

ClientKeys ClientShare(const ModelKeys& keys) {
  ClientKeys c;
  c.instance_id = keys.instance_id;
  c.model_fingerprint = keys.model_fingerprint;
  c.p = keys.p;
  c.p_c = keys.p_c;
  return c;
}

void SaveKeys(const std::string& path, const ModelKeys& keys) {
  CheckStructure(keys, Checker("SaveKeys: " + path, ErrorCode::kInvalidArgument));
  KeyFileWriter w;
  w.Vector("p", keys.p);
  w.Vector("p_c", keys.p_c);
  if (!keys.p_h.empty()) w.Vector("p_h", keys.p_h);
  for (size_t l = 0; l < keys.layers.size(); ++l) {
    const LayerKey& layer = keys.layers[l];
    w.Vector(TensorName(l, "attn.kv_heads"), layer.attention.kv_heads);
    w.Matrix(TensorName(l, "attn.q_in_group"), layer.attention.q_in_group);
    w.Matrix(TensorName(l, "attn.qk_within"), layer.attention.qk_within);
    w.Matrix(TensorName(l, "attn.v_within"), layer.attention.v_within);
    if (!layer.ffn.empty()) {
      w.Vector(TensorName(l, "ffn"), layer.ffn);
    } else {
      w.Vector(TensorName(l, "moe.expert_order"), layer.expert_order);
      w.Matrix(TensorName(l, "moe.expert_ffn"), layer.expert_ffn);
    }
  }
  w.Write(path, {{"format", kKeysFormat},
                 {"version", Str(static_cast<int64_t>(ModelKeys::kVersion))},
                 {"instance_id", keys.instance_id},
                 {"model_fingerprint", keys.model_fingerprint},
                 {"model_type", keys.model_type},
                 {"num_layers", Str(keys.layers.size())}});
}

ModelKeys LoadKeys(const std::string& path) {
  KeyFileReader r(SafetensorsFile::Open(path));
  const SafetensorsFile& f = r.file();
  CheckFormat(f, kKeysFormat);
  ModelKeys k;
  k.instance_id = RequiredMetadata(f, "instance_id");
  k.model_fingerprint = RequiredMetadata(f, "model_fingerprint");
  k.model_type = RequiredMetadata(f, "model_type");
  const std::string layers_text = RequiredMetadata(f, "num_layers");
  const int64_t num_layers = ParseCount(layers_text);
  if (num_layers < 0) {
    throw DataLoss(path + ": metadata num_layers " + Quote(layers_text) +
                   " is not a non-negative integer");
  }
  // Bound the count before allocating (each layer has several tensors); a
  // plausible count with missing tensors is reported per tensor below.
  if (static_cast<uint64_t>(num_layers) > f.tensors().size()) {
    throw DataLoss(path + ": metadata says " + Str(num_layers) + " layers, but the file holds " +
                   Str(f.tensors().size()) + " tensors (the key file is incomplete)");
  }
  k.p = r.Vector("p");
  k.p_c = r.Vector("p_c");
  if (r.Has("p_h")) k.p_h = r.Vector("p_h");
  k.layers.resize(static_cast<size_t>(num_layers));
  for (size_t l = 0; l < k.layers.size(); ++l) {
    LayerKey& layer = k.layers[l];
    layer.attention.kv_heads = r.Vector(TensorName(l, "attn.kv_heads"));
    layer.attention.q_in_group = r.Matrix(TensorName(l, "attn.q_in_group"));
    layer.attention.qk_within = r.Matrix(TensorName(l, "attn.qk_within"));
    layer.attention.v_within = r.Matrix(TensorName(l, "attn.v_within"));
    const bool moe =
        r.Has(TensorName(l, "moe.expert_order")) || r.Has(TensorName(l, "moe.expert_ffn"));
    if (moe) {
      if (r.Has(TensorName(l, "ffn"))) {
        throw DataLoss(path + ": layer " + Str(l) +
                       " has both a dense ffn and mixture-of-experts tensors");
      }
      layer.expert_order = r.Vector(TensorName(l, "moe.expert_order"));
      layer.expert_ffn = r.Matrix(TensorName(l, "moe.expert_ffn"));
    } else {
      layer.ffn = r.Vector(TensorName(l, "ffn"));
    }
  }
  r.CheckNoOthers();
  CheckStructure(k, Checker(path, ErrorCode::kDataLoss));
  return k;
}

void SaveClientKeys(const std::string& path, const ClientKeys& keys) {
  CheckClientKeys(keys, Checker("SaveClientKeys: " + path, ErrorCode::kInvalidArgument));
  KeyFileWriter w;
  w.Vector("p", keys.p);
  w.Vector("p_c", keys.p_c);
  w.Write(path, {{"format", kClientKeysFormat},
                 {"version", Str(static_cast<int64_t>(ModelKeys::kVersion))},
                 {"instance_id", keys.instance_id},
                 {"model_fingerprint", keys.model_fingerprint}});
}

ClientKeys LoadClientKeys(const std::string& path) {
  KeyFileReader r(SafetensorsFile::Open(path));
  const SafetensorsFile& f = r.file();
  CheckFormat(f, kClientKeysFormat);
  ClientKeys k;
  k.instance_id = RequiredMetadata(f, "instance_id");
  k.model_fingerprint = RequiredMetadata(f, "model_fingerprint");
  k.p = r.Vector("p");
  k.p_c = r.Vector("p_c");
  r.CheckNoOthers();
  CheckClientKeys(k, Checker(path, ErrorCode::kDataLoss));
  return k;
}

std::string FingerprintModel(const std::string& model_dir) {
  const std::string config_path = model_dir + "/config.json";
  const std::string text = ReadTextFile(config_path);
  nlohmann::json config = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded()) throw InvalidArgument(config_path + ": not valid JSON");
  if (!config.is_object()) throw InvalidArgument(config_path + ": expected a JSON object");
  for (const char* key : kConfigKeysNotFingerprinted) config.erase(key);

  FingerprintHash h;
  h.Field("stip-model-fingerprint-v1");
  // nlohmann::json keeps object keys sorted: dump() is a canonical form.
  h.Field(config.dump());
  const Checkpoint ckpt = Checkpoint::Open(model_dir);
  const std::vector<std::string> names = ckpt.Names();
  h.U64(names.size());
  for (const std::string& name : names) {
    const TensorRef t = ckpt.Get(name);
    h.Field(name);
    h.Field(DTypeName(t.info->dtype));
    h.U64(t.info->shape.size());
    for (int64_t d : t.info->shape) h.U64(static_cast<uint64_t>(d));
    h.U64(t.info->nbytes);
    h.Bytes(t.data, t.info->nbytes);
    t.file->Evict(*t.info);  // keep the resident set small on large models
  }
  return h.HexDigest();
}

std::string NewInstanceId() { return RandomHex(16); }

}  // namespace stip
