// The daemon-wide limits that sessions share: how many sessions may be open
// at once (--max-sessions), how many of them one user may hold
// (--max-sessions-per-user, the user named by the verified access token) and
// how much KV cache memory they may hold together (--max-kv-gib). All are
// counters that a session reserves from and gives back to; none ever blocks.
//
// The other limits are checked where the thing is: the context per session
// (--max-context, the model's maximum, the session's own max_context) and the
// size of one session message (--max-message-bytes) in inference_service.cc,
// the idle timeout (--idle-timeout-s) by its reaper. Every refusal is
// RESOURCE_EXHAUSTED (idle: DEADLINE_EXCEEDED) with a message that names the
// limit and the flag that sets it.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>

namespace stip {

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

class UserSessionSlots {
 public:
  explicit UserSessionSlots(int limit_per_user) : limit_(limit_per_user) {}
  // False when `user` holds `limit` sessions already (limit <= 0: unlimited).
  bool TryAcquire(const std::string& user);
  void Release(const std::string& user);
  int active(const std::string& user) const;
  int limit() const { return limit_; }

 private:
  const int limit_;
  mutable std::mutex mu_;
  std::map<std::string, int> active_;  // users with at least one session
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

}  // namespace stip
