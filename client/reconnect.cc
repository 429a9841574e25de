#include "client/reconnect.h"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <random>
#include <thread>

#include "client/remote_session.h"

namespace stip {

SessionLoss ClassifySessionLoss(const Error& e, bool session_open) {
  if (session_open) return SessionLoss::kNone;  // an in-band step error: the session goes on
  switch (e.code()) {
    case ErrorCode::kUnavailable:
      return SessionLoss::kUnavailable;
    case ErrorCode::kDeadlineExceeded:
      return e.reason() == kReasonCallerDeadline ? SessionLoss::kNone : SessionLoss::kExpired;
    default:
      return SessionLoss::kNone;
  }
}

double BackoffDelaySeconds(const ReconnectPolicy& policy, int attempt, double uniform01) {
  const double initial = std::max(0.0, policy.initial_delay_s);
  const double cap = std::max(initial, policy.max_delay_s);
  const double d = std::min(cap, initial * std::pow(2.0, std::max(0, attempt - 1)));
  return d / 2 + d / 2 * std::clamp(uniform01, 0.0, 1.0);
}

bool SleepUnlessCancelled(double seconds, const std::function<bool()>& cancelled) {
  const auto end = std::chrono::steady_clock::now() +
                   std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                       std::chrono::duration<double>(std::max(0.0, seconds)));
  while (true) {
    if (cancelled && cancelled()) return false;
    const auto now = std::chrono::steady_clock::now();
    if (now >= end) return true;
    std::this_thread::sleep_for(
        std::min<std::chrono::steady_clock::duration>(end - now, std::chrono::milliseconds(50)));
  }
}

double JitterDraw() {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mu);
  return std::uniform_real_distribution<double>(0.0, 1.0)(rng);
}

}  // namespace stip
