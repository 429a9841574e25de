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

#include <grpcpp/support/status.h>

#include <chrono>
#include <memory>
#include <string>

#include "client/logits_backend.h"
#include "common/error.h"

namespace grpc {
class Channel;
}

namespace stip {

// An error reported by the stip server (or the transport to it): keeps the
// gRPC status code so that the Chat service can pass it on.
class RemoteError : public Error {
 public:
  RemoteError(grpc::StatusCode status, const std::string& message, std::string reason = "",
              bool local_deadline = false);
  grpc::StatusCode status_code() const { return status_; }
  // The machine-readable reason the server sent with the status ("" = none),
  // e.g. kReasonInstanceRetired (common/rpc/status.h).
  const std::string& reason() const { return reason_; }
  // DEADLINE_EXCEEDED because the client's own deadline passed (not the
  // server's idle timeout).
  bool local_deadline() const { return local_deadline_; }

 private:
  grpc::StatusCode status_;
  std::string reason_;
  bool local_deadline_;
};

// "UNAVAILABLE", "NOT_FOUND", ...
const char* StatusCodeName(grpc::StatusCode code);

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
