// The key/value cache of one sequence: per layer, keys and values for every
// position seen so far, [n_kv_heads, capacity, head_dim].
//
// A cache either owns its tensors (grown by doubling; tests, one-off runs) or
// lives in a slot of a KvPool: per layer one preallocated tensor
// [slots, n_kv_heads, capacity, head_dim] shared by many sequences, so that a
// batch of decode steps reads all its sequences' keys with one gather and runs
// one attention kernel per layer instead of one per sequence. The pool is the
// KV memory budget: a sequence that finds no free slot, or outgrows its
// slot's capacity, gets a RESOURCE_EXHAUSTED error naming the limit; a slot is
// returned to the pool when its last cache handle goes away.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

namespace stip {

class KvCache;

class KvPool : public std::enable_shared_from_this<KvPool> {
 public:
  // Allocates (uninitialised) `slots` x `capacity` positions of every layer.
  static std::shared_ptr<KvPool> Create(int64_t num_layers, int64_t num_kv_heads, int64_t head_dim,
                                        int64_t slots, int64_t capacity, at::ScalarType dtype,
                                        at::Device device);
  // A cache in a free slot; throws kResourceExhausted when every slot is taken.
  KvCache Acquire();

  // Unique in the process (pools at one address over time differ).
  uint64_t id() const { return id_; }
  int64_t slots() const { return slots_; }
  int64_t capacity() const { return capacity_; }
  int64_t free_slots() const;
  int64_t bytes() const;
  // Layer l's keys / values, [slots, n_kv_heads, capacity, head_dim].
  const at::Tensor& keys(int layer) const { return k_[static_cast<size_t>(layer)]; }
  const at::Tensor& values(int layer) const { return v_[static_cast<size_t>(layer)]; }

 private:
  friend class KvCache;
  KvPool() = default;
  void Release(int64_t slot);

  uint64_t id_ = 0;
  int64_t slots_ = 0, capacity_ = 0;
  std::vector<at::Tensor> k_, v_;
  mutable std::mutex mu_;
  std::vector<int64_t> free_;  // free slot ids (a stack: recently freed first)
};

class KvCache {
 public:
  KvCache() = default;
  // A cache that owns its tensors and grows on demand.
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
  // Forgets every position (a pooled cache keeps its slot).
  void Clear();
  // Bytes currently allocated (a pooled cache: its slot's share of the pool).
  int64_t bytes() const;

  // Pooled caches: the pool and slot (nullptr / -1 for an owning cache), and
  // the most positions the slot holds.
  KvPool* pool() const { return slot_ ? slot_->pool.get() : nullptr; }
  int64_t slot() const { return slot_ ? slot_->id : -1; }
  // Throws kResourceExhausted if `positions` exceed a pooled cache's capacity.
  void CheckCapacity(int64_t positions) const;

 private:
  friend class KvPool;
  struct Slot {  // returns the slot to the pool when the last handle goes
    std::shared_ptr<KvPool> pool;
    int64_t id = -1;
    ~Slot();
  };
  void Reserve(int layer, int64_t positions);

  int64_t num_kv_heads_ = 0, head_dim_ = 0;
  at::ScalarType dtype_ = at::kFloat;
  at::Device device_ = at::kCPU;
  std::vector<at::Tensor> k_, v_;  // [n_kv, capacity, d_h] per layer
  int64_t length_ = 0;
  std::shared_ptr<Slot> slot_;
};

}  // namespace stip
