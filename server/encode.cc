#include "server/encode.h"

#include <spdlog/spdlog.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/arch/model_config.h"
#include "common/engine/encoder.h"
#include "common/error.h"
#include "common/rpc/status.h"
#include "common/rpc/tensor_wire.h"
#include "server/batch_scheduler.h"
#include "server/model_store.h"
#include "server/step_validation.h"

namespace stip {

namespace {

// What a running call holds until the scheduler answers: the model and its
// session slots.
struct EncodeCall {
  const EncodeEnv* env = nullptr;
  SessionLease lease;
  std::string user, instance_id;
  bool holds_slot = false, holds_user_slot = false;

  ~EncodeCall() {
    if (holds_slot) env->slots->Release();
    if (holds_user_slot) env->user_slots->Release(user);
  }
};

grpc::Status Refuse(grpc::StatusCode code, const std::string& message) {
  return grpc::Status(code, "encode: " + message);
}

}  // namespace

grpc::ServerUnaryReactor* StartEncode(const EncodeEnv& env, grpc::CallbackServerContext* context,
                                      const v1::EncodeRequest* request,
                                      v1::EncodeResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto call = std::make_shared<EncodeCall>();
  call->env = &env;
  grpc::Status status = [&]() -> grpc::Status {
    if (request->instance_id().empty()) {
      return Refuse(grpc::StatusCode::INVALID_ARGUMENT, "instance_id is empty");
    }
    AccessGrant grant;
    try {
      grant = env.policy->Authorize(request->instance_id(), request->access_token());
      call->lease = env.store->OpenEncode(request->instance_id());
    } catch (...) {
      return CurrentExceptionToStatus(context);  // with its reason (INSTANCE_RETIRED)
    }
    call->instance_id = request->instance_id();
    const auto bytes = static_cast<int64_t>(request->ByteSizeLong());
    if (bytes > env.max_message_bytes) {
      return Refuse(grpc::StatusCode::RESOURCE_EXHAUSTED,
                    "request of " + std::to_string(bytes) +
                        " bytes exceeds the message size limit of " +
                        std::to_string(env.max_message_bytes) +
                        " bytes (server's --max-message-bytes); send fewer sequences per call");
    }
    if (!env.user_slots->TryAcquire(grant.user)) {
      return Refuse(grpc::StatusCode::RESOURCE_EXHAUSTED,
                    "per-user session limit of " + std::to_string(env.user_slots->limit()) +
                        " open sessions reached for user " + QuoteForMessage(grant.user, 64) +
                        " (server's --max-sessions-per-user; an Encode call holds one while it "
                        "runs); try again later");
    }
    call->user = grant.user;
    call->holds_user_slot = true;
    if (!env.slots->TryAcquire()) {
      return Refuse(grpc::StatusCode::RESOURCE_EXHAUSTED,
                    "session limit of " + std::to_string(env.slots->limit()) +
                        " open sessions reached (server's --max-sessions; an Encode call holds "
                        "one while it runs); try again later");
    }
    call->holds_slot = true;
    const int n = request->sequences_size();
    if (n == 0) return Refuse(grpc::StatusCode::INVALID_ARGUMENT, "no sequences");
    if (env.max_sequences > 0 && n > env.max_sequences) {
      return Refuse(grpc::StatusCode::RESOURCE_EXHAUSTED,
                    std::to_string(n) + " sequences exceed the limit of " +
                        std::to_string(env.max_sequences) +
                        " per call (server's --max-encode-sequences); split the batch");
    }
    const ModelConfig& config = call->lease->config();
    EncodeWork work;
    work.inputs.reserve(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      const std::string which = "sequence " + std::to_string(i) + " of " + std::to_string(n);
      try {
        at::Tensor x = DecodeHiddenStates(request->sequences(i), config.hidden_size);
        if (config.max_positions > 0 && x.size(0) > config.max_positions) {
          return Refuse(grpc::StatusCode::INVALID_ARGUMENT,
                        which + " has " + std::to_string(x.size(0)) +
                            " positions; the model takes at most " +
                            std::to_string(config.max_positions) + " (max_position_embeddings)");
        }
        work.inputs.push_back(std::move(x));
      } catch (const Error& e) {
        return Refuse(ToGrpcCode(e.code()), which + ": " + e.what());
      }
    }
    response->set_output(EncoderOutputName(EncoderOutputOf(config)));
    response->set_datatype(call->lease->datatype());
    work.done = [call, reactor, response](EncodeOutcome outcome) {
      grpc::Status s = grpc::Status::OK;
      if (!outcome.ok) {
        spdlog::warn("encode on model {}: failed: {}", call->instance_id, outcome.message);
        s = Refuse(ToGrpcCode(outcome.code), outcome.message);
      } else {
        try {
          for (const at::Tensor& o : outcome.outputs) ToWire(o, response->add_outputs());
        } catch (...) {
          s = CurrentExceptionToStatus();
        }
      }
      // Free the slots before the client hears back (it may call again at once).
      call->lease.Reset();
      if (call->holds_slot) call->env->slots->Release();
      if (call->holds_user_slot) call->env->user_slots->Release(call->user);
      call->holds_slot = call->holds_user_slot = false;
      reactor->Finish(s);
    };
    spdlog::debug("encode on model {} by user {}: {} sequence(s)", call->instance_id, grant.user,
                  n);
    call->lease->scheduler().SubmitEncode(std::move(work));
    return grpc::Status::OK;
  }();
  if (!status.ok()) {
    spdlog::info("encode on model {}: refused: {}", QuoteForMessage(request->instance_id(), 64),
                 status.error_message());
    reactor->Finish(status);
  }
  return reactor;
}

}  // namespace stip
