#include "common/arch/model_config.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>

#include "common/arch/architecture.h"
#include "common/arch/json_config.h"
#include "common/error.h"

namespace stip {

// ---- JsonConfig -------------------------------------------------------------

bool JsonConfig::Has(const std::string& key) const {
  auto it = j_.find(key);
  return it != j_.end() && !it->is_null();
}

const nlohmann::json& JsonConfig::Get(const std::string& key) const {
  auto it = j_.find(key);
  if (it == j_.end() || it->is_null()) Fail(key, "missing (required)");
  return *it;
}

void JsonConfig::Fail(const std::string& key, const std::string& problem) const {
  throw InvalidArgument(source_ + ": key \"" + key + "\": " + problem);
}

namespace {

// The JSON value as an int64, if it is one exactly: an integer within int64's
// range, or a float with an integral value within it (2.0e3). Converting a
// float outside that range is undefined behaviour, so the range comes first
// (found by fuzz/model_config_fuzzer.cc: "1.84467e+22").
std::optional<int64_t> AsInt64(const nlohmann::json& v) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    const double d = v.get<double>();
    // [-2^63, 2^63): both bounds are exact doubles; NaN fails both tests.
    if (d >= -9223372036854775808.0 && d < 9223372036854775808.0 && d == std::trunc(d)) {
      return static_cast<int64_t>(d);
    }
  }
  return std::nullopt;
}

// A value for an error message: scalars as JSON (bounded), containers by type
// only (dump() recurses: a deeply nested value would overflow the stack).
std::string Shown(const nlohmann::json& v) {
  if (v.is_structured()) return std::string("a JSON ") + v.type_name();
  if (v.is_string()) return QuoteForMessage(v.get_ref<const std::string&>());
  return v.dump();  // a number, true, false or null
}

}  // namespace

int64_t JsonConfig::Int(const std::string& key) const {
  const nlohmann::json& v = Get(key);
  if (std::optional<int64_t> i = AsInt64(v)) return *i;
  Fail(key, "expected an integer (within int64), got " + Shown(v));
}

double JsonConfig::Number(const std::string& key) const {
  const nlohmann::json& v = Get(key);
  if (!v.is_number()) Fail(key, "expected a number, got " + Shown(v));
  return v.get<double>();
}

std::string JsonConfig::String(const std::string& key) const {
  const nlohmann::json& v = Get(key);
  if (!v.is_string()) Fail(key, "expected a string, got " + Shown(v));
  return v.get<std::string>();
}

int64_t JsonConfig::Int(const std::string& key, int64_t fallback) const {
  return Has(key) ? Int(key) : fallback;
}
double JsonConfig::Number(const std::string& key, double fallback) const {
  return Has(key) ? Number(key) : fallback;
}
bool JsonConfig::Bool(const std::string& key, bool fallback) const {
  if (!Has(key)) return fallback;
  const nlohmann::json& v = Get(key);
  if (!v.is_boolean()) Fail(key, "expected true or false, got " + Shown(v));
  return v.get<bool>();
}
std::string JsonConfig::String(const std::string& key, const std::string& fallback) const {
  return Has(key) ? String(key) : fallback;
}
std::optional<int64_t> JsonConfig::OptionalInt(const std::string& key) const {
  if (!Has(key)) return std::nullopt;
  return Int(key);
}
std::vector<int64_t> JsonConfig::IntList(const std::string& key) const {
  if (!Has(key)) return {};
  const nlohmann::json& v = Get(key);
  if (v.is_number_integer()) {
    if (std::optional<int64_t> i = AsInt64(v)) return {*i};
  }
  if (!v.is_array()) Fail(key, "expected an integer or a list of integers, got " + Shown(v));
  std::vector<int64_t> out;
  for (const auto& e : v) {
    std::optional<int64_t> i = e.is_number_integer() ? AsInt64(e) : std::nullopt;
    if (!i) Fail(key, "expected a list of integers (within int64), got " + Shown(v));
    out.push_back(*i);
  }
  return out;
}
std::optional<JsonConfig> JsonConfig::Object(const std::string& key) const {
  if (!Has(key)) return std::nullopt;
  const nlohmann::json& v = Get(key);
  if (!v.is_object()) Fail(key, "expected an object, got " + Shown(v));
  return JsonConfig(v, source_ + ":" + key);
}

Activation ParseActivation(const JsonConfig& cfg, const std::string& key, const std::string& def) {
  std::string a = cfg.String(key, def);
  if (a == "gelu_new" || a == "gelu_pytorch_tanh" || a == "gelu_fast") return Activation::kGeluTanh;
  if (a == "gelu") return Activation::kGelu;
  if (a == "relu") return Activation::kRelu;
  if (a == "silu" || a == "swish") return Activation::kSilu;
  cfg.Fail(key, "unsupported activation \"" + a + "\"");
}

void ParseLabels(const JsonConfig& cfg, ModelConfig* c) {
  std::optional<JsonConfig> id2label = cfg.Object("id2label");
  if (!id2label) {
    c->num_labels = cfg.Int("num_labels", 2);
    c->labels.assign(static_cast<size_t>(std::max<int64_t>(0, c->num_labels)), "");
    return;
  }
  int64_t n = 0;
  for (auto it = id2label->json().begin(); it != id2label->json().end(); ++it) {
    char* end = nullptr;
    const long long id = std::strtoll(it.key().c_str(), &end, 10);
    if (it.key().empty() || *end != '\0' || id < 0 || id >= (int64_t{1} << 24) ||
        !it.value().is_string()) {
      cfg.Fail("id2label", "expected {\"<id>\": \"<name>\"} with ids from 0");
    }
    n = std::max<int64_t>(n, id + 1);
  }
  if (static_cast<size_t>(n) != id2label->json().size()) {
    cfg.Fail("id2label", "ids must be 0 .. n-1, each once");
  }
  c->num_labels = n;
  c->labels.assign(static_cast<size_t>(n), "");
  for (auto it = id2label->json().begin(); it != id2label->json().end(); ++it) {
    c->labels[static_cast<size_t>(std::stoll(it.key()))] = it.value().get<std::string>();
  }
  if (cfg.Has("num_labels") && cfg.Int("num_labels") != n) {
    cfg.Fail("num_labels", "disagrees with id2label");
  }
}

// ---- Loading ----------------------------------------------------------------

namespace {

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw NotFound(path + ": cannot open (missing or unreadable)");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void Check(bool ok, const ModelConfig& c, const std::string& what) {
  if (!ok) throw InvalidArgument(c.source + ": inconsistent config: " + what);
}

void Validate(const ModelConfig& c) {
  // ViT reads images, not tokens: no vocabulary.
  Check(c.vocab_size > 0 || (c.encoder && c.patch_size > 0), c, "vocab_size must be positive");
  Check(c.hidden_size > 0, c, "hidden_size must be positive");
  Check(c.num_layers > 0, c, "the number of layers must be positive");
  Check(c.num_heads > 0, c, "the number of attention heads must be positive");
  Check(c.num_kv_heads > 0, c, "num_key_value_heads must be positive");
  Check(c.num_heads % c.num_kv_heads == 0, c,
        "num_attention_heads (" + std::to_string(c.num_heads) +
            ") is not a multiple of num_key_value_heads (" + std::to_string(c.num_kv_heads) + ")");
  Check(c.head_dim > 0, c, "head_dim must be positive");
  Check(c.positions != PositionKind::kRope || c.head_dim % 2 == 0, c,
        "head_dim must be even for rotary embeddings");
  Check(c.intermediate_size > 0, c, "intermediate size must be positive");
  Check(c.max_positions > 0, c, "max_position_embeddings must be positive");
  Check(c.norm_eps > 0, c, "the norm epsilon must be positive");
  Check(static_cast<int64_t>(c.layer_windows.size()) == c.num_layers, c,
        "one attention window per layer");
  if (c.head == HeadKind::kClassifier) {
    Check(c.num_labels > 0, c, "a classifier needs at least one label (num_labels, id2label)");
  }
  if (c.encoder) {
    Check(c.ffn == FfnKind::kMlp, c, "encoders have a plain MLP");
    Check(c.type_vocab_size >= 0 && c.position_offset >= 0, c, "sizes must not be negative");
    if (c.patch_size > 0) {
      Check(c.num_channels > 0 && c.image_size > 0 && c.image_size % c.patch_size == 0, c,
            "image_size must be a multiple of patch_size, num_channels positive");
    } else {
      Check(c.max_positions > c.position_offset, c,
            "max_position_embeddings must exceed the position offset");
    }
  }
  if (c.ffn == FfnKind::kMoe) {
    Check(c.num_experts > 0, c, "num_local_experts must be positive");
    Check(c.experts_per_token > 0 && c.experts_per_token <= c.num_experts, c,
          "num_experts_per_tok must be in [1, num_local_experts]");
  }
  // Guard against sizes whose products overflow later on.
  const int64_t kMax = int64_t{1} << 24;
  for (int64_t v : {c.vocab_size, c.hidden_size, c.num_layers, c.num_heads, c.head_dim,
                    c.intermediate_size, c.max_positions, c.num_experts, c.num_labels,
                    c.type_vocab_size, c.image_size, c.num_channels}) {
    Check(v <= kMax, c, "a size exceeds " + std::to_string(kMax));
  }
}

}  // namespace

ModelConfig ParseModelConfig(const std::string& json_text, const std::string& source) {
  nlohmann::json j = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw InvalidArgument(source + ": not valid JSON");
  if (!j.is_object()) throw InvalidArgument(source + ": expected a JSON object");
  JsonConfig cfg(j, source);
  ModelConfig c;
  c.source = source;
  c.model_type = cfg.String("model_type");
  const Architecture& arch = FindArchitecture(c.model_type);
  if (cfg.Has("architectures") && cfg.json()["architectures"].is_array() &&
      !cfg.json()["architectures"].empty() && cfg.json()["architectures"][0].is_string()) {
    c.architecture = cfg.json()["architectures"][0].get<std::string>();
  }
  // transformers 5 writes "dtype", older versions "torch_dtype".
  c.dtype = cfg.String("dtype", cfg.String("torch_dtype", "float32"));
  c.bos_token_id = cfg.OptionalInt("bos_token_id");
  c.eos_token_ids = cfg.IntList("eos_token_id");
  c.pad_token_id = cfg.OptionalInt("pad_token_id");
  if (auto stip = cfg.Object("stip")) c.stip_instance = stip->String("instance", "");
  arch.parse_config(cfg, &c);
  if (c.layer_windows.empty())
    c.layer_windows.assign(static_cast<size_t>(c.num_layers), std::nullopt);
  Validate(c);
  return c;
}

ModelConfig LoadModelConfig(const std::string& dir_or_file) {
  std::string path = dir_or_file;
  struct stat st;
  const bool dir = stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
  if (dir) path += "/config.json";
  ModelConfig c = ParseModelConfig(ReadText(path), path);
  const Architecture& arch = FindArchitecture(c.model_type);
  if (dir && arch.read_model_dir) {
    arch.read_model_dir(dir_or_file, &c);
    Validate(c);
  }
  return c;
}

std::string PatchConfigJson(const std::string& json_text, const std::string& overrides_json) {
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(json_text, nullptr, false);
  nlohmann::ordered_json o = nlohmann::ordered_json::parse(overrides_json, nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw InvalidArgument("config: not a JSON object");
  if (o.is_discarded() || !o.is_object())
    throw InvalidArgument("config overrides: not a JSON object");
  for (auto it = o.begin(); it != o.end(); ++it) j[it.key()] = it.value();
  return j.dump(2) + "\n";
}

}  // namespace stip
