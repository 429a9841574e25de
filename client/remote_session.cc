#include "client/remote_session.h"

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "common/format/dtype.h"
#include "common/rpc/status.h"
#include "common/rpc/tensor_wire.h"
#include "stip/v1/stip.grpc.pb.h"

namespace stip {

namespace {

using Stream = grpc::ClientReaderWriter<v1::SessionRequest, v1::SessionResponse>;

at::ScalarType WireInputType(const std::string& server_datatype) {
  if (server_datatype == "FP16") return at::kHalf;
  if (server_datatype == "BF16") return at::kBFloat16;
  return at::kFloat;
}

}  // namespace

struct RemoteSession::Impl {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Inference::Stub> stub;
  bool lost = false;  // the last stream ended with an error
  RemoteSessionOptions options;
  std::unique_ptr<grpc::ClientContext> context;
  std::unique_ptr<Stream> stream;
  SessionInfo info;
  bool open = false;
  int64_t context_length = 0;
  int64_t pending_truncate = -1;
  uint64_t next_step = 1;

  // The status the stream ended with, as an error that names the server.
  Error Ended(const std::string& while_doing) {
    grpc::Status status = stream->Finish();
    const std::string reason = ReasonOf(*context);
    stream.reset();
    ResetContext(nullptr);
    open = false;
    lost = true;
    const std::string& addr = options.address;
    const std::string msg = status.error_message();
    const ErrorCode code = FromGrpcCode(status.error_code());
    if (interrupted.exchange(false) && status.error_code() == grpc::StatusCode::CANCELLED) {
      return Error(code, "the session with the stip server at " + addr + " was interrupted " +
                             while_doing + " (its caller went away)");
    }
    const bool has_deadline = options.deadline != std::chrono::system_clock::time_point{};
    if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED && has_deadline &&
        std::chrono::system_clock::now() >= options.deadline) {
      return Error(code,
                   "the deadline of the request passed " + while_doing + " (the stip server at " +
                       addr + " ended the session)",
                   kReasonCallerDeadline);
    }
    switch (status.error_code()) {
      case grpc::StatusCode::OK:
        return Error(ErrorCode::kUnavailable,
                     "the stip server at " + addr + " ended the session " + while_doing);
      case grpc::StatusCode::UNAVAILABLE:
        if (while_doing == "while opening it") {
          return Error(code, "cannot reach the stip server at " + addr + ": " + msg);
        }
        return Error(code, "the stip server at " + addr + " is unavailable (server unavailable: " +
                               msg + "); the session ended " + while_doing);
      case grpc::StatusCode::UNAUTHENTICATED:
      case grpc::StatusCode::PERMISSION_DENIED:
        return Error(code, "the stip server at " + addr + " refused the credentials (" +
                               ErrorCodeName(code) + ": " + msg +
                               "); register again if they were revoked");
      default:
        return Error(code,
                     "the stip server at " + addr + " ended the session " + while_doing + ": " +
                         ErrorCodeName(code) + ": " + msg,
                     reason);
    }
  }

  // Replaces the stream's context; Interrupt may read it from another thread.
  std::mutex context_mu;
  std::atomic<bool> interrupted{false};
  void ResetContext(std::unique_ptr<grpc::ClientContext> c) {
    std::lock_guard<std::mutex> lock(context_mu);
    context = std::move(c);
  }

  // Half-closes and waits (bounded) for the server to end the stream.
  void Shutdown(bool send_close) {
    if (!stream) return;
    if (send_close) {
      v1::SessionRequest req;
      req.mutable_close();
      stream->Write(req);
    }
    stream->WritesDone();
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    grpc::ClientContext* ctx = context.get();
    const int timeout_ms = options.close_timeout_ms;
    std::thread watchdog([&] {
      std::unique_lock<std::mutex> lock(mu);
      if (!cv.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return done; })) {
        ctx->TryCancel();
      }
    });
    v1::SessionResponse ignored;
    while (stream->Read(&ignored)) {
    }
    stream->Finish();
    {
      std::lock_guard<std::mutex> lock(mu);
      done = true;
    }
    cv.notify_one();
    watchdog.join();
    stream.reset();
    ResetContext(nullptr);
    open = false;
  }
};

RemoteSession::RemoteSession(std::shared_ptr<grpc::Channel> channel, RemoteSessionOptions options)
    : impl_(std::make_unique<Impl>()) {
  impl_->channel = channel;
  impl_->stub = v1::Inference::NewStub(channel);
  impl_->options = std::move(options);
}

RemoteSession::~RemoteSession() {
  try {
    Close();
  } catch (...) {
  }
}

SessionInfo RemoteSession::Open() {
  Impl& m = *impl_;
  Close();
  if (m.lost) {
    // After a broken connection: dial again now (not after gRPC's own
    // backoff), and wait for the connection here. A sync call that fails fast
    // polls nothing, so without this wait a connection attempt made between
    // the caller's retries might never complete.
    m.lost = false;
    grpc::experimental::ChannelResetConnectionBackoff(m.channel.get());
    const auto wait = std::chrono::milliseconds(std::max(100, m.options.reconnect_wait_ms));
    if (!m.channel->WaitForConnected(std::chrono::system_clock::now() + wait)) {
      m.lost = true;
      throw Error(ErrorCode::kUnavailable, "cannot reach the stip server at " + m.options.address +
                                               ": not connected within " +
                                               std::to_string(wait.count()) + " ms");
    }
  }
  m.ResetContext(std::make_unique<grpc::ClientContext>());
  m.interrupted = false;
  if (m.options.deadline != std::chrono::system_clock::time_point{}) {
    m.context->set_deadline(m.options.deadline);
  }
  m.stream = m.stub->Session(m.context.get());
  m.context_length = 0;
  m.pending_truncate = -1;
  m.next_step = 1;
  v1::SessionRequest req;
  v1::OpenSession* open = req.mutable_open();
  open->set_instance_id(m.options.instance_id);
  open->set_access_token(m.options.access_token);
  open->set_max_context(m.options.max_context);
  LogitsFormatToProto(m.options.logits_format, open->mutable_logits());
  v1::SessionResponse resp;
  if (!m.stream->Write(req) || !m.stream->Read(&resp)) throw m.Ended("while opening it");
  if (resp.kind_case() == v1::SessionResponse::kError) {
    const v1::Status& st = resp.error().status();
    const ErrorCode code = FromGrpcCode(static_cast<grpc::StatusCode>(st.code()));
    m.Shutdown(false);
    throw Error(code, "the stip server at " + m.options.address + " refused to open a session: " +
                          ErrorCodeName(code) + ": " + st.message());
  }
  if (resp.kind_case() != v1::SessionResponse::kOpened) {
    m.Shutdown(false);
    throw Error(ErrorCode::kInternal,
                "the stip server at " + m.options.address +
                    " answered the session's open with something else than `opened`");
  }
  const v1::SessionOpened& o = resp.opened();
  SessionInfo info;
  info.session_id = o.session_id();
  info.instance_id = o.instance_id().empty() ? m.options.instance_id : o.instance_id();
  info.hidden_size = o.hidden_size();
  info.vocab_size = o.vocab_size();
  info.max_context = o.max_context();
  info.datatype = o.datatype();
  std::string mismatch;
  bool logits_mismatch = false;
  if (info.instance_id != m.options.instance_id) {
    mismatch = "instance " + info.instance_id + " instead of " + m.options.instance_id;
  } else if (m.options.expected_hidden && info.hidden_size != m.options.expected_hidden) {
    mismatch = "hidden size " + std::to_string(info.hidden_size) + ", the bundle's is " +
               std::to_string(m.options.expected_hidden);
  } else if (m.options.expected_vocab && info.vocab_size != m.options.expected_vocab) {
    mismatch = "vocabulary size " + std::to_string(info.vocab_size) + ", the bundle's is " +
               std::to_string(m.options.expected_vocab);
  } else {
    LogitsFormat granted;
    try {
      granted = LogitsFormatFromProto(o.logits(), info.vocab_size);
    } catch (const Error& e) {
      mismatch = std::string("an invalid logits format (") + e.what() + ")";
      logits_mismatch = true;
    }
    if (mismatch.empty() && granted != m.options.logits_format) {
      mismatch = "logits format " + granted.ToString() + " instead of " +
                 m.options.logits_format.ToString() + " (does the server predate logits formats?)";
      logits_mismatch = true;
    }
  }
  if (!mismatch.empty()) {
    m.Shutdown(true);
    throw Error(ErrorCode::kFailedPrecondition,
                "the stip server at " + m.options.address + " opened a session with " + mismatch +
                    (logits_mismatch ? "" : " (is the bundle out of date? register again)"));
  }
  m.info = info;
  m.open = true;
  return info;
}

// An interrupted session is over, even before its stream's end is read.
bool RemoteSession::is_open() const { return impl_->open && !impl_->interrupted; }
const SessionInfo& RemoteSession::info() const { return impl_->info; }
int64_t RemoteSession::context_length() const { return impl_->context_length; }

void RemoteSession::Truncate(int64_t length) {
  Impl& m = *impl_;
  if (!m.open) throw FailedPrecondition("no session is open");
  if (length < 0 || length > m.context_length) {
    throw InvalidArgument("cannot truncate a session of " + std::to_string(m.context_length) +
                          " positions to " + std::to_string(length));
  }
  if (length == m.context_length) return;
  m.pending_truncate = length;
  m.context_length = length;
}

at::Tensor RemoteSession::Step(const at::Tensor& x_prime, bool all_logits) {
  Impl& m = *impl_;
  if (!m.open) throw FailedPrecondition("no session is open");
  if (x_prime.dim() != 2 || x_prime.size(0) < 1 || x_prime.size(1) != m.info.hidden_size) {
    throw InvalidArgument("a step needs x' of shape [T >= 1, " +
                          std::to_string(m.info.hidden_size) + "], got " +
                          ShapeString(x_prime.sizes().vec()));
  }
  const int64_t t = x_prime.size(0);
  const uint64_t step_id = m.next_step++;
  v1::SessionRequest req;
  v1::Step* step = req.mutable_step();
  step->set_step_id(step_id);
  step->set_all_logits(all_logits);
  step->set_truncate_to(m.pending_truncate);
  ToWire(x_prime.to(at::kCPU, WireInputType(m.info.datatype)), step->mutable_hidden());
  v1::SessionResponse resp;
  if (!m.stream->Write(req) || !m.stream->Read(&resp)) {
    throw m.Ended("during step " + std::to_string(step_id));
  }
  if (resp.kind_case() == v1::SessionResponse::kError) {
    // Nothing of the step should be committed; rolling back to the last
    // length we know on the next step makes sure (a no-op otherwise).
    m.pending_truncate = m.context_length;
    const v1::StepError& e = resp.error();
    const ErrorCode code = FromGrpcCode(static_cast<grpc::StatusCode>(e.status().code()));
    if (e.step_id() != step_id) {
      m.Shutdown(true);
      throw Error(ErrorCode::kInternal, "the stip server answered step " + std::to_string(step_id) +
                                            " with an error for step " +
                                            std::to_string(e.step_id()));
    }
    throw Error(code, "the stip server at " + m.options.address + " rejected step " +
                          std::to_string(step_id) + ": " + ErrorCodeName(code) + ": " +
                          e.status().message());
  }
  std::string problem;
  at::Tensor logits;
  const int64_t rows = all_logits ? t : 1;
  if (resp.kind_case() != v1::SessionResponse::kResult) {
    problem = "something else than a result";
  } else if (resp.result().step_id() != step_id) {
    problem = "the result of step " + std::to_string(resp.result().step_id());
  } else {
    try {
      logits = DecodeLogits(resp.result(), m.options.logits_format, rows, m.info.vocab_size);
    } catch (const Error& e) {
      problem = std::string("malformed logits: ") + e.what();
    }
    if (problem.empty() && resp.result().context_length() != m.context_length + t) {
      problem = "a context length of " + std::to_string(resp.result().context_length()) +
                " positions, expected " + std::to_string(m.context_length + t);
    }
  }
  if (!problem.empty()) {
    m.Shutdown(true);
    throw Error(ErrorCode::kInternal, "the stip server at " + m.options.address +
                                          " answered step " + std::to_string(step_id) + " with " +
                                          problem + "; the session was closed");
  }
  m.pending_truncate = -1;
  m.context_length += t;
  return logits;
}

LogitsFormat RemoteSession::logits_format() const { return impl_->options.logits_format; }

void RemoteSession::Interrupt() {
  std::lock_guard<std::mutex> lock(impl_->context_mu);
  if (!impl_->context) return;
  impl_->interrupted = true;
  impl_->context->TryCancel();
}

void RemoteSession::Close() {
  Impl& m = *impl_;
  if (m.stream) m.Shutdown(m.open);
  m.open = false;
  m.context_length = 0;
  m.pending_truncate = -1;
}

}  // namespace stip
