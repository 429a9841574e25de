// Parsing shared by the LLaMA-style families (llama.cc, mixtral.cc, and any
// decoder-only RoPE transformer that uses the same config.json keys): the
// common keys, rotary scaling, and per-layer sliding windows. Header-only:
// each function is used by a family file or two.
#pragma once

#include <cmath>
#include <optional>
#include <string>

#include "common/arch/json_config.h"
#include "common/arch/model_config.h"
#include "common/error.h"

namespace stip {

// rope_parameters (transformers 5) or rope_theta + rope_scaling (older);
// throws kUnimplemented for rope types the engine does not implement.
inline void ParseRope(const JsonConfig& cfg, double default_theta, ModelConfig* out) {
  RopeConfig& r = out->rope;
  r.theta = cfg.Number("rope_theta", default_theta);
  // transformers 5: rope_parameters {rope_theta, rope_type, factor, ...};
  // older: rope_theta at top level and rope_scaling {type|rope_type, factor, ...}.
  std::optional<JsonConfig> params = cfg.Object("rope_parameters");
  if (!params) params = cfg.Object("rope_scaling");
  if (params) {
    r.theta = params->Number("rope_theta", r.theta);
    r.type = params->String("rope_type", params->String("type", "default"));
    r.factor = params->Number("factor", 1.0);
    r.low_freq_factor = params->Number("low_freq_factor", r.low_freq_factor);
    r.high_freq_factor = params->Number("high_freq_factor", r.high_freq_factor);
    r.original_max_position_embeddings =
        params->Int("original_max_position_embeddings", r.original_max_position_embeddings);
  }
  if (r.type != "default" && r.type != "linear" && r.type != "llama3") {
    throw Unimplemented(cfg.source() + ": rope type \"" + r.type +
                        "\" is not supported (supported: default, linear, llama3)");
  }
  if (!(r.theta > 0) || !std::isfinite(r.theta)) cfg.Fail("rope_theta", "must be positive");
  if (!(r.factor > 0)) cfg.Fail("factor", "rope scaling factor must be positive");
  double partial = cfg.Number("partial_rotary_factor", 1.0);
  if (partial != 1.0) {
    throw Unimplemented(cfg.source() + ": partial_rotary_factor != 1 is not supported");
  }
}

// Shared by llama.cc and mixtral.cc: the decoder-only RoPE transformer keys.
inline void ParseLlamaCommon(const JsonConfig& cfg, ModelConfig* c, double default_theta) {
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
  c->activation = ParseActivation(cfg, "hidden_act", "silu");
  c->ffn = FfnKind::kGated;
  c->positions = PositionKind::kRope;
  ParseRope(cfg, default_theta, c);
  c->tie_word_embeddings = cfg.Bool("tie_word_embeddings", false);
  c->layer_windows.assign(static_cast<size_t>(c->num_layers), std::nullopt);
}

// Per-layer attention windows from `layer_types` (transformers 5) or the
// older sliding_window / use_sliding_window / max_window_layers keys.
inline void ParseWindows(const JsonConfig& cfg, ModelConfig* c, bool window_needs_flag) {
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

}  // namespace stip
