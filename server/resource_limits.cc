#include "server/resource_limits.h"

#include <algorithm>

namespace stip {

bool SessionSlots::TryAcquire() {
  std::lock_guard<std::mutex> lock(mu_);
  if (limit_ > 0 && active_ >= limit_) return false;
  ++active_;
  return true;
}

void SessionSlots::Release() {
  std::lock_guard<std::mutex> lock(mu_);
  if (active_ > 0) --active_;
}

int SessionSlots::active() const {
  std::lock_guard<std::mutex> lock(mu_);
  return active_;
}

bool UserSessionSlots::TryAcquire(const std::string& user) {
  std::lock_guard<std::mutex> lock(mu_);
  int& n = active_[user];
  if (limit_ > 0 && n >= limit_) return false;
  ++n;
  return true;
}

void UserSessionSlots::Release(const std::string& user) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = active_.find(user);
  if (it == active_.end()) return;
  if (--it->second <= 0) active_.erase(it);
}

int UserSessionSlots::active(const std::string& user) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = active_.find(user);
  return it == active_.end() ? 0 : it->second;
}

bool KvBudget::TryReserve(int64_t bytes) {
  if (bytes <= 0) return true;
  std::lock_guard<std::mutex> lock(mu_);
  if (limit_ > 0 && reserved_ + bytes > limit_) return false;
  reserved_ += bytes;
  return true;
}

void KvBudget::Release(int64_t bytes) {
  if (bytes <= 0) return;
  std::lock_guard<std::mutex> lock(mu_);
  reserved_ = std::max<int64_t>(0, reserved_ - bytes);
}

int64_t KvBudget::reserved() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reserved_;
}

int64_t PredictCacheBytes(int64_t allocated_bytes, int64_t bytes_per_position, int64_t positions) {
  if (bytes_per_position <= 0) return 0;
  const int64_t capacity = allocated_bytes / bytes_per_position;
  if (positions <= capacity) return allocated_bytes;
  return std::max<int64_t>({positions, 2 * capacity, 16}) * bytes_per_position;
}

}  // namespace stip
