#include "server/session.h"

#include <spdlog/spdlog.h>

#include <cstdio>

#include "common/engine/causal_lm.h"
#include "common/error.h"
#include "common/rpc/tensor_wire.h"
#include "common/rpc/tls.h"  // kMaxMessageBytes
#include "common/util/random.h"
#include "server/access_policy.h"
#include "server/input_recorder.h"
#include "server/resource_limits.h"
#include "server/step_validation.h"

namespace stip {

namespace {

std::string GiB(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(bytes) / (1 << 30));
  return buf;
}

}  // namespace

void Session::Open(const v1::OpenSession& open, const std::string& peer) {
  if (opened_) throw FailedPrecondition("session already open: one session per stream");
  if (open.instance_id().empty()) throw InvalidArgument("open: instance_id is empty");
  const AccessGrant grant = r_.policy.Authorize(open.instance_id(), open.access_token());
  if (open.max_context() < 0) throw InvalidArgument("open: max_context is negative");
  try {
    lease_ = r_.store.OpenSession(open.instance_id());
  } catch (const Error& e) {
    if (e.reason() == kReasonInstanceRetired) {
      throw Error(e.code(), std::string("open: ") + e.what(), e.reason());
    }
    throw;
  }
  if (!r_.user_slots.TryAcquire(grant.user)) {
    lease_.Reset();
    throw ResourceExhausted("per-user session limit of " + std::to_string(r_.user_slots.limit()) +
                            " open sessions reached for user " + QuoteForMessage(grant.user, 64) +
                            " (server's --max-sessions-per-user); close one or try again later");
  }
  user_ = grant.user;
  holds_user_slot_ = true;
  if (!r_.slots.TryAcquire()) {
    Release();
    throw ResourceExhausted("session limit of " + std::to_string(r_.slots.limit()) +
                            " open sessions reached (server's --max-sessions); try again later");
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
    Release();
    throw InvalidArgument(std::string("open: ") + e.what());
  }
  // (A failure from here on keeps the lease and slots until the reactor
  // releases the session as it ends the stream.)
  session_id_ = RandomHex(16);
  if (KvPool* pool = lease_->kv_pool()) {
    try {
      cache_ = std::make_shared<KvCache>(pool->Acquire());
    } catch (const Error& e) {
      throw ResourceExhausted(std::string(e.what()) + " (server's --kv-pool-sequences)");
    }
  } else {
    cache_ = std::make_shared<KvCache>(model.NewCache());
  }
  opened_ = true;
  instance_id_ = open.instance_id();
  spdlog::info(
      "session {}: opened on model {} by user {} (token {}) from {} (max context {}, logits {})",
      session_id_, instance_id_, grant.user, grant.token_id, peer, max_context_,
      logits_format_.ToString());
}

void Session::CheckStep(int64_t now_unix) const {
  if (!opened_) {
    throw FailedPrecondition("step before open: the first message of a session must be `open`");
  }
  if (lease_->DrainOver(now_unix)) throw DrainedError();
}

Error Session::DrainedError() const {
  return FailedPrecondition("model instance " + instance_id_ +
                                " is retired (instance retired: the developer rotated its keys) "
                                "and its drain time is over; fetch the new client bundle from the "
                                "developer",
                            kReasonInstanceRetired);
}

StepWork Session::PrepareStep(const v1::Step& step) {
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
    throw ResourceExhausted("context limit of " + std::to_string(max_context_) + " positions (" +
                            context_limit_source_ + "): the session holds " + std::to_string(base) +
                            " and the step adds " + std::to_string(t));
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
    if (!r_.kv.TryReserve(predicted - kv_reserved_)) {
      throw ResourceExhausted("KV cache memory limit of " + GiB(r_.kv.limit()) +
                              " reached (server's --max-kv-gib; " + GiB(r_.kv.reserved()) +
                              " held by open sessions)");
    }
    kv_reserved_ = predicted;
  }
  if (truncate) cache_->Truncate(base);  // only once the step is accepted
  if (r_.recorder && !recorded_) {
    r_.recorder->Record(session_id_, instance_id_, x);
    recorded_ = true;
  }
  StepWork work;
  work.hidden = std::move(x);
  work.cache = cache_;
  work.all_logits = step.all_logits();
  work.logits_format = logits_format_;
  return work;
}

void Session::Submit(StepWork work) {
  ++steps_;
  lease_->scheduler().Submit(std::move(work));
}

void Session::Release() {
  cache_.reset();
  r_.kv.Release(kv_reserved_);
  kv_reserved_ = 0;
  if (holds_slot_) r_.slots.Release();
  holds_slot_ = false;
  if (holds_user_slot_) r_.user_slots.Release(user_);
  holds_user_slot_ = false;
  lease_.Reset();
}

const std::string& Session::datatype() const { return lease_->datatype(); }

int64_t Session::context_length() const { return cache_ ? cache_->length() : 0; }

}  // namespace stip
