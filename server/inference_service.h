// Inference.Session: one bidirectional stream per client session, served with
// gRPC's callback API (one reactor per stream, at most one write outstanding).
//
//   open   -> opened (sizes, limits, compute datatype), or the stream ends with
//             UNAUTHENTICATED / PERMISSION_DENIED (access token; see
//             access_policy.h, checked first) / NOT_FOUND /
//             FAILED_PRECONDITION / RESOURCE_EXHAUSTED (per-user or total
//             session limit, message size); a retired instance (key
//             rotation): FAILED_PRECONDITION with the trailing metadata
//             stip-error-reason: INSTANCE_RETIRED
//   (drain)   once a retired instance's drain deadline passes, its open
//             sessions end with that same status (an idle one within a
//             second, a busy one at its next step)
//   step   -> result (o' in the session's logits format, step_id, context_length) or an
//             in-band error
//             for that step_id; a refused step changes nothing and the
//             session stays usable
//   close  -> the stream ends with OK; ending the stream does the same
//
// A step refused for a limit (context, KV cache memory, message size) is an
// in-band RESOURCE_EXHAUSTED naming the limit and its flag. A client deadline
// or cancellation ends the session as soon as its step (if any) is done, and
// frees its KV cache and session slots.
//
// Messages are handled one at a time per session: the next message is read
// once the previous one's answer is written. Steps go to the model's batch
// scheduler; the reactor never waits for the model. The reactor parses,
// orders, writes and handles cancellation; what a session may do (access,
// slots, limits, KV memory) is decided by a Session (server/session.h).
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common/error.h"
#include "server/access_policy.h"
#include "stip/v1/stip.grpc.pb.h"

namespace stip {

class ModelStore;

struct InferenceOptions {
  int max_sessions = 64;                    // open sessions at once (0: unlimited)
  int max_sessions_per_user = 0;            // ... of them per token user (0: unlimited)
  int64_t max_message_bytes = 0;            // one session message (0: the gRPC limit, 256 MiB)
  int64_t max_kv_bytes = int64_t{4} << 30;  // KV cache of all sessions together (0: unlimited)
  int max_encode_sequences = 256;           // sequences per Encode call (0: unlimited)
  int idle_timeout_s = 600;       // end a session that sends nothing for this long (0: never)
  std::string record_inputs_dir;  // test-only: record each session's first x' here ("" = off)
  std::shared_ptr<const AccessPolicy> policy;  // null: SignedTokenPolicy on the store
  // Called with the code of every refused step and every session that ends
  // with an error (metrics; may be empty). The code comes from the status
  // sent (FromGrpcCode: the one mapping, common/rpc/status.h).
  std::function<void(ErrorCode code)> on_error;
};

// The Session stream is registered raw (bytes, parsed by the reactor): a
// malformed message then gets INVALID_ARGUMENT naming it.
// Encode (encoders) is a callback unary method: server/encode.h.
class InferenceService final
    : public v1::Inference::WithCallbackMethod_Encode<
          v1::Inference::WithRawCallbackMethod_Session<v1::Inference::Service>> {
 public:
  InferenceService(ModelStore& store, InferenceOptions options);
  ~InferenceService() override;

  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Session(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* Encode(grpc::CallbackServerContext* context,
                                   const v1::EncodeRequest* request,
                                   v1::EncodeResponse* response) override;

  int active_sessions() const;                         // holding a session slot
  int active_sessions(const std::string& user) const;  // ... opened with `user`'s tokens
  int64_t kv_reserved_bytes() const;                   // KV cache memory reserved by open sessions
  int open_streams() const;                            // reactors alive (including not yet opened)

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace stip
