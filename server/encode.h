// Inference.Encode: one unary call per batch of encoder inputs (BERT, ViT;
// docs/encoders.md), served with gRPC's callback API.
//
//   request  -> the access token is checked first (access_policy.h: the same
//               UNAUTHENTICATED / PERMISSION_DENIED / retired answers as a
//               session's open); then the model (NOT_FOUND, FAILED_PRECONDITION
//               for a causal model or one not loaded), the message size, the
//               per-user and total session slots (the call holds one of each
//               while it runs: RESOURCE_EXHAUSTED naming the flag), the number
//               of sequences (--max-encode-sequences), and each sequence
//               (INVALID_ARGUMENT naming its index: datatype, shape
//               [T, hidden_size], 1 <= T <= the model's maximum positions,
//               finite values)
//   accepted -> the model's batch scheduler runs the sequences with the other
//               pending Encode calls; the answer holds o' per sequence (FP32)
//
// The handler never waits for the model: the scheduler's completion finishes
// the call.
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstdint>

#include "server/access_policy.h"
#include "server/resource_limits.h"
#include "stip/v1/stip.grpc.pb.h"

namespace stip {

class ModelStore;

// What an Encode call shares with the daemon's sessions (owned by the
// InferenceService; outlives every call).
struct EncodeEnv {
  ModelStore* store = nullptr;
  const AccessPolicy* policy = nullptr;
  SessionSlots* slots = nullptr;
  UserSessionSlots* user_slots = nullptr;
  int64_t max_message_bytes = 0;  // one request
  int max_sequences = 256;        // sequences per call (0: unlimited)
};

grpc::ServerUnaryReactor* StartEncode(const EncodeEnv& env, grpc::CallbackServerContext* context,
                                      const v1::EncodeRequest* request,
                                      v1::EncodeResponse* response);

}  // namespace stip
