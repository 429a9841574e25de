#include "common/engine/pooled_attention.h"

#include <ATen/TensorIndexing.h>

#include <algorithm>
#include <limits>

#include "common/engine/sdpa.h"
#include "common/error.h"

namespace stip {

using at::indexing::Slice;
using at::indexing::TensorIndex;

PooledBatch::PooledBatch(KvPool& pool, const std::vector<int64_t>& slots,
                         const std::vector<int64_t>& pasts, int64_t t, at::Device device)
    : pool_(pool),
      b_(static_cast<int64_t>(slots.size())),
      t_(t),
      end_(*std::max_element(pasts.begin(), pasts.end()) + t),
      pasts_host_(pasts),
      same_past_(
          std::all_of(pasts.begin(), pasts.end(), [&](int64_t p) { return p == pasts[0]; })) {
  first_slot_ = FirstSlotIfConsecutive(slots);
  // One host-to-device copy for both index vectors.
  std::vector<int64_t> both(slots);
  both.insert(both.end(), pasts.begin(), pasts.end());
  at::Tensor dev = at::tensor(at::ArrayRef<int64_t>(both), at::kLong).to(device);
  slots_ = dev.narrow(0, 0, b_);
  pasts_ = dev.narrow(0, b_, b_);
}

PooledBatch::PooledBatch(KvPool& pool, const at::Tensor& slots, const at::Tensor& pasts,
                         int64_t key_span, int64_t first_slot)
    : pool_(pool),
      b_(slots.size(0)),
      t_(1),
      end_(key_span),
      same_past_(false),
      first_slot_(first_slot),
      slots_(slots),
      pasts_(pasts) {}

int64_t PooledBatch::FirstSlotIfConsecutive(const std::vector<int64_t>& slots) {
  for (size_t i = 1; i < slots.size(); ++i) {
    if (slots[i] != slots[i - 1] + 1) return -1;
  }
  return slots.empty() ? -1 : slots[0];
}

bool PooledBatch::Qualifies(const std::vector<int64_t>& lengths,
                            const std::vector<int64_t>& pasts) {
  if (lengths.size() < 2) return false;
  const bool decode = std::all_of(lengths.begin(), lengths.end(), [](int64_t t) { return t == 1; });
  if (decode) return true;
  for (size_t i = 1; i < lengths.size(); ++i) {
    if (lengths[i] != lengths[0] || pasts[i] != pasts[0]) return false;
  }
  return true;
}

std::pair<at::Tensor, at::Tensor> PooledBatch::Gather(int layer) const {
  at::Tensor k = pool_.keys(layer).narrow(2, 0, end_);
  at::Tensor v = pool_.values(layer).narrow(2, 0, end_);
  if (first_slot_ >= 0) return {k.narrow(0, first_slot_, b_), v.narrow(0, first_slot_, b_)};
  return {k.index_select(0, slots_), v.index_select(0, slots_)};
}

at::Tensor PooledBatch::Allowed(std::optional<int64_t> window, int64_t group) {
  // Query i of sequence b sits at position past_b + i and reads keys
  // j <= past_b + i, and with a window W only j > past_b + i - W.
  const bool window_bites = window && end_ > *window;
  if (same_past_ && t_ == 1 && !window_bites) return at::Tensor();  // sees all keys
  const auto key = std::make_pair(window_bites ? *window : -1, group);
  auto it = allowed_.find(key);
  if (it != allowed_.end()) return it->second;
  auto opts = at::TensorOptions().dtype(at::kLong).device(pasts_.device());
  at::Tensor kpos = at::arange(end_, opts).view({1, 1, end_});                        // [1, 1, S]
  at::Tensor qpos = pasts_.view({b_, 1, 1}) + at::arange(t_, opts).view({1, t_, 1});  // [B, T, 1]
  at::Tensor allowed = kpos <= qpos;                                                  // [B, T, S]
  if (window_bites) allowed = allowed.logical_and(kpos > qpos - *window);
  // Rows of the grouped queries are g * T + i: the T-row pattern repeats per group.
  if (group > 1 && t_ > 1) allowed = allowed.repeat({1, group, 1});
  allowed = allowed.unsqueeze(1);  // [B, 1, G*T or T, S]
  allowed_.emplace(key, allowed);
  return allowed;
}

at::Tensor PooledBatch::Attend(int layer, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, std::optional<int64_t> window, double scale) {
  const int64_t n_heads = q.size(1), d_h = q.size(2), n_kv = k.size(1);
  const int64_t group = n_heads / n_kv;
  // New keys and values into the slots: [B, n_kv, T, d_h] at positions
  // [past_b, past_b + T) of each sequence's slot.
  at::Tensor pk = pool_.keys(layer);  // handles (index_put_ is non-const)
  at::Tensor pv = pool_.values(layer);
  if (same_past_) {
    const int64_t p = pasts_host_[0];
    at::Tensor kb = k.view({b_, t_, n_kv, d_h}).transpose(1, 2);
    at::Tensor vb = v.view({b_, t_, n_kv, d_h}).transpose(1, 2);
    if (first_slot_ >= 0) {
      pk.narrow(0, first_slot_, b_).narrow(2, p, t_).copy_(kb);
      pv.narrow(0, first_slot_, b_).narrow(2, p, t_).copy_(vb);
    } else {
      pk.index_put_({TensorIndex(slots_), Slice(), Slice(p, p + t_)}, kb);
      pv.index_put_({TensorIndex(slots_), Slice(), Slice(p, p + t_)}, vb);
    }
  } else {  // decode (T == 1) at different positions: [B, n_kv, d_h]
    pk.index_put_({TensorIndex(slots_), Slice(), TensorIndex(pasts_)}, k);
    pv.index_put_({TensorIndex(slots_), Slice(), TensorIndex(pasts_)}, v);
  }
  auto [keys, values] = Gather(layer);  // [B, n_kv, S, d_h]

  // [B * T, n_h, d_h] -> [B, n_kv, G * T, d_h] (row g * T + i), as CausalAttention.
  const at::Tensor qg = t_ == 1 ? q.view({b_, n_kv, group, d_h})
                                : q.view({b_, t_, n_kv, group, d_h})
                                      .permute({0, 2, 3, 1, 4})
                                      .reshape({b_, n_kv, group * t_, d_h});
#if STIP_HAVE_SDPA
  const bool window_bites = window && end_ > *window;
  if (UseSdpa() && same_past_ && pasts_host_[0] == 0 && t_ > 1 && !window_bites) {
    // Prompts from position 0: the fused kernels' own causal mask, keys and
    // values per query head.
    at::Tensor k4 = group == 1 ? keys : keys.repeat_interleave(group, 1);
    at::Tensor v4 = group == 1 ? values : values.repeat_interleave(group, 1);
    at::Tensor o = at::scaled_dot_product_attention(
        q.view({b_, t_, n_heads, d_h}).transpose(1, 2), k4, v4, TorchOptional<at::Tensor>(), 0.0,
        /*is_causal=*/true, TorchOptional<double>(scale));  // [B, n_h, T, d_h]
    return o.transpose(1, 2).reshape({b_ * t_, n_heads * d_h});
  }
#endif
  const at::Tensor allowed = Allowed(window, group);
  at::Tensor out;  // [B, n_kv, G * T, d_h]
#if STIP_HAVE_SDPA
  if (UseSdpa()) {
    out = at::scaled_dot_product_attention(
        qg, keys, values,
        allowed.defined() ? TorchOptional<at::Tensor>(allowed) : TorchOptional<at::Tensor>(), 0.0,
        /*is_causal=*/false, TorchOptional<double>(scale));
  }
#endif
  if (!out.defined()) {
    // As transformers' eager attention: scores scaled and soft-maxed in fp32.
    at::Tensor scores = at::matmul(qg, keys.transpose(-1, -2));  // [B, n_kv, G * T, S]
    scores =
        scores.scalar_type() == at::kFloat ? scores.mul_(scale) : scores.to(at::kFloat).mul_(scale);
    if (allowed.defined()) {
      scores.masked_fill_(allowed.logical_not(), -std::numeric_limits<float>::infinity());
    }
    out = at::matmul(at::softmax(scores, -1).to(q.scalar_type()), values);
  }
  if (t_ == 1) return out.reshape({b_, n_heads * d_h});
  return out.view({b_, n_kv, group, t_, d_h})
      .permute({0, 3, 1, 2, 4})
      .reshape({b_ * t_, n_heads * d_h});
}

}  // namespace stip
