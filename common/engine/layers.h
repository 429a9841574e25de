// The building blocks of the decoder, as free functions over ATen tensors.
// Numerics follow Hugging Face transformers (norms and softmax in fp32).
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "common/arch/model_config.h"
#include "common/engine/model_weights.h"

namespace stip {

// y = x W^T + b (b may be undefined).
at::Tensor Linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = at::Tensor());

at::Tensor Norm(const at::Tensor& x, NormKind kind, const at::Tensor& weight,
                const at::Tensor& bias, double eps);

at::Tensor Activate(const at::Tensor& x, Activation activation);

// Rotary embeddings: inverse frequencies [head_dim / 2] (fp32) for the config's
// rope type, and cos/sin tables [N, head_dim] for the given positions.
at::Tensor RopeInverseFrequencies(const ModelConfig& config, at::Device device);
std::pair<at::Tensor, at::Tensor> RopeCosSin(const at::Tensor& inv_freq,
                                             const at::Tensor& positions, at::ScalarType dtype);
// x: [N, heads, head_dim]; cos/sin: [N, head_dim].
at::Tensor ApplyRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

// The same rotation with tables prepared once: cos and a "signed" sine whose
// first half is negated, both [N, 1, head_dim], so that rotate_half(x) * sin
// becomes swap_halves(x) * sin_signed (negation is exact: equal results, two
// fewer kernels per call).
struct RopeTables {
  at::Tensor cos, sin_signed;  // [N, 1, head_dim] in the compute dtype
};
RopeTables MakeRopeTables(const at::Tensor& inv_freq, const at::Tensor& positions,
                          at::ScalarType dtype);
// x: [N, heads, head_dim] (any strides); returns a new contiguous tensor.
at::Tensor ApplyRopeTables(const at::Tensor& x, const at::Tensor& cos,
                           const at::Tensor& sin_signed);

// Causal (optionally sliding-window) attention of one sequence.
// q: [T, n_heads, d_h] for positions [past, past + T); keys/values: [n_kv, past + T, d_h].
// Query head h reads key/value head h / (n_heads / n_kv). Returns [T, n_heads * d_h].
// Keys outside every query's window are skipped, and no mask is built when
// every query sees every remaining key (a decode step): no host sync, no
// index tensors. With LibTorch >= 2.1 it runs at::scaled_dot_product_attention.
at::Tensor CausalAttention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                           int64_t past, std::optional<int64_t> window, double scale);

// Feed-forward of one layer on [N, d]: MLP, SwiGLU, or sparse MoE.
at::Tensor FeedForward(const ModelConfig& config, const LayerWeights& w, const at::Tensor& x);

}  // namespace stip
