// The key/value cache of one sequence: per layer, keys and values for every
// position seen so far, [n_kv_heads, capacity, head_dim], grown by doubling.
#pragma once

#include <ATen/ATen.h>

#include <utility>
#include <vector>

namespace stip {

class KvCache {
 public:
  KvCache() = default;
  KvCache(int64_t num_layers, int64_t num_kv_heads, int64_t head_dim, at::ScalarType dtype,
          at::Device device);

  // Positions committed so far (the position of the next new token).
  int64_t length() const { return length_; }
  // Stores k, v ([T, n_kv, d_h]) for positions [length, length + T) of `layer`
  // and returns all keys and values up to length + T, [n_kv, length + T, d_h].
  // The new positions become visible to later calls only after Commit(T).
  std::pair<at::Tensor, at::Tensor> Append(int layer, const at::Tensor& k, const at::Tensor& v);
  void Commit(int64_t new_positions) { length_ += new_positions; }
  // Forgets positions >= `length` (e.g. to roll back a turn).
  void Truncate(int64_t length);
  void Clear();
  // Bytes currently allocated.
  int64_t bytes() const;

 private:
  void Reserve(int layer, int64_t positions);

  int64_t num_kv_heads_ = 0, head_dim_ = 0;
  at::ScalarType dtype_ = at::kFloat;
  at::Device device_ = at::kCPU;
  std::vector<at::Tensor> k_, v_;
  int64_t length_ = 0;
};

}  // namespace stip
