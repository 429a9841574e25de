// The client side of one Inference.Session stream, message by message, for
// tests that talk to a stip server directly (server_test, hostile_input_test):
// open, steps, close, and whatever ends the stream.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <optional>

#include "common/rpc/tensor_wire.h"
#include "stip/v1/stip.grpc.pb.h"

namespace stip::test {

class SessionClient {
 public:
  // Every call of the stream must be done within `deadline`.
  explicit SessionClient(const std::shared_ptr<grpc::Channel>& channel,
                         std::chrono::seconds deadline = std::chrono::seconds(120))
      : stub_(v1::Inference::NewStub(channel)) {
    ctx_.set_deadline(std::chrono::system_clock::now() + deadline);
    stream_ = stub_->Session(&ctx_);
  }

  // OK with the server's `opened`, or the status the stream ended with.
  grpc::Status Open(const v1::OpenSession& open, v1::SessionOpened* opened = nullptr) {
    v1::SessionRequest r;
    *r.mutable_open() = open;
    std::optional<v1::SessionResponse> resp = Send(r);
    if (!resp) return Finish();
    if (!resp->has_opened()) return grpc::Status(grpc::StatusCode::UNKNOWN, "no `opened`");
    if (opened) *opened = resp->opened();
    return grpc::Status::OK;
  }

  // Sends a request; returns its answer (none if the stream ended).
  std::optional<v1::SessionResponse> Send(const v1::SessionRequest& r) {
    v1::SessionResponse resp;
    if (!stream_->Write(r) || !stream_->Read(&resp)) return std::nullopt;
    return resp;
  }

  std::optional<v1::SessionResponse> Step(uint64_t step_id, const v1::Tensor& hidden,
                                          bool all_logits, int64_t truncate_to) {
    v1::SessionRequest r;
    r.mutable_step()->set_step_id(step_id);
    *r.mutable_step()->mutable_hidden() = hidden;
    r.mutable_step()->set_all_logits(all_logits);
    r.mutable_step()->set_truncate_to(truncate_to);
    return Send(r);
  }
  std::optional<v1::SessionResponse> Step(uint64_t step_id, const at::Tensor& x, bool all_logits,
                                          int64_t truncate_to) {
    v1::Tensor wire;
    ToWire(x, &wire);
    return Step(step_id, wire, all_logits, truncate_to);
  }

  grpc::Status Close() {
    v1::SessionRequest r;
    r.mutable_close();
    stream_->Write(r);
    return Finish();
  }

  // Ends our side, drains the answers, returns the stream's status.
  grpc::Status Finish() {
    stream_->WritesDone();
    v1::SessionResponse ignored;
    while (stream_->Read(&ignored)) {
    }
    return stream_->Finish();
  }

  grpc::ClientContext& context() { return ctx_; }

 private:
  std::unique_ptr<v1::Inference::Stub> stub_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::SessionRequest, v1::SessionResponse>> stream_;
};

}  // namespace stip::test
