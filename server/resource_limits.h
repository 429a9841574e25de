// The daemon-wide limits that sessions share: how many sessions may be open
// at once (--max-sessions) and how much KV cache memory they may hold
// together (--max-kv-gib). Both are counters that a session reserves from
// and gives back to; neither ever blocks.
#pragma once

#include <cstdint>
#include <mutex>

namespace stip::server {

class SessionSlots {
 public:
  explicit SessionSlots(int limit) : limit_(limit) {}
  // False when `limit` sessions are open already (limit <= 0: unlimited).
  bool TryAcquire();
  void Release();
  int active() const;
  int limit() const { return limit_; }

 private:
  const int limit_;
  mutable std::mutex mu_;
  int active_ = 0;
};

class KvBudget {
 public:
  explicit KvBudget(int64_t limit_bytes) : limit_(limit_bytes) {}
  // False if reserving `bytes` more would exceed the limit (limit <= 0: unlimited).
  bool TryReserve(int64_t bytes);
  void Release(int64_t bytes);
  int64_t reserved() const;
  int64_t limit() const { return limit_; }

 private:
  const int64_t limit_;
  mutable std::mutex mu_;
  int64_t reserved_ = 0;
};

// Bytes a KV cache that now holds `allocated_bytes` will hold once it has
// `positions` positions: the engine's cache grows to max(positions, 2 x
// capacity, 16) positions when it runs out of room (common/engine/kv_cache.cc).
int64_t PredictCacheBytes(int64_t allocated_bytes, int64_t bytes_per_position, int64_t positions);

}  // namespace stip::server
