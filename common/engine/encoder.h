// Encoders (BERT, ViT): bidirectional Transformers without a KV cache, split
// as STIP splits them (docs/transform.md):
//
//   client (EncoderClient)            server (EncoderServer)
//   ------------------------------    ---------------------------------------
//   BERT: word + position + token      the layers (BERT post-LN, ViT pre-LN),
//   type embeddings, LayerNorm         ViT's final LayerNorm, and the head:
//   ViT: patch embedding, CLS,         masked LM [T, vocab], classifier
//   position embeddings                [labels], or none (hidden [T, d] or
//   x' = x[..., p] -------------->     pooled [d]); all still permuted
//   o = o'[..., argsort(p_c or p)] <-- o'
//   (+ L2 normalization: Finish)
//
// The server takes a batch of sequences of different lengths and pads them
// together under a key padding mask, so a sequence's result never depends on
// what it was batched with. This is the API the Encode RPC calls: the server
// gets [T_i, d] rows per sequence (a WordPiece tokenizer or an image decoder
// on the client produces the ids / pixels for EncoderClient).
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "common/arch/model_config.h"
#include "common/engine/model_weights.h"

namespace stip {

// What EncoderServer::Encode returns per sequence, from the config's head.
enum class EncoderOutput {
  kTokenLogits,     // masked LM: [T, vocab], permuted with p_c
  kSequenceLogits,  // classifier: [labels], permuted with p_c
  kHidden,          // no head, no pooling: [T, d], permuted with p
  kPooled,          // no head, mean or CLS pooling: [d], permuted with p
};
EncoderOutput EncoderOutputOf(const ModelConfig& config);
const char* EncoderOutputName(EncoderOutput output);
// Whether the output is un-permuted with p_c (logits) rather than p (hidden states).
bool OutputIsLogits(EncoderOutput output);

class EncoderClient {
 public:
  EncoderClient(ModelConfig config, ClientWeights weights);
  static EncoderClient Load(const std::string& model_dir, const LoadOptions& options = {});

  const ModelConfig& config() const { return config_; }

  // BERT: ids [T] (and token types [T], empty = all 0) -> x [T, d], the input
  // of the first layer (hidden_states[0]). Throws kInvalidArgument for ids out
  // of range, too long a sequence, or an empty one.
  at::Tensor EmbedTokens(const std::vector<int64_t>& ids,
                         const std::vector<int64_t>& token_types = {}) const;
  // ViT: pixels [C, H, W] at the config's image_size, already rescaled and
  // normalized as preprocessor_config.json says -> x [1 + patches, d].
  at::Tensor EmbedImage(const at::Tensor& pixels) const;

  // After un-permuting: L2-normalizes pooled embeddings when the model says so
  // (sentence-transformers' Normalize); anything else is returned unchanged.
  at::Tensor Finish(const at::Tensor& output) const;

 private:
  ModelConfig config_;
  ClientWeights w_;
};

class EncoderServer {
 public:
  EncoderServer(ModelConfig config, ServerWeights weights);
  static EncoderServer Load(const std::string& model_dir, const LoadOptions& options = {});

  const ModelConfig& config() const { return config_; }
  EncoderOutput output() const { return EncoderOutputOf(config_); }

  // One result per input (see EncoderOutput), in the inputs' order. Each input
  // is [T_i, d] in the weights' dtype and device; lengths may differ (1 <= T_i
  // <= max_positions). Throws kInvalidArgument naming the bad input.
  std::vector<at::Tensor> Encode(const std::vector<at::Tensor>& inputs) const;
  // The last layer's output [T_i, d] (transformers' hidden_states[-1]: before
  // ViT's final LayerNorm and before any head). For tests and `verify`.
  std::vector<at::Tensor> Hidden(const std::vector<at::Tensor>& inputs) const;

 private:
  // Padded batch [B, T, d] and its key mask [B, T] (true = real token).
  at::Tensor Layers(const at::Tensor& x, const at::Tensor& valid) const;
  std::vector<at::Tensor> Run(const std::vector<at::Tensor>& inputs, bool head) const;

  ModelConfig config_;
  ServerWeights w_;
};

}  // namespace stip
