// Helpers shared by the torch-based tests: fixture paths and reference tensors
// saved by Hugging Face transformers (tests/data/hf-reference, models/*).
#pragma once

#include <ATen/ATen.h>

#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "common/engine/tensor_util.h"
#include "common/format/safetensors.h"

namespace stip::test {

inline std::string FixtureDir(const std::string& arch) {
  return std::string(STIP_TEST_DATA_DIR) + "/hf-reference/" + arch;
}
inline std::string ModelDir(const std::string& name) {
  return std::string(STIP_MODELS_DIR) + "/" + name;
}

// A tensor of a reference.safetensors file, as saved by transformers.
inline at::Tensor Reference(const std::string& dir, const std::string& name) {
  auto file = SafetensorsFile::Open(dir + "/reference.safetensors");
  const TensorInfo& info = file->Get(name);
  return LoadTensor(TensorRef{&info, file->Data(info), file.get()});
}

inline std::vector<int64_t> ToIds(const at::Tensor& t) {
  at::Tensor c = t.to(at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

inline double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

// Masked attention of one sequence as first written (and as transformers'
// eager path): expand the key/value heads, build the full causal (and
// window) mask, soft-max in fp32. q: [T, n_heads, d_h] at positions
// [past, past + T); keys/values: [n_kv, S, d_h]. Returns [T, n_heads * d_h].
inline at::Tensor ReferenceAttention(const at::Tensor& q, const at::Tensor& keys,
                                     const at::Tensor& values, int64_t past,
                                     std::optional<int64_t> window, double scale) {
  const int64_t t = q.size(0), n_heads = q.size(1), d_h = q.size(2);
  const int64_t n_kv = keys.size(0), s = keys.size(1);
  const int64_t group = n_heads / n_kv;
  at::Tensor qg = q.reshape({t, n_kv, group, d_h}).permute({1, 2, 0, 3});
  at::Tensor scores = at::matmul(qg, keys.unsqueeze(1).transpose(-1, -2)).to(at::kFloat) * scale;
  at::Tensor qpos = at::arange(past, past + t, at::kLong).unsqueeze(1);
  at::Tensor kpos = at::arange(0, s, at::kLong).unsqueeze(0);
  at::Tensor masked = kpos > qpos;
  if (window) masked = masked.logical_or(kpos <= qpos - *window);
  scores = scores.masked_fill(masked, -std::numeric_limits<float>::infinity());
  at::Tensor out = at::matmul(at::softmax(scores, -1).to(q.scalar_type()), values.unsqueeze(1));
  return out.permute({2, 0, 1, 3}).reshape({t, n_heads * d_h});
}

}  // namespace stip::test
