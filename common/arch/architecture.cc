#include "common/arch/architecture.h"

#include <cmath>

#include "common/arch/json_config.h"
#include "common/error.h"

namespace stip {

// Defined in the family files.
const Architecture& Gpt2Architecture();
const Architecture& LlamaArchitecture();
const Architecture& MixtralArchitecture();

const std::vector<const Architecture*>& Architectures() {
  static const std::vector<const Architecture*> kAll = {
      &Gpt2Architecture(),
      &LlamaArchitecture(),
      &MixtralArchitecture(),
  };
  return kAll;
}

const Architecture& FindArchitecture(const std::string& model_type) {
  std::string supported;
  for (const Architecture* a : Architectures()) {
    for (const std::string& t : a->model_types) {
      if (t == model_type) return *a;
      supported += (supported.empty() ? "" : ", ") + t;
    }
  }
  throw Unimplemented("unsupported model_type \"" + model_type + "\" (supported: " + supported +
                      ")");
}

const char* RoleName(Role role) {
  switch (role) {
    case Role::kTokenEmbedding:
      return "token_embedding";
    case Role::kPositionEmbedding:
      return "position_embedding";
    case Role::kAttnNormWeight:
      return "attn_norm.weight";
    case Role::kAttnNormBias:
      return "attn_norm.bias";
    case Role::kQ:
      return "attn_q";
    case Role::kQBias:
      return "attn_q.bias";
    case Role::kK:
      return "attn_k";
    case Role::kKBias:
      return "attn_k.bias";
    case Role::kV:
      return "attn_v";
    case Role::kVBias:
      return "attn_v.bias";
    case Role::kQkv:
      return "attn_qkv";
    case Role::kQkvBias:
      return "attn_qkv.bias";
    case Role::kO:
      return "attn_output";
    case Role::kOBias:
      return "attn_output.bias";
    case Role::kFfnNormWeight:
      return "ffn_norm.weight";
    case Role::kFfnNormBias:
      return "ffn_norm.bias";
    case Role::kFfnUp:
      return "ffn_up";
    case Role::kFfnUpBias:
      return "ffn_up.bias";
    case Role::kFfnGate:
      return "ffn_gate";
    case Role::kFfnGateBias:
      return "ffn_gate.bias";
    case Role::kFfnDown:
      return "ffn_down";
    case Role::kFfnDownBias:
      return "ffn_down.bias";
    case Role::kRouter:
      return "moe_router";
    case Role::kExpertGate:
      return "expert_gate";
    case Role::kExpertUp:
      return "expert_up";
    case Role::kExpertDown:
      return "expert_down";
    case Role::kFinalNormWeight:
      return "output_norm.weight";
    case Role::kFinalNormBias:
      return "output_norm.bias";
    case Role::kLmHead:
      return "lm_head";
    case Role::kLmHeadBias:
      return "lm_head.bias";
  }
  return "?";
}

bool IsClientRole(Role role) {
  return role == Role::kTokenEmbedding || role == Role::kPositionEmbedding;
}

bool IsPerExpert(Role role) {
  return role == Role::kExpertGate || role == Role::kExpertUp || role == Role::kExpertDown;
}

bool IsPerLayer(Role role) {
  switch (role) {
    case Role::kTokenEmbedding:
    case Role::kPositionEmbedding:
    case Role::kFinalNormWeight:
    case Role::kFinalNormBias:
    case Role::kLmHead:
    case Role::kLmHeadBias:
      return false;
    default:
      return true;
  }
}

namespace {

// Shape of a role in nn.Linear layout ([out, in] for matrices).
std::vector<int64_t> LinearShape(const ModelConfig& c, Role role) {
  const int64_t d = c.hidden_size, m = c.intermediate_size;
  switch (role) {
    case Role::kTokenEmbedding:
      return {c.vocab_size, d};
    case Role::kPositionEmbedding:
      return {c.max_positions, d};
    case Role::kAttnNormWeight:
    case Role::kAttnNormBias:
    case Role::kFfnNormWeight:
    case Role::kFfnNormBias:
    case Role::kFinalNormWeight:
    case Role::kFinalNormBias:
    case Role::kOBias:
    case Role::kFfnDownBias:
      return {d};
    case Role::kQ:
      return {c.q_size(), d};
    case Role::kQBias:
      return {c.q_size()};
    case Role::kK:
    case Role::kV:
      return {c.kv_size(), d};
    case Role::kKBias:
    case Role::kVBias:
      return {c.kv_size()};
    case Role::kQkv:
      return {c.q_size() + 2 * c.kv_size(), d};
    case Role::kQkvBias:
      return {c.q_size() + 2 * c.kv_size()};
    case Role::kO:
      return {d, c.q_size()};
    case Role::kFfnUp:
    case Role::kFfnGate:
    case Role::kExpertGate:
    case Role::kExpertUp:
      return {m, d};
    case Role::kFfnUpBias:
    case Role::kFfnGateBias:
      return {m};
    case Role::kFfnDown:
    case Role::kExpertDown:
      return {d, m};
    case Role::kRouter:
      return {c.num_experts, d};
    case Role::kLmHead:
      return {c.vocab_size, d};
    case Role::kLmHeadBias:
      return {c.vocab_size};
  }
  return {};
}

std::string Expand(const std::string& pattern, int layer, int expert) {
  std::string out;
  for (size_t i = 0; i < pattern.size(); ++i) {
    if (pattern.compare(i, 3, "{L}") == 0) {
      out += std::to_string(layer);
      i += 2;
    } else if (pattern.compare(i, 3, "{E}") == 0) {
      out += std::to_string(expert);
      i += 2;
    } else {
      out += pattern[i];
    }
  }
  return out;
}

const TensorSpec* FindSpec(const ModelConfig& config, Role role) {
  for (const TensorSpec& s : FindArchitecture(config.model_type).tensors) {
    if (s.role == role && (!s.present || s.present(config))) return &s;
  }
  return nullptr;
}

}  // namespace

std::vector<TensorEntry> ExpectedTensors(const ModelConfig& config) {
  const Architecture& arch = FindArchitecture(config.model_type);
  std::vector<TensorEntry> globals, layers;
  for (const TensorSpec& s : arch.tensors) {
    if (s.present && !s.present(config)) continue;
    std::vector<int64_t> shape = LinearShape(config, s.role);
    if (s.layout == Layout::kConv1D && shape.size() == 2) std::swap(shape[0], shape[1]);
    if (!IsPerLayer(s.role)) {
      globals.push_back({Expand(s.pattern, -1, -1), s.role, s.layout, -1, -1, shape});
    }
  }
  for (int l = 0; l < config.num_layers; ++l) {
    for (const TensorSpec& s : arch.tensors) {
      if (!IsPerLayer(s.role) || (s.present && !s.present(config))) continue;
      std::vector<int64_t> shape = LinearShape(config, s.role);
      if (s.layout == Layout::kConv1D && shape.size() == 2) std::swap(shape[0], shape[1]);
      int n = IsPerExpert(s.role) ? static_cast<int>(config.num_experts) : 1;
      for (int e = 0; e < n; ++e) {
        int expert = IsPerExpert(s.role) ? e : -1;
        layers.push_back({Expand(s.pattern, l, expert), s.role, s.layout, l, expert, shape});
      }
    }
  }
  globals.insert(globals.end(), layers.begin(), layers.end());
  return globals;
}

std::string TensorName(const ModelConfig& config, Role role, int layer, int expert) {
  const TensorSpec* s = FindSpec(config, role);
  if (!s) {
    throw NotFound(std::string("model_type \"") + config.model_type + "\" has no tensor of role " +
                   RoleName(role));
  }
  return Expand(s->pattern, layer, expert);
}

bool HasRole(const ModelConfig& config, Role role) { return FindSpec(config, role) != nullptr; }

void ParseRope(const JsonConfig& cfg, double default_theta, ModelConfig* out) {
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

}  // namespace stip
