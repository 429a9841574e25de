// A session on a stip server: the Inference.Session bidirectional stream.
//
//   open{instance_id, access_token, max_context, logits format}
//                                                   -> opened{sizes, datatype, logits format}
//   step{step_id, x' [T, d], all_logits, truncate_to} -> result{o', context_length}
//                                                      | error{step_id, status} (in-band)
//   close (or the end of the stream)
//
// The access token is sent in the open message only; it is never logged or
// put into an error message.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "client/logits_backend.h"
#include "common/error.h"

namespace grpc {
class Channel;
}

namespace stip {

// Errors: stip::Error with the server's status mapped (common/rpc/status.h:
// the code, and the reason the server sent, e.g. kReasonInstanceRetired);
// messages name the server.
//
// The reason of a DEADLINE_EXCEEDED because the caller's own deadline
// (RemoteSessionOptions::deadline) passed, not the server's idle timeout.
// Client-side only: it never goes on the wire.
inline constexpr char kReasonCallerDeadline[] = "CALLER_DEADLINE";

struct RemoteSessionOptions {
  std::string address;  // for messages only (the channel is already made)
  std::string instance_id;
  std::string access_token;
  int64_t max_context = 0;      // 0: the server's limit
  LogitsFormat logits_format;   // how o' comes back (common/rpc/logits_transport.h)
  int64_t expected_hidden = 0;  // the bundle's sizes, checked against `opened`
  int64_t expected_vocab = 0;
  int close_timeout_ms = 5000;  // how long Close waits for the server to end the stream
  // After a lost session, how long Open waits for the connection to the
  // server to come back (then UNAVAILABLE; the Generator's ReconnectPolicy
  // decides whether to try again).
  int reconnect_wait_ms = 2000;
  // Every session stream ends by then (DEADLINE_EXCEEDED); the server ends the
  // session and frees its KV cache. The epoch (default): no deadline.
  std::chrono::system_clock::time_point deadline{};
};

class RemoteSession : public LogitsBackend {
 public:
  RemoteSession(std::shared_ptr<grpc::Channel> channel, RemoteSessionOptions options);
  ~RemoteSession() override;
  RemoteSession(const RemoteSession&) = delete;
  RemoteSession& operator=(const RemoteSession&) = delete;

  SessionInfo Open() override;
  bool is_open() const override;
  const SessionInfo& info() const override;
  at::Tensor Step(const at::Tensor& x_prime, bool all_logits) override;
  void Truncate(int64_t length) override;
  int64_t context_length() const override;
  void Close() override;
  LogitsFormat logits_format() const override;
  void Interrupt() override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace stip
