#include "common/engine/encoder.h"

#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/engine/layers.h"
#include "common/engine/tensor_util.h"
#include "common/error.h"

namespace stip {

EncoderOutput EncoderOutputOf(const ModelConfig& c) {
  switch (c.head) {
    case HeadKind::kMaskedLm:
      return EncoderOutput::kTokenLogits;
    case HeadKind::kClassifier:
      return EncoderOutput::kSequenceLogits;
    case HeadKind::kNone:
      return c.pooling == Pooling::kNone ? EncoderOutput::kHidden : EncoderOutput::kPooled;
    case HeadKind::kLmHead:
      break;
  }
  throw InvalidArgument(c.source + ": not an encoder (model_type " + c.model_type + ")");
}

const char* EncoderOutputName(EncoderOutput output) {
  switch (output) {
    case EncoderOutput::kTokenLogits:
      return "token_logits";
    case EncoderOutput::kSequenceLogits:
      return "sequence_logits";
    case EncoderOutput::kHidden:
      return "hidden";
    case EncoderOutput::kPooled:
      return "pooled";
  }
  return "?";
}

bool OutputIsLogits(EncoderOutput output) {
  return output == EncoderOutput::kTokenLogits || output == EncoderOutput::kSequenceLogits;
}

namespace {

void RequireEncoder(const ModelConfig& c) {
  if (!c.encoder) {
    throw InvalidArgument(c.source + ": model_type " + c.model_type +
                          " is not an encoder (use the causal engine)");
  }
}

}  // namespace

// ---- client ------------------------------------------------------------------

EncoderClient::EncoderClient(ModelConfig config, ClientWeights weights)
    : config_(std::move(config)), w_(std::move(weights)) {
  RequireEncoder(config_);
}

EncoderClient EncoderClient::Load(const std::string& dir, const LoadOptions& options) {
  ModelConfig config = LoadModelConfig(dir);
  Checkpoint ckpt = Checkpoint::Open(dir);
  CheckpointSource source(ckpt);
  ClientWeights w = LoadClientWeights(config, source, options);
  return EncoderClient(std::move(config), std::move(w));
}

at::Tensor EncoderClient::EmbedTokens(const std::vector<int64_t>& ids,
                                      const std::vector<int64_t>& token_types) const {
  c10::InferenceMode guard;
  const ModelConfig& c = config_;
  if (!w_.token_embedding.defined()) {
    throw InvalidArgument(c.source + ": this model reads images, not tokens");
  }
  const auto t = static_cast<int64_t>(ids.size());
  if (t == 0) throw InvalidArgument("EmbedTokens: empty sequence");
  if (t + c.position_offset > c.max_positions) {
    throw InvalidArgument("EmbedTokens: " + std::to_string(t) +
                          " tokens exceed the model's max_position_embeddings (" +
                          std::to_string(c.max_positions - c.position_offset) + ")");
  }
  for (int64_t id : ids) {
    if (id < 0 || id >= c.vocab_size) {
      throw InvalidArgument("token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                            std::to_string(c.vocab_size) + ")");
    }
  }
  if (!token_types.empty() && token_types.size() != ids.size()) {
    throw InvalidArgument("EmbedTokens: " + std::to_string(token_types.size()) +
                          " token types for " + std::to_string(t) + " tokens");
  }
  const at::Device dev = w_.token_embedding.device();
  at::Tensor idx = at::tensor(at::ArrayRef<int64_t>(ids), at::kLong).to(dev);
  at::Tensor x = w_.token_embedding.index_select(0, idx);
  if (w_.token_type_embedding.defined()) {
    std::vector<int64_t> types =
        token_types.empty() ? std::vector<int64_t>(ids.size(), 0) : token_types;
    for (int64_t ty : types) {
      if (ty < 0 || ty >= c.type_vocab_size) {
        throw InvalidArgument("token type " + std::to_string(ty) + " is outside [0, " +
                              std::to_string(c.type_vocab_size) + ")");
      }
    }
    x = x + w_.token_type_embedding.index_select(
                0, at::tensor(at::ArrayRef<int64_t>(types), at::kLong).to(dev));
  } else if (!token_types.empty()) {
    throw InvalidArgument("EmbedTokens: this model has no token types");
  }
  x = x + w_.position_embedding.narrow(0, c.position_offset, t);
  if (w_.embed_norm_w.defined()) {
    x = Norm(x, NormKind::kLayerNorm, w_.embed_norm_w, w_.embed_norm_b, c.norm_eps);
  }
  return x;
}

at::Tensor EncoderClient::EmbedImage(const at::Tensor& pixels) const {
  c10::InferenceMode guard;
  const ModelConfig& c = config_;
  if (!w_.patch_w.defined()) {
    throw InvalidArgument(c.source + ": this model reads tokens, not images");
  }
  const std::vector<int64_t> want = {c.num_channels, c.image_size, c.image_size};
  if (pixels.dim() != 3 || pixels.sizes().vec() != want) {
    throw InvalidArgument("EmbedImage: expected pixels of shape " + ShapeString(want) + ", got " +
                          ShapeString(pixels.sizes().vec()));
  }
  at::Tensor weight =
      w_.patch_w.reshape({c.hidden_size, c.num_channels, c.patch_size, c.patch_size});
  at::Tensor in = pixels.to(weight.device(), weight.scalar_type()).unsqueeze(0);
  at::Tensor patches = at::conv2d(in, weight, w_.patch_b, {c.patch_size, c.patch_size});
  patches = patches.flatten(2).transpose(1, 2).squeeze(0);  // [n, d]
  at::Tensor x = at::cat({w_.cls_token, patches}, 0);
  return x + w_.position_embedding;
}

at::Tensor EncoderClient::Finish(const at::Tensor& output) const {
  if (!config_.normalize || EncoderOutputOf(config_) != EncoderOutput::kPooled) return output;
  // As torch.nn.functional.normalize(p=2, eps=1e-12).
  at::Tensor f = output.to(at::kFloat);
  return (f / f.norm(2, -1, /*keepdim=*/true).clamp_min(1e-12)).to(output.scalar_type());
}

// ---- server ------------------------------------------------------------------

EncoderServer::EncoderServer(ModelConfig config, ServerWeights weights)
    : config_(std::move(config)), w_(std::move(weights)) {
  RequireEncoder(config_);
  EncoderOutputOf(config_);  // a known head
}

EncoderServer EncoderServer::Load(const std::string& dir, const LoadOptions& options) {
  ModelConfig config = LoadModelConfig(dir);
  Checkpoint ckpt = Checkpoint::Open(dir);
  CheckpointSource source(ckpt);
  ServerWeights w = LoadServerWeights(config, source, options);
  return EncoderServer(std::move(config), std::move(w));
}

at::Tensor EncoderServer::Layers(const at::Tensor& input, const at::Tensor& valid) const {
  const ModelConfig& c = config_;
  const int64_t b = input.size(0), t = input.size(1);
  const int64_t nh = c.num_heads, nkv = c.num_kv_heads, dh = c.head_dim;
  const double scale = 1.0 / std::sqrt(static_cast<double>(dh));
  // Keys that are padding get -inf before the soft-max: [B, 1, 1, T].
  at::Tensor hidden_keys = valid.logical_not().view({b, 1, 1, t});
  at::Tensor x = input;
  auto norm = [&](const at::Tensor& v, const at::Tensor& g, const at::Tensor& beta) {
    return Norm(v, c.norm, g, beta, c.norm_eps);
  };
  for (const LayerWeights& w : w_.layers) {
    at::Tensor h = c.post_norm ? x : norm(x, w.attn_norm_w, w.attn_norm_b);
    at::Tensor q = Linear(h, w.wq, w.bq).view({b, t, nh, dh}).transpose(1, 2);
    at::Tensor k = Linear(h, w.wk, w.bk).view({b, t, nkv, dh}).transpose(1, 2);
    at::Tensor v = Linear(h, w.wv, w.bv).view({b, t, nkv, dh}).transpose(1, 2);
    if (nh != nkv) {
      k = k.repeat_interleave(nh / nkv, 1);
      v = v.repeat_interleave(nh / nkv, 1);
    }
    // As transformers' eager attention: scores soft-maxed in fp32.
    at::Tensor scores = at::matmul(q, k.transpose(-1, -2)).to(at::kFloat).mul_(scale);
    scores.masked_fill_(hidden_keys, -std::numeric_limits<float>::infinity());
    at::Tensor probs = at::softmax(scores, -1).to(x.scalar_type());
    at::Tensor attn = at::matmul(probs, v).transpose(1, 2).reshape({b, t, nh * dh});
    attn = Linear(attn, w.wo, w.bo);
    if (c.post_norm) {
      x = norm(attn.add_(x), w.attn_norm_w, w.attn_norm_b);
      x = norm(FeedForward(c, w, x).add_(x), w.ffn_norm_w, w.ffn_norm_b);
    } else {
      x = attn.add_(x);
      x = FeedForward(c, w, norm(x, w.ffn_norm_w, w.ffn_norm_b)).add_(x);
    }
  }
  return x;
}

std::vector<at::Tensor> EncoderServer::Run(const std::vector<at::Tensor>& inputs, bool head) const {
  c10::InferenceMode guard;
  const ModelConfig& c = config_;
  if (inputs.empty()) return {};
  const at::Tensor& ref = w_.layers.empty() ? w_.final_norm_w : w_.layers[0].wq;
  int64_t longest = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const at::Tensor& x = inputs[i];
    if (!x.defined() || x.dim() != 2 || x.size(1) != c.hidden_size || x.size(0) < 1 ||
        x.size(0) > c.max_positions) {
      throw InvalidArgument("Encode: input " + std::to_string(i) + ": expected hidden states [T, " +
                            std::to_string(c.hidden_size) +
                            "] with 1 <= T <= " + std::to_string(c.max_positions) + ", got " +
                            (x.defined() ? ShapeString(x.sizes().vec()) : std::string("none")));
    }
    longest = std::max(longest, x.size(0));
  }
  const auto b = static_cast<int64_t>(inputs.size());
  at::Tensor x = at::zeros({b, longest, c.hidden_size}, ref.options());
  at::Tensor valid = at::zeros({b, longest}, ref.options().dtype(at::kBool));
  for (int64_t i = 0; i < b; ++i) {
    const at::Tensor& in = inputs[static_cast<size_t>(i)];
    x[i].narrow(0, 0, in.size(0)).copy_(in);
    valid[i].narrow(0, 0, in.size(0)).fill_(true);
  }
  at::Tensor h = Layers(x, valid);
  // ViT's final LayerNorm belongs to the model's output, not to hidden_states[-1].
  if (head && w_.final_norm_w.defined()) {
    h = Norm(h, c.norm, w_.final_norm_w, w_.final_norm_b, c.norm_eps);
  }
  std::vector<at::Tensor> out;
  out.reserve(inputs.size());
  const EncoderOutput kind = head ? output() : EncoderOutput::kHidden;
  at::Tensor batch_logits;
  if (kind == EncoderOutput::kSequenceLogits) {
    at::Tensor cls = h.select(1, 0);  // [B, d]
    if (w_.pooler_w.defined()) cls = at::tanh(Linear(cls, w_.pooler_w, w_.pooler_b));
    batch_logits = Linear(cls, w_.classifier_w, w_.classifier_b);
  } else if (kind == EncoderOutput::kTokenLogits) {
    at::Tensor t = Activate(Linear(h, w_.mlm_dense_w, w_.mlm_dense_b), c.activation);
    t = Norm(t, NormKind::kLayerNorm, w_.mlm_norm_w, w_.mlm_norm_b, c.norm_eps);
    batch_logits = Linear(t, w_.mlm_decoder_w, w_.mlm_decoder_b);
  }
  for (int64_t i = 0; i < b; ++i) {
    const int64_t n = inputs[static_cast<size_t>(i)].size(0);
    switch (kind) {
      case EncoderOutput::kTokenLogits:
        out.push_back(batch_logits[i].narrow(0, 0, n).contiguous());
        break;
      case EncoderOutput::kSequenceLogits:
        out.push_back(batch_logits[i].contiguous());
        break;
      case EncoderOutput::kHidden:
        out.push_back(h[i].narrow(0, 0, n).contiguous());
        break;
      case EncoderOutput::kPooled:
        if (c.pooling == Pooling::kCls) {
          out.push_back(h[i][0].contiguous());
        } else {
          // Mean over the sequence's own tokens, in fp32 (as sentence-transformers).
          out.push_back(h[i].narrow(0, 0, n).to(at::kFloat).mean(0).to(h.scalar_type()));
        }
        break;
    }
  }
  return out;
}

std::vector<at::Tensor> EncoderServer::Encode(const std::vector<at::Tensor>& inputs) const {
  return Run(inputs, /*head=*/true);
}

std::vector<at::Tensor> EncoderServer::Hidden(const std::vector<at::Tensor>& inputs) const {
  return Run(inputs, /*head=*/false);
}

}  // namespace stip
