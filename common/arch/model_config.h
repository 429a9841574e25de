// The normalized description of a model, read from a Hugging Face
// `config.json` by the model family's architecture (common/arch/<family>.cc).
// Torch-free.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace stip {

enum class NormKind { kLayerNorm, kRmsNorm };
enum class Activation { kGeluTanh, kGelu, kSilu, kRelu };
enum class FfnKind { kMlp, kGated, kMoe };  // fc-act-proj | SwiGLU | sparse MoE of SwiGLU
enum class PositionKind { kLearned, kRope };
// What the server computes after the layers.
//   kLmHead: causal LM, next-token logits (vocab)
//   kMaskedLm: BERT's masked-LM head (vocab) on every position
//   kClassifier: label logits of the sequence (BERT: tanh pooler on [CLS];
//                ViT: final LayerNorm, then [CLS])
//   kNone: hidden states (BERT: the last layer's; ViT: after the final norm),
//          or pooled (mean or CLS) for sentence embeddings
enum class HeadKind { kLmHead, kMaskedLm, kClassifier, kNone };
enum class Pooling { kNone, kCls, kMean };

struct RopeConfig {
  double theta = 10000.0;
  std::string type = "default";  // default | linear | llama3
  double factor = 1.0;
  double low_freq_factor = 1.0;                     // llama3
  double high_freq_factor = 4.0;                    // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3
};

struct ModelConfig {
  std::string model_type;    // "gpt2", "llama", "mistral", "qwen2", "mixtral", "bert", "vit"
  std::string architecture;  // architectures[0], e.g. "LlamaForCausalLM"
  std::string source;        // the file it was read from (for messages)

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t intermediate_size = 0;
  int64_t max_positions = 0;

  NormKind norm = NormKind::kRmsNorm;
  double norm_eps = 1e-6;
  Activation activation = Activation::kSilu;
  FfnKind ffn = FfnKind::kGated;
  PositionKind positions = PositionKind::kRope;
  RopeConfig rope;

  bool qkv_bias = false;
  bool o_bias = false;
  bool mlp_bias = false;
  bool tie_word_embeddings = false;
  // Attention scores are multiplied by attn_scale (1/sqrt(head_dim) normally);
  // GPT-2's scale_attn_by_inverse_layer_idx further divides by (layer + 1).
  bool scale_attn_by_inverse_layer_idx = false;

  // Per layer: sliding-window size, or nullopt for full causal attention.
  std::vector<std::optional<int64_t>> layer_windows;

  // Encoders (bidirectional attention, no KV cache): BERT and ViT.
  bool encoder = false;
  bool post_norm = false;  // BERT: LayerNorm after each residual add
  HeadKind head = HeadKind::kLmHead;
  Pooling pooling = Pooling::kNone;  // head kNone: what the server returns
  bool normalize = false;            // head kNone: the client L2-normalizes (2_Normalize)
  int64_t num_labels = 0;            // head kClassifier
  std::vector<std::string> labels;   // id2label, by id (empty names where missing)
  int64_t type_vocab_size = 0;       // BERT
  int64_t position_offset = 0;       // RoBERTa: positions start at padding_idx + 1
  int64_t image_size = 0;            // ViT
  int64_t patch_size = 0;            // ViT
  int64_t num_channels = 0;          // ViT
  // Replaces "{P}" in the family's tensor names: the base model's prefix
  // ("bert.") in task checkpoints, "" in a bare BertModel / ViTModel.
  std::string weight_prefix;

  int64_t num_experts = 0;        // MoE only
  int64_t experts_per_token = 0;  // MoE only

  std::string dtype = "float32";  // the checkpoint's dtype ("float16", "bfloat16", ...)
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> pad_token_id;

  // Set on checkpoints written by `stip-developer transform`: the model
  // instance id (never any key material).
  std::string stip_instance;

  int64_t q_size() const { return num_heads * head_dim; }
  int64_t kv_size() const { return num_kv_heads * head_dim; }
  int64_t group_size() const { return num_heads / num_kv_heads; }
  // The size of what the head scores, permuted with p_c: the vocabulary, the
  // labels, or nothing (hidden states are permuted with p).
  int64_t output_size() const {
    return head == HeadKind::kClassifier ? num_labels : head == HeadKind::kNone ? 0 : vocab_size;
  }
};

// Reads `dir/config.json` (or a config.json path): dispatches on model_type to
// the registered architecture. Throws stip::Error naming the file and the key
// (missing required key, wrong type, unknown model_type, inconsistent sizes).
ModelConfig LoadModelConfig(const std::string& dir_or_file);
ModelConfig ParseModelConfig(const std::string& json_text, const std::string& source);

// Writes a config.json for a transformed checkpoint: the original JSON text with
// the given top-level keys replaced (e.g. tie_word_embeddings=false and the
// stip instance record). `overrides_json` is a JSON object text.
std::string PatchConfigJson(const std::string& json_text, const std::string& overrides_json);

}  // namespace stip
