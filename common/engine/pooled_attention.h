// Attention over a batch of sequences whose KV caches live in one KvPool: one
// gather and one attention kernel per layer for the whole batch, instead of a
// loop over sequences (which costs a few kernel launches per sequence and
// layer -- the bottleneck of batched decoding on a GPU).
//
// Two shapes of batch qualify (ServerModel::Forward picks them, and falls back
// to the per-sequence loop otherwise):
//  - decode: every sequence adds one position, each after its own past
//    (ragged lengths; keys past a sequence's end are masked out, and a masked
//    key's weight is exactly 0, so results equal the per-sequence path's);
//  - uniform: every sequence adds T positions after the same past (a batch of
//    prompts of one length, as in a benchmark's prefill).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <optional>
#include <vector>

#include "common/engine/kv_cache.h"

namespace stip {

class PooledBatch {
 public:
  // slots / pasts: per sequence, its pool slot and its committed length;
  // `t`: new positions per sequence. Validates nothing the caller checked.
  PooledBatch(KvPool& pool, const std::vector<int64_t>& slots, const std::vector<int64_t>& pasts,
              int64_t t, at::Device device);

  // A decode step (T = 1) from index tensors already on the device, keys
  // padded to `key_span` positions (>= every past + 1, <= the pool's
  // capacity): no host work, fixed shapes -- what a CUDA graph captures.
  // `first_slot` >= 0 says the slots are first_slot, first_slot + 1, ...: keys
  // are then read in place instead of gathered.
  PooledBatch(KvPool& pool, const at::Tensor& slots, const at::Tensor& pasts, int64_t key_span,
              int64_t first_slot = -1);

  // slots[0] if the slots are slots[0], slots[0] + 1, ... (keys can be read
  // in place), else -1.
  static int64_t FirstSlotIfConsecutive(const std::vector<int64_t>& slots);

  // Whether a batch of these lengths can run pooled (see the file comment).
  static bool Qualifies(const std::vector<int64_t>& lengths, const std::vector<int64_t>& pasts);

  // q: [B * T, n_heads, d_h], k / v: [B * T, n_kv, d_h] (sequence-major rows).
  // Writes k / v into the sequences' slots of layer `layer` and returns the
  // attention output [B * T, n_heads * d_h].
  at::Tensor Attend(int layer, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    std::optional<int64_t> window, double scale);

 private:
  // [B, n_kv, S, d_h] views or copies of the batch's keys and values.
  std::pair<at::Tensor, at::Tensor> Gather(int layer) const;
  // Which keys each query may read, broadcastable to [B, n_kv, G * T, S];
  // undefined if every query reads every key.
  at::Tensor Allowed(std::optional<int64_t> window, int64_t group);

  KvPool& pool_;
  int64_t b_, t_, end_;  // end_: max past + T (keys per sequence after padding)
  std::vector<int64_t> pasts_host_;
  bool same_past_;
  int64_t first_slot_ = -1;   // >= 0: slots are consecutive, in order (no gather copy)
  at::Tensor slots_, pasts_;  // [B] int64 on the device
  std::map<std::pair<int64_t, int64_t>, at::Tensor> allowed_;  // by (window or -1, group)
};

}  // namespace stip
