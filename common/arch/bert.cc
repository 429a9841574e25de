// BERT: learned positions and token types, embedding LayerNorm (all on the
// client), post-LayerNorm bidirectional layers with exact GELU, and one of
// three heads picked by `architectures`: masked LM (BertForMaskedLM,
// BertForPreTraining), sequence classification (tanh pooler on [CLS] +
// classifier), or none (BertModel: hidden states; sentence-transformers
// checkpoints add mean or CLS pooling and L2 normalization via modules.json).
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/arch/architecture.h"
#include "common/arch/encoder_common.h"
#include "common/arch/json_config.h"
#include "common/error.h"

namespace stip {

namespace {

bool MaskedLm(const ModelConfig& c) { return c.head == HeadKind::kMaskedLm; }
bool Classifier(const ModelConfig& c) { return c.head == HeadKind::kClassifier; }
bool TokenTypes(const ModelConfig& c) { return c.type_vocab_size > 0; }

void ParseBert(const JsonConfig& cfg, ModelConfig* c) {
  c->vocab_size = cfg.Int("vocab_size");
  ParseEncoderSizes(cfg, c);
  c->max_positions = cfg.Int("max_position_embeddings");
  c->type_vocab_size = cfg.Int("type_vocab_size", 2);
  c->norm = NormKind::kLayerNorm;
  c->norm_eps = cfg.Number("layer_norm_eps", 1e-12);
  c->activation = ParseActivation(cfg, "hidden_act", "gelu");
  c->ffn = FfnKind::kMlp;
  c->positions = PositionKind::kLearned;
  c->qkv_bias = c->o_bias = c->mlp_bias = true;
  c->encoder = true;
  c->post_norm = true;
  c->tie_word_embeddings = cfg.Bool("tie_word_embeddings", true);
  if (cfg.Bool("is_decoder", false) || cfg.Bool("add_cross_attention", false)) {
    throw Unimplemented(cfg.source() + ": BERT as a decoder (is_decoder, add_cross_attention)");
  }
  const std::string pos = cfg.String("position_embedding_type", "absolute");
  if (pos != "absolute") {
    throw Unimplemented(cfg.source() + ": position_embedding_type \"" + pos +
                        "\" (supported: absolute)");
  }
  const std::string& a = c->architecture;
  if (a == "BertForMaskedLM" || a == "BertForPreTraining") {
    c->head = HeadKind::kMaskedLm;
    c->weight_prefix = "bert.";
  } else if (a == "BertForSequenceClassification") {
    c->head = HeadKind::kClassifier;
    c->weight_prefix = "bert.";
    ParseLabels(cfg, c);  // (any problem_type: the server returns the head's raw scores)
  } else if (a.empty() || a == "BertModel") {
    c->head = HeadKind::kNone;
    c->weight_prefix = "";
  } else {
    throw Unimplemented(cfg.source() + ": architecture \"" + a +
                        "\" (supported: BertModel, BertForMaskedLM, BertForPreTraining, "
                        "BertForSequenceClassification)");
  }
}

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw NotFound(path + ": cannot open (missing or unreadable)");
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw InvalidArgument(path + ": not valid JSON");
  return j;
}

// sentence-transformers: modules.json lists Transformer (this directory),
// Pooling (1_Pooling/config.json: mean or CLS) and optionally Normalize.
void ReadSentenceTransformers(const std::string& dir, ModelConfig* c) {
  const std::string modules_path = dir + "/modules.json";
  if (!std::ifstream(modules_path)) {
    // A transformed checkpoint or client bundle keeps what the modules said
    // in config.json's stip record ({"pooling": "mean" | "cls", "normalize":
    // bool}): both travel as flat directories (no 1_Pooling/).
    const std::string config_path = dir + "/config.json";
    if (!std::ifstream(config_path)) return;
    const nlohmann::json j = ReadJson(config_path);
    if (!j.is_object() || !j.contains("stip") || !j["stip"].is_object()) return;
    const nlohmann::json& stip = j["stip"];
    if (!stip.contains("pooling")) return;
    const std::string pooling =
        stip["pooling"].is_string() ? stip["pooling"].get<std::string>() : "";
    if (pooling != "mean" && pooling != "cls") {
      throw InvalidArgument(config_path + ": stip.pooling must be \"mean\" or \"cls\"");
    }
    if (c->head != HeadKind::kNone) {
      throw InvalidArgument(config_path + ": stip.pooling on a model with a head");
    }
    c->pooling = pooling == "cls" ? Pooling::kCls : Pooling::kMean;
    c->normalize = stip.contains("normalize") && stip["normalize"].is_boolean() &&
                   stip["normalize"].get<bool>();
    return;
  }
  nlohmann::json modules = ReadJson(modules_path);
  if (!modules.is_array()) throw InvalidArgument(modules_path + ": expected a JSON list");
  bool pooled = false;
  for (const auto& m : modules) {
    if (!m.is_object() || !m.contains("type") || !m["type"].is_string()) {
      throw InvalidArgument(modules_path + ": each module needs a \"type\" string");
    }
    const std::string type = m["type"].get<std::string>();
    const std::string path =
        m.contains("path") && m["path"].is_string() ? m["path"].get<std::string>() : "";
    if (type == "sentence_transformers.models.Transformer") {
      if (!path.empty()) {
        throw Unimplemented(modules_path +
                            ": the Transformer module must be this directory (path \"" + path +
                            "\")");
      }
    } else if (type == "sentence_transformers.models.Pooling") {
      const std::string pool_path = dir + "/" + path + "/config.json";
      JsonConfig pool(ReadJson(pool_path), pool_path);
      const bool cls = pool.Bool("pooling_mode_cls_token", false);
      const bool mean = pool.Bool("pooling_mode_mean_tokens", false);
      for (const char* other : {"pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens",
                                "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken"}) {
        if (pool.Bool(other, false)) pool.Fail(other, "unsupported pooling (supported: cls, mean)");
      }
      if (cls == mean) pool.Fail("pooling_mode_mean_tokens", "exactly one of cls or mean pooling");
      c->pooling = cls ? Pooling::kCls : Pooling::kMean;
      pooled = true;
    } else if (type == "sentence_transformers.models.Normalize") {
      c->normalize = true;
    } else {
      throw Unimplemented(modules_path + ": module type \"" + type +
                          "\" (supported: Transformer, Pooling, Normalize)");
    }
  }
  if (!pooled) throw InvalidArgument(modules_path + ": no Pooling module");
  if (c->head != HeadKind::kNone) {
    throw InvalidArgument(modules_path + ": a sentence-transformers model must be a BertModel");
  }
}

}  // namespace

const Architecture& BertArchitecture() {
  static const Architecture kArch{
      "bert",
      {"bert"},
      ParseBert,
      {
          {"{P}embeddings.word_embeddings.weight", Role::kTokenEmbedding},
          {"{P}embeddings.position_embeddings.weight", Role::kPositionEmbedding},
          {"{P}embeddings.token_type_embeddings.weight", Role::kTokenTypeEmbedding, Layout::kLinear,
           TokenTypes},
          {"{P}embeddings.LayerNorm.weight", Role::kEmbedNormWeight},
          {"{P}embeddings.LayerNorm.bias", Role::kEmbedNormBias},
          {"{P}encoder.layer.{L}.attention.self.query.weight", Role::kQ},
          {"{P}encoder.layer.{L}.attention.self.query.bias", Role::kQBias},
          {"{P}encoder.layer.{L}.attention.self.key.weight", Role::kK},
          {"{P}encoder.layer.{L}.attention.self.key.bias", Role::kKBias},
          {"{P}encoder.layer.{L}.attention.self.value.weight", Role::kV},
          {"{P}encoder.layer.{L}.attention.self.value.bias", Role::kVBias},
          {"{P}encoder.layer.{L}.attention.output.dense.weight", Role::kO},
          {"{P}encoder.layer.{L}.attention.output.dense.bias", Role::kOBias},
          {"{P}encoder.layer.{L}.attention.output.LayerNorm.weight", Role::kAttnNormWeight},
          {"{P}encoder.layer.{L}.attention.output.LayerNorm.bias", Role::kAttnNormBias},
          {"{P}encoder.layer.{L}.intermediate.dense.weight", Role::kFfnUp},
          {"{P}encoder.layer.{L}.intermediate.dense.bias", Role::kFfnUpBias},
          {"{P}encoder.layer.{L}.output.dense.weight", Role::kFfnDown},
          {"{P}encoder.layer.{L}.output.dense.bias", Role::kFfnDownBias},
          {"{P}encoder.layer.{L}.output.LayerNorm.weight", Role::kFfnNormWeight},
          {"{P}encoder.layer.{L}.output.LayerNorm.bias", Role::kFfnNormBias},
          {"cls.predictions.transform.dense.weight", Role::kMlmDense, Layout::kLinear, MaskedLm},
          {"cls.predictions.transform.dense.bias", Role::kMlmDenseBias, Layout::kLinear, MaskedLm},
          {"cls.predictions.transform.LayerNorm.weight", Role::kMlmNormWeight, Layout::kLinear,
           MaskedLm},
          {"cls.predictions.transform.LayerNorm.bias", Role::kMlmNormBias, Layout::kLinear,
           MaskedLm},
          {"cls.predictions.decoder.weight", Role::kMlmDecoder, Layout::kLinear, MaskedLm},
          {"cls.predictions.bias", Role::kMlmDecoderBias, Layout::kLinear, MaskedLm},
          {"{P}pooler.dense.weight", Role::kPoolerDense, Layout::kLinear, Classifier},
          {"{P}pooler.dense.bias", Role::kPoolerBias, Layout::kLinear, Classifier},
          {"classifier.weight", Role::kClassifier, Layout::kLinear, Classifier},
          {"classifier.bias", Role::kClassifierBias, Layout::kLinear, Classifier},
      },
      ReadSentenceTransformers,
  };
  return kArch;
}

}  // namespace stip
