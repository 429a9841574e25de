// Config keys that the encoder families (bert.cc, vit.cc) share: the sizes of
// a multi-head (not grouped-query) Transformer in Hugging Face's names.
#pragma once

#include "common/arch/json_config.h"
#include "common/arch/model_config.h"

namespace stip {

inline void ParseEncoderSizes(const JsonConfig& cfg, ModelConfig* c) {
  c->hidden_size = cfg.Int("hidden_size");
  c->num_layers = cfg.Int("num_hidden_layers");
  c->num_heads = cfg.Int("num_attention_heads");
  c->num_kv_heads = c->num_heads;
  if (c->num_heads <= 0 || c->hidden_size % c->num_heads != 0) {
    cfg.Fail("num_attention_heads", "must divide hidden_size");
  }
  c->head_dim = c->hidden_size / c->num_heads;
  c->intermediate_size = cfg.Int("intermediate_size");
}

}  // namespace stip
