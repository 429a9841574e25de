// The LLaMA family: RMSNorm, rotary positions, grouped-query attention,
// SwiGLU. Mistral adds a sliding window, Qwen2 q/k/v biases.
#include "common/arch/architecture.h"
#include "common/arch/llama_common.h"

namespace stip {

namespace {

bool QkvBias(const ModelConfig& c) { return c.qkv_bias; }
bool OBias(const ModelConfig& c) { return c.o_bias; }
bool MlpBias(const ModelConfig& c) { return c.mlp_bias; }

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
          {"model.layers.{L}.input_layernorm.weight", Role::kAttnNormWeight},
          {"model.layers.{L}.self_attn.q_proj.weight", Role::kQ},
          {"model.layers.{L}.self_attn.q_proj.bias", Role::kQBias, Layout::kLinear, QkvBias},
          {"model.layers.{L}.self_attn.k_proj.weight", Role::kK},
          {"model.layers.{L}.self_attn.k_proj.bias", Role::kKBias, Layout::kLinear, QkvBias},
          {"model.layers.{L}.self_attn.v_proj.weight", Role::kV},
          {"model.layers.{L}.self_attn.v_proj.bias", Role::kVBias, Layout::kLinear, QkvBias},
          {"model.layers.{L}.self_attn.o_proj.weight", Role::kO},
          {"model.layers.{L}.self_attn.o_proj.bias", Role::kOBias, Layout::kLinear, OBias},
          {"model.layers.{L}.post_attention_layernorm.weight", Role::kFfnNormWeight},
          {"model.layers.{L}.mlp.gate_proj.weight", Role::kFfnGate},
          {"model.layers.{L}.mlp.gate_proj.bias", Role::kFfnGateBias, Layout::kLinear, MlpBias},
          {"model.layers.{L}.mlp.up_proj.weight", Role::kFfnUp},
          {"model.layers.{L}.mlp.up_proj.bias", Role::kFfnUpBias, Layout::kLinear, MlpBias},
          {"model.layers.{L}.mlp.down_proj.weight", Role::kFfnDown},
          {"model.layers.{L}.mlp.down_proj.bias", Role::kFfnDownBias, Layout::kLinear, MlpBias},
          {"model.norm.weight", Role::kFinalNormWeight},
          {"lm_head.weight", Role::kLmHead},
      },
  };
  return kArch;
}

}  // namespace stip
