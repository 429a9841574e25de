// One client session on the server: what it may do and what it holds. The
// Inference service's reactor (inference_service.cc) parses the stream's
// messages, keeps them in order (one answer written at a time), writes the
// answers and handles cancellation; everything it decides, it asks a Session:
//
//   Open         authentication (the AccessPolicy), the model instance (a
//                SessionLease: unknown, retired, not loaded), the per-user
//                and total session slots, the context limit, the logits
//                format, the KV cache (a pool slot or a growing cache);
//   CheckStep    what ends the stream instead of a step: a step before open,
//                a retired instance whose drain deadline has passed
//                (FAILED_PRECONDITION, reason INSTANCE_RETIRED);
//   PrepareStep  checks a step (x' shape and datatype, truncation, the
//                context limit, the logits size, the KV memory budget) and
//                makes the work for the model's batch scheduler;
//   Release      gives back the slots, the KV budget, the cache and the lease.
//
// Every refusal is a stip::Error naming the limit and its flag; a refused
// step changes nothing. Not thread-safe: the reactor calls one method at a
// time.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "common/rpc/logits_transport.h"
#include "server/batch_scheduler.h"
#include "server/model_store.h"
#include "stip/v1/stip.pb.h"

namespace stip {

class AccessPolicy;
class InputRecorder;
class KvBudget;
class KvCache;
class SessionSlots;
class UserSessionSlots;

// What all sessions of an Inference service share (owned by the service).
struct SessionResources {
  ModelStore& store;
  const AccessPolicy& policy;
  SessionSlots& slots;
  UserSessionSlots& user_slots;
  KvBudget& kv;
  InputRecorder* recorder = nullptr;  // test-only (--record-inputs); null: off
};

class Session {
 public:
  explicit Session(SessionResources resources) : r_(resources) {}
  ~Session() { Release(); }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Opens the session described by `open` (see above). Throws stip::Error:
  // kFailedPrecondition (already open, instance retired with its reason,
  // not loaded, no token key), kInvalidArgument, kUnauthenticated,
  // kPermissionDenied, kNotFound, kResourceExhausted. What was taken before
  // a refusal is given back.
  void Open(const v1::OpenSession& open, const std::string& peer);
  bool opened() const { return opened_; }

  // Throws kFailedPrecondition before Open, and with kReasonInstanceRetired
  // once the model is retired and its drain deadline has passed at `now_unix`.
  void CheckStep(int64_t now_unix) const;
  // The error that ends a session whose retired model's drain is over.
  Error DrainedError() const;
  // After CheckStep: the step's work for the scheduler (without its `done`);
  // throws stip::Error for a refused step, which then changes nothing.
  StepWork PrepareStep(const v1::Step& step);
  // Hands `work` to the model's batch scheduler (counted as a step).
  void Submit(StepWork work);

  // Frees everything the session holds (again: no-op).
  void Release();

  const std::string& session_id() const { return session_id_; }
  const std::string& instance_id() const { return instance_id_; }
  int64_t hidden_size() const { return hidden_size_; }
  int64_t vocab_size() const { return vocab_size_; }
  int64_t max_context() const { return max_context_; }
  const LogitsFormat& logits_format() const { return logits_format_; }
  // The model the session runs on (null before Open and after Release).
  const LoadedModel* model() const { return lease_.get(); }
  const std::string& datatype() const;  // the model's compute datatype on the wire
  int64_t context_length() const;       // positions the KV cache holds
  uint64_t steps() const { return steps_; }

 private:
  SessionResources r_;
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

}  // namespace stip
