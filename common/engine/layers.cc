#include "common/engine/layers.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>

#include "common/engine/sdpa.h"
#include "common/error.h"

namespace stip {

bool UseSdpa() {
#if STIP_HAVE_SDPA
  static const bool use = [] {
    const char* v = std::getenv("STIP_ATTENTION");
    return !(v && std::string(v) == "manual");
  }();
  return use;
#else
  return false;
#endif
}

at::Tensor Linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  // One row on the CPU (a decode step): a matrix-vector product streams W
  // once, where GEMM would first pack (copy) it -- about 3x faster.
  if (x.dim() == 2 && x.size(0) == 1 && x.device().is_cpu() && x.scalar_type() == at::kFloat &&
      w.scalar_type() == at::kFloat) {
    at::Tensor row = x.select(0, 0);
    return (b.defined() ? at::addmv(b, w, row) : at::mv(w, row)).unsqueeze(0);
  }
  return b.defined() ? at::linear(x, w, b) : at::linear(x, w);
}

at::Tensor Norm(const at::Tensor& x, NormKind kind, const at::Tensor& weight,
                const at::Tensor& bias, double eps) {
  if (kind == NormKind::kLayerNorm) {
    // As torch.nn.LayerNorm on the GPU (fp16/bf16 in, fp32 inside); the CPU
    // kernels of older LibTorch lack half precision, so there it runs in fp32.
    if (x.scalar_type() == at::kFloat || !x.is_cpu()) {
      return at::layer_norm(x, {x.size(-1)}, weight, bias, eps);
    }
    at::Tensor y = at::layer_norm(x.to(at::kFloat), {x.size(-1)}, weight.to(at::kFloat),
                                  bias.defined() ? bias.to(at::kFloat) : bias, eps);
    return y.to(x.scalar_type());
  }
  // RMSNorm as in LlamaRMSNorm: normalize in fp32, cast back, then scale.
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor inv = xf.pow(2).mean(-1, /*keepdim=*/true);
  inv.add_(eps).rsqrt_();
  at::Tensor y = (xf * inv).to(x.scalar_type());
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

RopeTables MakeRopeTables(const at::Tensor& inv_freq, const at::Tensor& positions,
                          at::ScalarType dtype) {
  at::Tensor freqs = positions.to(at::kFloat).unsqueeze(1) * inv_freq.unsqueeze(0);  // [N, d/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  at::Tensor cos = emb.cos().to(dtype);
  at::Tensor sin = emb.sin().to(dtype);
  sin.narrow(-1, 0, sin.size(-1) / 2).neg_();
  return {cos.unsqueeze(1), sin.unsqueeze(1)};
}

at::Tensor ApplyRopeTables(const at::Tensor& x, const at::Tensor& cos,
                           const at::Tensor& sin_signed) {
  const int64_t half = x.size(-1) / 2;
  // rotate_half(x) * sin == swap_halves(x) * sin_signed, element for element.
  at::Tensor swapped = at::cat({x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  at::Tensor out = x * cos;
  out.addcmul_(swapped, sin_signed);
  return out;
}

namespace {

// Which of keys [start, start + s) query i (absolute position past + i) must
// not see: later keys, and with a window W keys j <= past + i - W. [T, S] bool.
at::Tensor HiddenKeys(int64_t t, int64_t s, int64_t past, int64_t start,
                      std::optional<int64_t> window, at::Device device) {
  auto opts = at::TensorOptions().dtype(at::kLong).device(device);
  at::Tensor qpos = at::arange(past, past + t, opts).unsqueeze(1);    // [T, 1]
  at::Tensor kpos = at::arange(start, start + s, opts).unsqueeze(0);  // [1, S]
  at::Tensor hidden = kpos > qpos;
  if (window) hidden = hidden.logical_or(kpos <= qpos - *window);
  return hidden;
}

// [n_kv, G * T, d_h] (row g * T + i) -> [T, n_heads * d_h] (head kv * G + g).
at::Tensor Ungroup(const at::Tensor& out, int64_t t, int64_t n_kv, int64_t group, int64_t d_h) {
  if (t == 1) return out.reshape({1, n_kv * group * d_h});
  return out.view({n_kv, group, t, d_h}).permute({2, 0, 1, 3}).reshape({t, n_kv * group * d_h});
}

}  // namespace

at::Tensor CausalAttention(const at::Tensor& q, const at::Tensor& keys_all,
                           const at::Tensor& values_all, int64_t past,
                           std::optional<int64_t> window, double scale) {
  const int64_t t = q.size(0), n_heads = q.size(1), d_h = q.size(2);
  const int64_t n_kv = keys_all.size(0);
  const int64_t group = n_heads / n_kv;
  // Keys before `start` are outside the window of every query: they are
  // skipped rather than masked (a masked key's weight is exactly 0).
  const int64_t start = window ? std::max<int64_t>(0, past + 1 - *window) : 0;
  const at::Tensor keys =
      start > 0 ? keys_all.narrow(1, start, keys_all.size(1) - start) : keys_all;
  const at::Tensor values =
      start > 0 ? values_all.narrow(1, start, values_all.size(1) - start) : values_all;
  const int64_t s = keys.size(1);
  // A mask is needed only if some query must not see some remaining key: a
  // later one (T > 1), or one that left the window of a later query. A decode
  // step (T = 1) never needs one.
  const bool window_hides = window && past + t - 1 - *window >= start;
  const bool need_mask = t > 1 || window_hides;
  // [T, n_h, d_h] -> [n_kv, G * T, d_h]: the G query heads that share a
  // key/value head are rows of one matrix product with it (no copy of K or V).
  const at::Tensor qg =
      t == 1
          ? q.reshape({n_kv, group, d_h})
          : q.reshape({t, n_kv, group, d_h}).permute({1, 2, 0, 3}).reshape({n_kv, group * t, d_h});

#if STIP_HAVE_SDPA
  if (UseSdpa()) {
    if (need_mask && past == 0 && !window_hides) {
      // A causal prefill from position 0: the fused kernels' own causal mask
      // (top-left aligned, right since T == S), keys and values per query head.
      at::Tensor k = group == 1 ? keys : keys.repeat_interleave(group, 0);
      at::Tensor v = group == 1 ? values : values.repeat_interleave(group, 0);
      at::Tensor out = at::scaled_dot_product_attention(
          q.transpose(0, 1).unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0),
          TorchOptional<at::Tensor>(), 0.0, /*is_causal=*/true,
          TorchOptional<double>(scale));  // [1, n_h, T, d_h]
      return out.squeeze(0).transpose(0, 1).reshape({t, n_heads * d_h});
    }
    TorchOptional<at::Tensor> allowed;
    if (need_mask) {
      allowed = HiddenKeys(t, s, past, start, window, q.device()).logical_not().repeat({group, 1});
    }
    at::Tensor out = at::scaled_dot_product_attention(
        qg.unsqueeze(0), keys.unsqueeze(0), values.unsqueeze(0), allowed, 0.0,
        /*is_causal=*/false, TorchOptional<double>(scale));  // [1, n_kv, G * T, d_h]
    return Ungroup(out.squeeze(0), t, n_kv, group, d_h);
  }
#endif

  // As transformers' eager attention: scores in the compute dtype, scaled and
  // soft-maxed in fp32, probabilities cast back.
  at::Tensor scores = at::bmm(qg, keys.transpose(1, 2));  // [n_kv, G * T, S]
  scores =
      scores.scalar_type() == at::kFloat ? scores.mul_(scale) : scores.to(at::kFloat).mul_(scale);
  if (need_mask) {
    scores.view({n_kv, group, t, s})
        .masked_fill_(HiddenKeys(t, s, past, start, window, q.device()),
                      -std::numeric_limits<float>::infinity());
  }
  at::Tensor probs = at::softmax(scores, -1).to(q.scalar_type());
  return Ungroup(at::bmm(probs, values), t, n_kv, group, d_h);
}

namespace {

// act(x W_gate^T) * (x W_up^T), then down: SwiGLU with SiLU, GeGLU with GELU.
at::Tensor GatedFfn(const at::Tensor& x, Activation act, const at::Tensor& gate,
                    const at::Tensor& up, const at::Tensor& down,
                    const at::Tensor& b_gate = at::Tensor(), const at::Tensor& b_up = at::Tensor(),
                    const at::Tensor& b_down = at::Tensor()) {
  return Linear(Activate(Linear(x, gate, b_gate), act) * Linear(x, up, b_up), down, b_down);
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
    at::Tensor y = GatedFfn(x.index_select(0, rows), config.activation, ex.gate, ex.up, ex.down);
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
      return GatedFfn(x, config.activation, w.w_gate, w.w_up, w.w_down, w.b_gate, w.b_up, w.b_down);
    case FfnKind::kMoe:
      return SparseMoe(config, w, x);
  }
  throw Internal("unknown feed-forward kind");
}

}  // namespace stip
