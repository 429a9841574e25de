#include "server/inference_service.h"

#include <openssl/rand.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "common/auth/access_token.h"
#include "common/engine/causal_lm.h"
#include "common/error.h"
#include "common/rpc/logits_transport.h"
#include "common/rpc/status.h"
#include "common/rpc/tensor_wire.h"
#include "common/rpc/tls.h"
#include "common/util/random.h"
#include "server/batch_scheduler.h"
#include "server/encode.h"
#include "server/input_recorder.h"
#include "server/model_store.h"
#include "server/resource_limits.h"
#include "server/step_validation.h"

namespace stip::server {

using Clock = std::chrono::steady_clock;

namespace {

std::string NewSessionId() { return RandomHex(16); }

std::string GiB(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(bytes) / (1 << 30));
  return buf;
}

}  // namespace

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
      : svc_(svc), context_(context), peer_(context->peer()) {
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
      if (parsed && opened_ && request_.has_step()) {
        SendStepError(request_.step().step_id(),
                      grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                   "step " + what + "; send the prompt in shorter steps"));
      } else {
        End(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "session " + what));
      }
      return;
    }
    if (!parsed) {
      End(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                       "malformed session message: " + std::to_string(bytes) +
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
        End(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                         "session message carries none of open, step, close"));
    }
  }

  void OnWriteDone(bool ok) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      writing_ = false;
    }
    response_buffer_.Clear();  // an idle session keeps no copy of its last answer
    if (!ok) {
      End(grpc::Status(grpc::StatusCode::CANCELLED, "the stream broke while answering"));
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
    ReleaseSession();
    FinishRetired(RetiredStatus());
  }

  // After ClaimIfIdle (registry unlocked; the reactor lives until Finish).
  void FinishIdle(int timeout_s) {
    spdlog::info("session {}: idle for {} s, ending it", SessionName(), timeout_s);
    ReleaseSession();
    Finish(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "session idle for more than " +
                                                                 std::to_string(timeout_s) +
                                                                 " s (server's --idle-timeout-s)"));
  }

 private:
  bool IsCancelled() {
    std::lock_guard<std::mutex> lock(mu_);
    return cancelled_;
  }

  std::string SessionName() const {
    return session_id_.empty() ? std::string("(not opened, ") + peer_ + ")" : session_id_;
  }

  // Sends response_ (one write at a time: the next read is posted when it is done).
  void Write() {
    bool own_buffer = false;
    response_buffer_.Clear();
    grpc::Status s = grpc::SerializationTraits<v1::SessionResponse>::Serialize(
        response_, &response_buffer_, &own_buffer);
    if (!s.ok()) {
      End(grpc::Status(grpc::StatusCode::INTERNAL, "cannot serialize the session's answer"));
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

  // Ends the stream once: frees the session's resources, sends the status
  // (with the INSTANCE_RETIRED reason if `retired`).
  void End(const grpc::Status& status, bool retired = false) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_) return;
      finished_ = true;
    }
    if (!status.ok() && status.error_code() != grpc::StatusCode::CANCELLED) {
      spdlog::info("session {}: ended: {} ({})", SessionName(), status.error_message(),
                   static_cast<int>(status.error_code()));
    } else if (!session_id_.empty()) {
      spdlog::info("session {}: closed after {} step(s)", session_id_, steps_);
    }
    ReleaseSession();
    if (retired) {
      FinishRetired(status);
    } else {
      Finish(status);
    }
  }

  grpc::Status RetiredStatus() const {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "model instance " + instance_id_ +
                            " is retired (instance retired: the developer rotated its keys) and "
                            "its drain time is over; fetch the new client bundle from the "
                            "developer");
  }

  // Ends the stream with a retirement status and its machine-readable reason.
  void FinishRetired(const grpc::Status& status) {
    context_->AddTrailingMetadata(kErrorReasonKey, kReasonInstanceRetired);
    Finish(status);
  }

  void ReleaseSession() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      drain_model_ = nullptr;
    }
    cache_.reset();
    svc_->kv.Release(kv_reserved_);
    kv_reserved_ = 0;
    if (holds_slot_) svc_->slots.Release();
    holds_slot_ = false;
    if (holds_user_slot_) svc_->user_slots.Release(user_);
    holds_user_slot_ = false;
    lease_.Reset();
  }

  void HandleOpen(const v1::OpenSession& open) {
    if (opened_) {
      End(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                       "session already open: one session per stream"));
      return;
    }
    if (open.instance_id().empty()) {
      End(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "open: instance_id is empty"));
      return;
    }
    AccessGrant grant;
    grpc::Status auth = svc_->policy->Authorize(open.instance_id(), open.access_token(), &grant);
    if (!auth.ok()) {
      End(auth);
      return;
    }
    if (open.max_context() < 0) {
      End(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "open: max_context is negative"));
      return;
    }
    try {
      lease_ = svc_->store.OpenSession(open.instance_id());
    } catch (const InstanceRetiredError& e) {
      End(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, std::string("open: ") + e.what()),
          /*retired=*/true);
      return;
    } catch (...) {
      End(CurrentExceptionToStatus());
      return;
    }
    if (!svc_->user_slots.TryAcquire(grant.user)) {
      lease_.Reset();
      End(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                       "per-user session limit of " + std::to_string(svc_->user_slots.limit()) +
                           " open sessions reached for user " + QuoteForMessage(grant.user, 64) +
                           " (server's --max-sessions-per-user); close one or try again later"));
      return;
    }
    user_ = grant.user;
    holds_user_slot_ = true;
    if (!svc_->slots.TryAcquire()) {
      ReleaseSession();
      End(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                       "session limit of " + std::to_string(svc_->slots.limit()) +
                           " open sessions reached (server's --max-sessions); try again later"));
      return;
    }
    holds_slot_ = true;
    const ServerModel& model = lease_->model();
    max_context_ = lease_->max_context();
    context_limit_source_ = max_context_ < model.config().max_positions
                                ? "server's --max-context"
                                : "the model's maximum positions";
    if (open.max_context() > 0 && (max_context_ <= 0 || open.max_context() < max_context_)) {
      max_context_ = open.max_context();
      context_limit_source_ = "the session's max_context";
    }
    hidden_size_ = model.config().hidden_size;
    vocab_size_ = model.config().vocab_size;
    bytes_per_position_ = model.CacheBytesPerPosition();
    try {
      logits_format_ = LogitsFormatFromProto(open.logits(), vocab_size_);
    } catch (const Error& e) {
      ReleaseSession();
      End(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, std::string("open: ") + e.what()));
      return;
    }
    try {
      session_id_ = NewSessionId();
      if (KvPool* pool = lease_->kv_pool()) {
        try {
          cache_ = std::make_shared<KvCache>(pool->Acquire());
        } catch (const Error& e) {
          throw ResourceExhausted(std::string(e.what()) + " (server's --kv-pool-sequences)");
        }
      } else {
        cache_ = std::make_shared<KvCache>(model.NewCache());
      }
    } catch (...) {
      End(CurrentExceptionToStatus());
      return;
    }
    opened_ = true;
    instance_id_ = open.instance_id();
    {
      std::lock_guard<std::mutex> lock(mu_);
      drain_model_ = lease_.get();
    }
    spdlog::info(
        "session {}: opened on model {} by user {} (token {}) from {} (max context {}, logits {})",
        session_id_, instance_id_, grant.user, grant.token_id, peer_, max_context_,
        logits_format_.ToString());
    response_.Clear();
    v1::SessionOpened* o = response_.mutable_opened();
    o->set_session_id(session_id_);
    o->set_instance_id(instance_id_);
    o->set_hidden_size(hidden_size_);
    o->set_vocab_size(model.config().vocab_size);
    o->set_max_context(max_context_);
    o->set_datatype(lease_->datatype());
    LogitsFormatToProto(logits_format_, o->mutable_logits());
    Write();
  }

  void HandleStep(const v1::Step& step) {
    if (!opened_) {
      End(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                       "step before open: the first message of a session must be `open`"));
      return;
    }
    if (lease_->DrainOver(auth::NowUnix())) {
      End(RetiredStatus(), /*retired=*/true);
      return;
    }
    const uint64_t step_id = step.step_id();
    StepWork work;
    try {
      at::Tensor x = DecodeHiddenStates(step.hidden(), hidden_size_);
      const int64_t t = x.size(0);
      int64_t base = cache_->length();
      const bool truncate = step.truncate_to() >= 0;
      if (truncate) {
        if (step.truncate_to() > base) {
          throw InvalidArgument("truncate_to " + std::to_string(step.truncate_to()) +
                                " is beyond the session's " + std::to_string(base) + " positions");
        }
        base = step.truncate_to();
      }
      if (base + t > max_context_) {
        throw ResourceExhausted("context limit of " + std::to_string(max_context_) +
                                " positions (" + context_limit_source_ + "): the session holds " +
                                std::to_string(base) + " and the step adds " + std::to_string(t));
      }
      const int64_t rows = step.all_logits() ? t : 1;
      if (LogitsWireBytes(logits_format_, rows, vocab_size_) > kMaxMessageBytes - (1 << 20)) {
        throw ResourceExhausted("logits of " + std::to_string(rows) + " positions x " +
                                std::to_string(vocab_size_) +
                                " would exceed the message size limit; ask for all_logits on "
                                "shorter steps");
      }
      const int64_t predicted = PredictCacheBytes(cache_->bytes(), bytes_per_position_, base + t);
      // A pooled cache's memory was set aside when the model was loaded.
      if (!cache_->pool() && predicted > kv_reserved_) {
        if (!svc_->kv.TryReserve(predicted - kv_reserved_)) {
          throw ResourceExhausted("KV cache memory limit of " + GiB(svc_->kv.limit()) +
                                  " reached (server's --max-kv-gib; " + GiB(svc_->kv.reserved()) +
                                  " held by open sessions)");
        }
        kv_reserved_ = predicted;
      }
      if (truncate) cache_->Truncate(base);  // only once the step is accepted
      if (svc_->recorder && !recorded_) {
        svc_->recorder->Record(session_id_, instance_id_, x);
        recorded_ = true;
      }
      work.hidden = std::move(x);
    } catch (...) {
      SendStepError(step_id, CurrentExceptionToStatus());
      return;
    }
    work.cache = cache_;
    work.all_logits = step.all_logits();
    work.logits_format = logits_format_;
    work.done = [this, step_id](StepOutcome outcome) { StepDone(step_id, std::move(outcome)); };
    ++steps_;
    lease_->scheduler().Submit(std::move(work));
  }

  void SendStepError(uint64_t step_id, const grpc::Status& status) {
    spdlog::debug("session {}: step {} refused: {}", session_id_, step_id, status.error_message());
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
      spdlog::warn("session {}: step {} failed: {}", session_id_, step_id, outcome.message);
      SendStepError(step_id, ToStatus(Error(outcome.code, outcome.message)));
      return;
    }
    try {
      response_.Clear();
      v1::StepResult* r = response_.mutable_result();
      r->set_step_id(step_id);
      ToWire(outcome.logits, r);
      r->set_context_length(cache_->length());
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
  const LoadedModel* drain_model_ = nullptr;  // the open session's model (the lease keeps it)

  // Touched only by the one handler running at a time (reads, writes and the
  // step's completion are strictly sequential).
  bool opened_ = false;
  bool holds_slot_ = false;
  bool holds_user_slot_ = false;
  bool recorded_ = false;
  std::string session_id_, instance_id_, user_;
  std::string context_limit_source_;
  SessionLease lease_;
  std::shared_ptr<KvCache> cache_;
  int64_t max_context_ = 0, hidden_size_ = 0, vocab_size_ = 0, bytes_per_position_ = 0;
  int64_t kv_reserved_ = 0;
  uint64_t steps_ = 0;
  LogitsFormat logits_format_;
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

}  // namespace stip::server
