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

// Causal (optionally sliding-window) attention of one sequence.
// q: [T, n_heads, d_h] for positions [past, past + T); keys/values: [n_kv, past + T, d_h].
// Query head h reads key/value head h / (n_heads / n_kv). Returns [T, n_heads * d_h].
at::Tensor CausalAttention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                           int64_t past, std::optional<int64_t> window, double scale);

// Feed-forward of one layer on [N, d]: MLP, SwiGLU, or sparse MoE.
at::Tensor FeedForward(const ModelConfig& config, const LayerWeights& w, const at::Tensor& x);

}  // namespace stip
