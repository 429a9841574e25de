// Where the client's permuted hidden states x' go and its permuted logits o'
// come from: a session on a stip server (RemoteSession, the product), or an
// in-process ServerModel (LocalServerBackend, for tests and offline runs).
//
// A backend holds at most one session, whose KV cache keeps every position
// sent so far. Not thread-safe: one caller at a time.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

#include "common/rpc/logits_transport.h"

namespace stip {

struct SessionInfo {
  std::string session_id;
  std::string instance_id;
  int64_t hidden_size = 0;
  int64_t vocab_size = 0;
  int64_t max_context = 0;  // 0: no limit announced
  std::string datatype;     // the server's compute datatype ("FP32", "FP16", "BF16")
};

class LogitsBackend {
 public:
  virtual ~LogitsBackend() = default;

  // Opens a fresh session (closing the current one, if any). Checks the
  // server's hidden and vocabulary sizes against the bundle's. Throws stip::Error.
  virtual SessionInfo Open() = 0;
  virtual bool is_open() const = 0;
  virtual const SessionInfo& info() const = 0;

  // x' [T, d] for positions [context_length(), context_length() + T) ->
  // o' [T, vocab] (all_logits) or [1, vocab] for the last position, FP32 on
  // the CPU. A step error that leaves the session usable (the server's
  // in-band StepError) throws stip::Error with is_open() still true and
  // nothing appended; an error that ends the session throws with is_open()
  // false.
  virtual at::Tensor Step(const at::Tensor& x_prime, bool all_logits) = 0;

  // Forgets positions >= `length` of the session's cache. Remote sessions
  // send it with the next step (Step.truncate_to); context_length() reflects
  // it at once.
  virtual void Truncate(int64_t length) = 0;

  // Positions in the session's cache.
  virtual int64_t context_length() const = 0;

  // Ends the session (no error if none is open).
  virtual void Close() = 0;

  // How the backend's logits come back (Step returns them dense either way;
  // a top-k format fills -inf where nothing was sent, and the Generator
  // refuses sampling settings that would not be exact with it).
  virtual LogitsFormat logits_format() const { return LogitsFormat(); }

  // From another thread, while a call may be in flight: ends the session at
  // once (the step in flight fails, the server stops working for it and frees
  // its cache), e.g. when the caller the step was for has gone. The next turn
  // opens a new session. No-op where a step cannot be interrupted.
  virtual void Interrupt() {}
};

}  // namespace stip
