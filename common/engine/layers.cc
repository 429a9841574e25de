#include "common/engine/layers.h"

#include <cmath>

#include "common/error.h"

namespace stip {

at::Tensor Linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  return b.defined() ? at::linear(x, w, b) : at::linear(x, w);
}

at::Tensor Norm(const at::Tensor& x, NormKind kind, const at::Tensor& weight,
                const at::Tensor& bias, double eps) {
  if (kind == NormKind::kLayerNorm) {
    if (x.scalar_type() == at::kFloat) return at::layer_norm(x, {x.size(-1)}, weight, bias, eps);
    at::Tensor y = at::layer_norm(x.to(at::kFloat), {x.size(-1)}, weight.to(at::kFloat),
                                  bias.defined() ? bias.to(at::kFloat) : bias, eps);
    return y.to(x.scalar_type());
  }
  // RMSNorm as in LlamaRMSNorm: normalize in fp32, cast back, then scale.
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor var = xf.pow(2).mean(-1, /*keepdim=*/true);
  at::Tensor y = (xf * at::rsqrt(var + eps)).to(x.scalar_type());
  return weight * y;
}

at::Tensor Activate(const at::Tensor& x, Activation activation) {
  switch (activation) {
    case Activation::kGeluTanh:
      return at::gelu(x, "tanh");
    case Activation::kGelu:
      return at::gelu(x);
    case Activation::kSilu:
      return at::silu(x);
    case Activation::kRelu:
      return at::relu(x);
  }
  return x;
}

at::Tensor RopeInverseFrequencies(const ModelConfig& config, at::Device device) {
  const int64_t dim = config.head_dim;
  const RopeConfig& r = config.rope;
  // As transformers: 1 / base^(arange(0, dim, 2) / dim), in fp32.
  at::Tensor exponents = at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(dim);
  at::Tensor inv_freq = 1.0 / at::pow(r.theta, exponents);
  if (r.type == "linear") {
    inv_freq = inv_freq / r.factor;
  } else if (r.type == "llama3") {
    const double old_len = static_cast<double>(r.original_max_position_embeddings);
    const double low_wavelen = old_len / r.low_freq_factor;
    const double high_wavelen = old_len / r.high_freq_factor;
    at::Tensor wavelen = 2 * M_PI / inv_freq;
    at::Tensor scaled = at::where(wavelen > low_wavelen, inv_freq / r.factor, inv_freq);
    at::Tensor smooth =
        (old_len / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
    at::Tensor smoothed = (1 - smooth) * scaled / r.factor + smooth * scaled;
    at::Tensor medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
    inv_freq = at::where(medium, smoothed, scaled);
  }
  return inv_freq.to(device);
}

std::pair<at::Tensor, at::Tensor> RopeCosSin(const at::Tensor& inv_freq,
                                             const at::Tensor& positions, at::ScalarType dtype) {
  at::Tensor freqs = positions.to(at::kFloat).unsqueeze(1) * inv_freq.unsqueeze(0);  // [N, d/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

at::Tensor ApplyRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  at::Tensor x1 = x.narrow(-1, 0, half);
  at::Tensor x2 = x.narrow(-1, half, half);
  at::Tensor rotated = at::cat({-x2, x1}, -1);
  return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1);
}

at::Tensor CausalAttention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                           int64_t past, std::optional<int64_t> window, double scale) {
  const int64_t t = q.size(0), n_heads = q.size(1), d_h = q.size(2);
  const int64_t n_kv = keys.size(0), s = keys.size(1);
  const int64_t group = n_heads / n_kv;
  // [T, n_h, d_h] -> [n_kv, G, T, d_h]; head h = kv * G + g.
  at::Tensor qg = q.reshape({t, n_kv, group, d_h}).permute({1, 2, 0, 3});
  at::Tensor k = keys.unsqueeze(1);    // [n_kv, 1, S, d_h]
  at::Tensor v = values.unsqueeze(1);  // [n_kv, 1, S, d_h]
  at::Tensor scores = at::matmul(qg, k.transpose(-1, -2)).to(at::kFloat) * scale;  // [n_kv,G,T,S]
  // Query i (absolute position past + i) sees keys j <= past + i, and with a
  // window W only j > past + i - W.
  auto opts = at::TensorOptions().dtype(at::kLong).device(q.device());
  at::Tensor qpos = at::arange(past, past + t, opts).unsqueeze(1);  // [T, 1]
  at::Tensor kpos = at::arange(0, s, opts).unsqueeze(0);            // [1, S]
  at::Tensor masked = kpos > qpos;
  if (window) masked = masked.logical_or(kpos <= qpos - *window);
  if (masked.any().item<bool>()) {
    scores = scores.masked_fill(masked, -std::numeric_limits<float>::infinity());
  }
  at::Tensor probs = at::softmax(scores, -1).to(q.scalar_type());
  at::Tensor out = at::matmul(probs, v);  // [n_kv, G, T, d_h]
  return out.permute({2, 0, 1, 3}).reshape({t, n_heads * d_h});
}

namespace {

at::Tensor SwiGlu(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& up,
                  const at::Tensor& down, const at::Tensor& b_gate = at::Tensor(),
                  const at::Tensor& b_up = at::Tensor(), const at::Tensor& b_down = at::Tensor()) {
  return Linear(at::silu(Linear(x, gate, b_gate)) * Linear(x, up, b_up), down, b_down);
}

at::Tensor SparseMoe(const ModelConfig& config, const LayerWeights& w, const at::Tensor& x) {
  // Router: softmax over experts in fp32, top-k, renormalized (Mixtral).
  at::Tensor logits = Linear(x, w.router);
  at::Tensor probs = at::softmax(logits.to(at::kFloat), -1);
  auto [top_w, top_i] = at::topk(probs, config.experts_per_token, -1);
  top_w = (top_w / top_w.sum(-1, true)).to(x.scalar_type());
  at::Tensor out = at::zeros_like(x);
  for (int64_t e = 0; e < config.num_experts; ++e) {
    at::Tensor hit = (top_i == e);  // [N, k]
    at::Tensor rows = hit.any(-1).nonzero().squeeze(-1);
    if (rows.numel() == 0) continue;
    at::Tensor weight = (top_w * hit.to(top_w.scalar_type())).sum(-1).index_select(0, rows);
    const ExpertWeights& ex = w.experts[static_cast<size_t>(e)];
    at::Tensor y = SwiGlu(x.index_select(0, rows), ex.gate, ex.up, ex.down);
    out.index_add_(0, rows, y * weight.unsqueeze(-1));
  }
  return out;
}

}  // namespace

at::Tensor FeedForward(const ModelConfig& config, const LayerWeights& w, const at::Tensor& x) {
  switch (config.ffn) {
    case FfnKind::kMlp:
      return Linear(Activate(Linear(x, w.w_up, w.b_up), config.activation), w.w_down, w.b_down);
    case FfnKind::kGated:
      return SwiGlu(x, w.w_gate, w.w_up, w.w_down, w.b_gate, w.b_up, w.b_down);
    case FfnKind::kMoe:
      return SparseMoe(config, w, x);
  }
  throw Internal("unknown feed-forward kind");
}

}  // namespace stip
