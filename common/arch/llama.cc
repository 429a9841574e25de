// The LLaMA family: RMSNorm, rotary positions, grouped-query attention,
// SwiGLU. Mistral adds a sliding window, Qwen2 q/k/v biases.
#include "common/arch/architecture.h"
#include "common/arch/json_config.h"
#include "common/error.h"

namespace stip {

namespace {

bool Untied(const ModelConfig& c) { return !c.tie_word_embeddings; }
bool QkvBias(const ModelConfig& c) { return c.qkv_bias; }
bool OBias(const ModelConfig& c) { return c.o_bias; }
bool MlpBias(const ModelConfig& c) { return c.mlp_bias; }

}  // namespace

// Shared by llama.cc and mixtral.cc: the decoder-only RoPE transformer keys.
void ParseLlamaCommon(const JsonConfig& cfg, ModelConfig* c, double default_theta) {
  c->vocab_size = cfg.Int("vocab_size");
  c->hidden_size = cfg.Int("hidden_size");
  c->num_layers = cfg.Int("num_hidden_layers");
  c->num_heads = cfg.Int("num_attention_heads");
  c->num_kv_heads = cfg.Int("num_key_value_heads", c->num_heads);
  if (c->num_heads <= 0) cfg.Fail("num_attention_heads", "must be positive");
  if (cfg.Has("head_dim")) {
    c->head_dim = cfg.Int("head_dim");
  } else {
    if (c->hidden_size % c->num_heads != 0) {
      cfg.Fail("num_attention_heads", "must divide hidden_size when head_dim is not given");
    }
    c->head_dim = c->hidden_size / c->num_heads;
  }
  c->intermediate_size = cfg.Int("intermediate_size");
  c->max_positions = cfg.Int("max_position_embeddings");
  c->norm = NormKind::kRmsNorm;
  c->norm_eps = cfg.Number("rms_norm_eps", 1e-6);
  std::string act = cfg.String("hidden_act", "silu");
  if (act != "silu" && act != "swish")
    cfg.Fail("hidden_act", "unsupported activation \"" + act + "\"");
  c->activation = Activation::kSilu;
  c->ffn = FfnKind::kGated;
  c->positions = PositionKind::kRope;
  ParseRope(cfg, default_theta, c);
  c->tie_word_embeddings = cfg.Bool("tie_word_embeddings", false);
  c->layer_windows.assign(static_cast<size_t>(c->num_layers), std::nullopt);
}

// Per-layer attention windows from `layer_types` (transformers 5) or the
// older sliding_window / use_sliding_window / max_window_layers keys.
void ParseWindows(const JsonConfig& cfg, ModelConfig* c, bool window_needs_flag) {
  std::optional<int64_t> window = cfg.OptionalInt("sliding_window");
  if (window && *window <= 0) cfg.Fail("sliding_window", "must be positive");
  bool use = window.has_value() && (!window_needs_flag || cfg.Bool("use_sliding_window", false));
  const auto& j = cfg.json();
  if (j.contains("layer_types") && j["layer_types"].is_array()) {
    const auto& types = j["layer_types"];
    if (static_cast<int64_t>(types.size()) != c->num_layers) {
      cfg.Fail("layer_types", "must list one type per layer");
    }
    for (int64_t l = 0; l < c->num_layers; ++l) {
      const auto& t = types[static_cast<size_t>(l)];
      if (!t.is_string()) cfg.Fail("layer_types", "expected strings");
      std::string s = t.get<std::string>();
      if (s == "sliding_attention") {
        if (!window) cfg.Fail("sliding_window", "missing but layer_types has sliding_attention");
        c->layer_windows[static_cast<size_t>(l)] = window;
      } else if (s != "full_attention") {
        cfg.Fail("layer_types", "unsupported layer type \"" + s + "\"");
      }
    }
    return;
  }
  if (!use) return;
  int64_t first = window_needs_flag ? cfg.Int("max_window_layers", 0) : 0;
  for (int64_t l = first; l < c->num_layers; ++l) c->layer_windows[static_cast<size_t>(l)] = window;
}

namespace {

void ParseLlama(const JsonConfig& cfg, ModelConfig* c) {
  const std::string type = cfg.String("model_type");
  ParseLlamaCommon(cfg, c, 10000.0);
  if (type == "qwen2") {
    c->qkv_bias = true;  // Qwen2 always has q/k/v biases, never an o bias
    ParseWindows(cfg, c, /*window_needs_flag=*/true);
  } else {
    c->qkv_bias = cfg.Bool("attention_bias", false);
    c->o_bias = c->qkv_bias;
    c->mlp_bias = cfg.Bool("mlp_bias", false);
    if (type == "mistral") ParseWindows(cfg, c, /*window_needs_flag=*/false);
  }
}

}  // namespace

const Architecture& LlamaArchitecture() {
  static const Architecture kArch{
      "llama",
      {"llama", "mistral", "qwen2"},
      ParseLlama,
      {
          {"model.embed_tokens.weight", Role::kTokenEmbedding},
          {"model.layers.{L}.input_layernorm.weight", Role::kAttnNormWeight, Layout::kVector},
          {"model.layers.{L}.self_attn.q_proj.weight", Role::kQ},
          {"model.layers.{L}.self_attn.q_proj.bias", Role::kQBias, Layout::kVector, QkvBias},
          {"model.layers.{L}.self_attn.k_proj.weight", Role::kK},
          {"model.layers.{L}.self_attn.k_proj.bias", Role::kKBias, Layout::kVector, QkvBias},
          {"model.layers.{L}.self_attn.v_proj.weight", Role::kV},
          {"model.layers.{L}.self_attn.v_proj.bias", Role::kVBias, Layout::kVector, QkvBias},
          {"model.layers.{L}.self_attn.o_proj.weight", Role::kO},
          {"model.layers.{L}.self_attn.o_proj.bias", Role::kOBias, Layout::kVector, OBias},
          {"model.layers.{L}.post_attention_layernorm.weight", Role::kFfnNormWeight,
           Layout::kVector},
          {"model.layers.{L}.mlp.gate_proj.weight", Role::kFfnGate},
          {"model.layers.{L}.mlp.gate_proj.bias", Role::kFfnGateBias, Layout::kVector, MlpBias},
          {"model.layers.{L}.mlp.up_proj.weight", Role::kFfnUp},
          {"model.layers.{L}.mlp.up_proj.bias", Role::kFfnUpBias, Layout::kVector, MlpBias},
          {"model.layers.{L}.mlp.down_proj.weight", Role::kFfnDown},
          {"model.layers.{L}.mlp.down_proj.bias", Role::kFfnDownBias, Layout::kVector, MlpBias},
          {"model.norm.weight", Role::kFinalNormWeight, Layout::kVector},
          {"lm_head.weight", Role::kLmHead, Layout::kLinear, Untied},
      },
  };
  return kArch;
}

}  // namespace stip
