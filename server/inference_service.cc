#include "server/inference_service.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "common/auth/access_token.h"
#include "common/error.h"
#include "common/rpc/logits_transport.h"
#include "common/rpc/status.h"
#include "common/rpc/tensor_wire.h"
#include "common/rpc/tls.h"  // kMaxMessageBytes
#include "server/batch_scheduler.h"
#include "server/encode.h"
#include "server/input_recorder.h"
#include "server/model_store.h"
#include "server/resource_limits.h"
#include "server/session.h"

namespace stip {

using Clock = std::chrono::steady_clock;

class SessionReactor;

struct InferenceService::Impl {
  Impl(ModelStore& s, InferenceOptions o)
      : store(s),
        options(std::move(o)),
        policy(options.policy ? options.policy : std::make_shared<SignedTokenPolicy>(s)),
        slots(options.max_sessions),
        user_slots(options.max_sessions_per_user),
        kv(options.max_kv_bytes),
        max_message_bytes(options.max_message_bytes > 0 ? options.max_message_bytes
                                                        : kMaxMessageBytes) {
    if (!options.record_inputs_dir.empty()) {
      recorder = std::make_unique<InputRecorder>(options.record_inputs_dir);
      spdlog::warn(
          "--record-inputs: recording the first hidden-state tensor of every session to {} "
          "(test-only; never use in production)",
          options.record_inputs_dir);
    }
    encode_env.store = &store;
    encode_env.policy = policy.get();
    encode_env.slots = &slots;
    encode_env.user_slots = &user_slots;
    encode_env.max_message_bytes = max_message_bytes;
    encode_env.max_sequences = options.max_encode_sequences;
    reaper = std::thread([this] { Reap(); });
  }
  ~Impl() {
    {
      std::lock_guard<std::mutex> lock(mu);
      stop = true;
    }
    cv.notify_all();
    if (reaper.joinable()) reaper.join();
  }

  void Register(SessionReactor* r) {
    std::lock_guard<std::mutex> lock(mu);
    reactors.insert(r);
  }
  void Unregister(SessionReactor* r) {
    std::lock_guard<std::mutex> lock(mu);
    reactors.erase(r);
  }
  void Reap();
  SessionResources Resources() {
    return SessionResources{store, *policy, slots, user_slots, kv, recorder.get()};
  }

  ModelStore& store;
  const InferenceOptions options;
  std::shared_ptr<const AccessPolicy> policy;
  SessionSlots slots;
  UserSessionSlots user_slots;
  KvBudget kv;
  const int64_t max_message_bytes;
  std::unique_ptr<InputRecorder> recorder;
  EncodeEnv encode_env;

  mutable std::mutex mu;  // guards reactors, stop
  std::condition_variable cv;
  std::set<SessionReactor*> reactors;
  bool stop = false;
  std::thread reaper;
};

class SessionReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  SessionReactor(InferenceService::Impl* svc, grpc::CallbackServerContext* context)
      : svc_(svc), context_(context), peer_(context->peer()), session_(svc->Resources()) {
    svc_->Register(this);
    PostRead();
  }

  void OnReadDone(bool ok) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      awaiting_read_ = false;
      if (finished_) return;  // ended while the read was pending (idle timeout)
    }
    if (!ok) {  // the client ended its side of the stream (or went away)
      End(IsCancelled() ? grpc::Status::CANCELLED : grpc::Status::OK);
      return;
    }
    // The stream carries raw bytes, parsed here: a message that is not a
    // SessionRequest gets a named error (gRPC's typed reactors would report
    // it like the client's half-close).
    const size_t bytes = request_buffer_.Length();
    request_.Clear();
    const bool parsed =
        grpc::SerializationTraits<v1::SessionRequest>::Deserialize(&request_buffer_, &request_)
            .ok();
    if (static_cast<int64_t>(bytes) > svc_->max_message_bytes) {
      const std::string what =
          "message of " + std::to_string(bytes) + " bytes exceeds the message size limit of " +
          std::to_string(svc_->max_message_bytes) + " bytes (server's --max-message-bytes)";
      if (parsed && session_.opened() && request_.has_step()) {
        SendStepError(request_.step().step_id(),
                      ResourceExhausted("step " + what + "; send the prompt in shorter steps"));
      } else {
        End(ResourceExhausted("session " + what));
      }
      return;
    }
    if (!parsed) {
      End(InvalidArgument("malformed session message: " + std::to_string(bytes) +
                          " bytes that do not parse as a stip.v1.SessionRequest"));
      return;
    }
    switch (request_.kind_case()) {
      case v1::SessionRequest::kOpen:
        HandleOpen(request_.open());
        break;
      case v1::SessionRequest::kStep:
        HandleStep(request_.step());
        break;
      case v1::SessionRequest::kClose:
        End(grpc::Status::OK);
        break;
      default:
        End(InvalidArgument("session message carries none of open, step, close"));
    }
  }

  void OnWriteDone(bool ok) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      writing_ = false;
    }
    response_buffer_.Clear();  // an idle session keeps no copy of its last answer
    if (!ok) {
      End(Cancelled("the stream broke while answering"));
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_) return;
    }
    PostRead();
  }

  void OnCancel() override {
    // Pending reads and writes now complete with ok=false and end the session;
    // a step in the scheduler ends it when it returns.
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
  }

  void OnDone() override {
    svc_->Unregister(this);
    delete this;
  }

  // Called by the reaper with the registry locked: claims the session's end if
  // it has waited for the client longer than `limit`.
  bool ClaimIfIdle(Clock::time_point now, std::chrono::seconds limit) {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_ || !awaiting_read_ || now - read_posted_at_ < limit) return false;
    finished_ = true;
    return true;
  }
  // Called by the reaper with the registry locked: claims the session's end if
  // it waits for the client on a retired model whose drain deadline is over.
  // (A session in the middle of a step is ended by its next step.)
  bool ClaimIfDrained(int64_t now_unix) {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_ || !awaiting_read_ || !drain_model_ || !drain_model_->DrainOver(now_unix)) {
      return false;
    }
    finished_ = true;
    return true;
  }
  // After ClaimIfDrained (registry unlocked).
  void FinishDrained() {
    spdlog::info("session {}: its model instance is retired and the drain is over, ending it",
                 SessionName());
    const Error drained = session_.DrainedError();
    ReleaseSession();
    Finish(ToStatus(drained, context_));
  }

  // After ClaimIfIdle (registry unlocked; the reactor lives until Finish).
  void FinishIdle(int timeout_s) {
    spdlog::info("session {}: idle for {} s, ending it", SessionName(), timeout_s);
    ReleaseSession();
    Finish(ToStatus(DeadlineExceeded("session idle for more than " + std::to_string(timeout_s) +
                                     " s (server's --idle-timeout-s)")));
  }

 private:
  bool IsCancelled() {
    std::lock_guard<std::mutex> lock(mu_);
    return cancelled_;
  }

  std::string SessionName() const {
    return session_.session_id().empty() ? std::string("(not opened, ") + peer_ + ")"
                                         : session_.session_id();
  }

  // Sends response_ (one write at a time: the next read is posted when it is done).
  void Write() {
    bool own_buffer = false;
    response_buffer_.Clear();
    grpc::Status s = grpc::SerializationTraits<v1::SessionResponse>::Serialize(
        response_, &response_buffer_, &own_buffer);
    if (!s.ok()) {
      End(Internal("cannot serialize the session's answer"));
      return;
    }
    response_.Clear();  // one copy of the answer while it is written: the serialized one
    {
      // Orders everything this thread did for the session (a scheduler
      // thread's step included) before OnWriteDone, the next read and the
      // reaper, which all take mu_: gRPC's own handoff of the write is
      // invisible to ThreadSanitizer.
      std::lock_guard<std::mutex> lock(mu_);
      writing_ = true;
    }
    StartWrite(&response_buffer_);
  }

  void PostRead() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      awaiting_read_ = true;
      read_posted_at_ = Clock::now();
    }
    StartRead(&request_buffer_);
  }

  // Ends the stream with `error` (its reason goes into the trailing metadata).
  void End(const Error& error) { End(ToStatus(error, context_)); }

  // Ends the stream once: frees the session's resources, sends the status.
  void End(const grpc::Status& status) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_) return;
      finished_ = true;
    }
    if (!status.ok() && status.error_code() != grpc::StatusCode::CANCELLED) {
      if (svc_->options.on_error) svc_->options.on_error(FromGrpcCode(status.error_code()));
      spdlog::info("session {}: ended: {} ({})", SessionName(), status.error_message(),
                   static_cast<int>(status.error_code()));
    } else if (!session_.session_id().empty()) {
      spdlog::info("session {}: closed after {} step(s)", session_.session_id(), session_.steps());
    }
    ReleaseSession();
    Finish(status);
  }

  // Ends the stream with what is being handled (call inside a catch block).
  void EndWithCurrentException() { End(CurrentExceptionToStatus(context_)); }

  void ReleaseSession() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      drain_model_ = nullptr;
    }
    session_.Release();
  }

  void HandleOpen(const v1::OpenSession& open) {
    try {
      session_.Open(open, peer_);
    } catch (...) {
      EndWithCurrentException();
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      drain_model_ = session_.model();
    }
    response_.Clear();
    v1::SessionOpened* o = response_.mutable_opened();
    o->set_session_id(session_.session_id());
    o->set_instance_id(session_.instance_id());
    o->set_hidden_size(session_.hidden_size());
    o->set_vocab_size(session_.vocab_size());
    o->set_max_context(session_.max_context());
    o->set_datatype(session_.datatype());
    LogitsFormatToProto(session_.logits_format(), o->mutable_logits());
    Write();
  }

  void HandleStep(const v1::Step& step) {
    try {
      session_.CheckStep(auth::NowUnix());  // what ends the stream
    } catch (...) {
      EndWithCurrentException();
      return;
    }
    const uint64_t step_id = step.step_id();
    StepWork work;
    try {
      work = session_.PrepareStep(step);
    } catch (...) {
      SendStepError(step_id, CurrentExceptionToStatus());
      return;
    }
    work.done = [this, step_id](StepOutcome outcome) { StepDone(step_id, std::move(outcome)); };
    session_.Submit(std::move(work));
  }

  void SendStepError(uint64_t step_id, const Error& error) {
    SendStepError(step_id, ToStatus(error));
  }

  // An in-band error: the step is refused, the session goes on.
  void SendStepError(uint64_t step_id, const grpc::Status& status) {
    spdlog::debug("session {}: step {} refused: {}", session_.session_id(), step_id,
                  status.error_message());
    if (svc_->options.on_error) svc_->options.on_error(FromGrpcCode(status.error_code()));
    response_.Clear();
    v1::StepError* e = response_.mutable_error();
    e->set_step_id(step_id);
    e->mutable_status()->set_code(static_cast<int32_t>(status.error_code()));
    e->mutable_status()->set_message(status.error_message());
    Write();
  }

  // On the scheduler thread.
  void StepDone(uint64_t step_id, StepOutcome outcome) {
    if (IsCancelled()) {
      End(grpc::Status::CANCELLED);
      return;
    }
    if (!outcome.ok) {
      spdlog::warn("session {}: step {} failed: {}", session_.session_id(), step_id,
                   outcome.message);
      SendStepError(step_id, Error(outcome.code, outcome.message));
      return;
    }
    try {
      response_.Clear();
      v1::StepResult* r = response_.mutable_result();
      r->set_step_id(step_id);
      ToWire(outcome.logits, r);
      r->set_context_length(session_.context_length());
    } catch (...) {
      SendStepError(step_id, CurrentExceptionToStatus());
      return;
    }
    Write();
  }

  InferenceService::Impl* const svc_;
  grpc::CallbackServerContext* const context_;
  const std::string peer_;
  grpc::ByteBuffer request_buffer_, response_buffer_;  // what travels
  v1::SessionRequest request_;                         // parsed from request_buffer_
  v1::SessionResponse response_;                       // serialized into response_buffer_

  std::mutex mu_;  // guards the flags below that other threads read
  bool finished_ = false;
  bool cancelled_ = false;
  bool awaiting_read_ = false;
  bool writing_ = false;  // an answer is with gRPC
  Clock::time_point read_posted_at_;
  const LoadedModel* drain_model_ = nullptr;  // the open session's model (the session keeps it)

  // Touched only by the one handler running at a time (reads, writes and the
  // step's completion are strictly sequential).
  Session session_;
};

void InferenceService::Impl::Reap() {
  // Also ends the sessions of retired models whose drain is over, so it runs
  // without an idle timeout too.
  const auto limit = std::chrono::seconds(options.idle_timeout_s);
  const auto period = std::chrono::milliseconds(
      options.idle_timeout_s > 0
          ? std::max<int64_t>(50, std::min<int64_t>(1000, options.idle_timeout_s * 250))
          : 1000);
  std::unique_lock<std::mutex> lock(mu);
  while (!stop) {
    cv.wait_for(lock, period, [&] { return stop; });
    if (stop) break;
    std::vector<SessionReactor*> idle, drained;
    const auto now = Clock::now();
    const int64_t now_unix = auth::NowUnix();
    for (SessionReactor* r : reactors) {
      if (r->ClaimIfDrained(now_unix)) {
        drained.push_back(r);
      } else if (options.idle_timeout_s > 0 && r->ClaimIfIdle(now, limit)) {
        idle.push_back(r);
      }
    }
    lock.unlock();
    for (SessionReactor* r : idle) r->FinishIdle(options.idle_timeout_s);
    for (SessionReactor* r : drained) r->FinishDrained();
    lock.lock();
  }
}

InferenceService::InferenceService(ModelStore& store, InferenceOptions options)
    : impl_(std::make_unique<Impl>(store, std::move(options))) {}

InferenceService::~InferenceService() = default;

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* InferenceService::Session(
    grpc::CallbackServerContext* context) {
  return new SessionReactor(impl_.get(), context);
}

grpc::ServerUnaryReactor* InferenceService::Encode(grpc::CallbackServerContext* context,
                                                   const v1::EncodeRequest* request,
                                                   v1::EncodeResponse* response) {
  return StartEncode(impl_->encode_env, context, request, response);
}

int InferenceService::active_sessions() const { return impl_->slots.active(); }
int InferenceService::active_sessions(const std::string& user) const {
  return impl_->user_slots.active(user);
}
int64_t InferenceService::kv_reserved_bytes() const { return impl_->kv.reserved(); }
int InferenceService::open_streams() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return static_cast<int>(impl_->reactors.size());
}

}  // namespace stip
