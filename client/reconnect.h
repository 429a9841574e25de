// What the client does when its session on the stip server is lost in the
// middle of a conversation (the server was killed or restarted, the network
// broke, the server ended an idle session): it says so plainly, waits with
// exponential backoff and jitter, opens a new session and sends the whole
// conversation so far again (prompt and tokens already generated: the server's
// KV cache went with the old session), then goes on where it stopped. With
// greedy decoding the answer is the same as without the interruption.
//
// The Generator (client/generator.h) applies the policy around every step, so
// `stip-client generate`, `chat` and the Chat daemon (`serve`) all reconnect.
//
// Which failures are a lost session (SessionLoss):
//   kUnavailable  the stream ended UNAVAILABLE (server gone, connection reset,
//                 or the server ended the session while shutting down), or a
//                 new session could not be opened because the server is not
//                 back yet: retried after a backoff delay;
//   kExpired      the server ended the session with DEADLINE_EXCEEDED although
//                 the client's own deadline had not passed (its idle timeout;
//                 the reason is not kReasonCallerDeadline):
//                 reopened at once;
//   kNone         anything else (refused credentials, a step error that left
//                 the session usable, the client's own deadline): not retried.
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <string>

#include "common/error.h"

namespace stip {

enum class SessionLoss { kNone, kUnavailable, kExpired };

// `session_open`: whether the backend still holds its session after `e`.
SessionLoss ClassifySessionLoss(const Error& e, bool session_open);

struct ReconnectPolicy {
  int max_attempts = 0;          // reconnect attempts per lost session (0: never reconnect)
  double initial_delay_s = 0.5;  // the first delay; doubles with every attempt ...
  double max_delay_s = 10;       // ... up to this
  // Says what happens ("server unavailable: ...; reconnecting in 0.6 s (attempt
  // 1 of 8)", "reconnected: ..."), for the user. May be empty.
  std::function<void(const std::string& message)> notify;
};

// The delay before attempt `attempt` (1-based): d = min(max_delay,
// initial_delay * 2^(attempt-1)), drawn uniformly from [d/2, d] ("equal
// jitter", so that clients that lost the same server do not come back in
// step). `uniform01` is a draw from [0, 1).
double BackoffDelaySeconds(const ReconnectPolicy& policy, int attempt, double uniform01);

// Sleeps `seconds`, in slices, returning early (false) once `cancelled`
// returns true.
bool SleepUnlessCancelled(double seconds, const std::function<bool()>& cancelled);

// A draw from [0, 1) for the jitter (not for secrets).
double JitterDraw();

}  // namespace stip
